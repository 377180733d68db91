"""Binary adaptive range coder: the entropy coder of the lossless / near-lossless layer.

    bit, two adaptive contexts --mixed_bit--> bytes     (encoder: carry-propagating, LZMA-style)
    bytes, the same contexts --mixed_bit--> bit          (decoder)

One function codes in both directions, so the encoder and the decoder cannot drift apart. The
coder's state is a tuple of six int64 (``start``) that each call takes and returns: a value, so the
compiled kernel keeps it in registers (held in an array, every store to the output bytes forced it
back to memory: the encoder ran 8x slower per bit). Every operation is integer arithmetic on values
below 2**40, identical on every machine. The probabilities come from adaptive counters: two
estimates per context, a fast and a slow one, whose rate starts at 1/2 and falls with the count of
bits the context has seen (a context learns quickly, then settles), mixed by ``mixed_bit``.

A decoder reading past the end of its data reads zeros (a damaged stream decodes to garbage of
the right size, never out of bounds); an encoder whose buffer is too small keeps counting bytes
without writing them, so the caller learns the size it would have needed.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, getcontext

import numpy as np
from numba import njit

PROBABILITY_BITS = 12
TOP = 1 << 24
FAST_LIMIT = 60  # the fast estimate's rate settles at 1/60 ...
SLOW_LIMIT = 1023  # ... and the slow one's at 1/1023
MAX_COUNT = 1023


def _squash_table() -> np.ndarray:
    """4096 / (1 + exp(-x / 256)) for x in -2047..2047, rounded, in 1..4095: computed with decimal
    arithmetic, so the table is the same integers on every machine."""
    getcontext().prec = 20
    values = [int((Decimal(4096) / (1 + (Decimal(-x) / 256).exp())).to_integral_value(ROUND_HALF_EVEN))
              for x in range(-2047, 2048)]
    return np.clip(np.array(values, dtype=np.int64), 1, 4095)


def _stretch_table(squash: np.ndarray) -> np.ndarray:
    """The inverse of squash: for p in 0..4095 the smallest x with squash(x) >= p."""
    return np.searchsorted(squash, np.arange(4096), side="left").astype(np.int64) - 2047


SQUASH = _squash_table()
STRETCH = _stretch_table(SQUASH)
MIXER_INPUTS = 3  # two context models and a bias
MIXER_RATE = 12


def _rates(limit: int) -> np.ndarray:
    """Rate of an estimate that has seen n bits, in 1/65536: 1/(n + 1.5) until 1/limit, rounded down."""
    return np.array([131072 // min(2 * n + 3, 2 * limit) for n in range(MAX_COUNT + 1)], dtype=np.int64)


FAST_RATES = _rates(FAST_LIMIT)
SLOW_RATES = _rates(SLOW_LIMIT)


@njit(inline="always")
def start(data, decoding):
    """A fresh coder: (low, range, cache, pending bytes, position, code); a decoder reads the first
    five bytes of ``data`` into ``code``."""
    code = 0
    position = 0
    if decoding:
        for _ in range(5):
            code = (code << 8) | (data[position] if position < data.size else 0)
            position += 1
        code &= 0xFFFFFFFF
    return (0, 0xFFFFFFFF, 0, 1, position, code)


@njit(inline="always")
def _shift_low(low, cache, pending, position, out):
    """Move the encoder's top byte out (carry-propagating); returns (low, cache, pending, position).
    mixed_bit repeats these lines (see there); finish calls this."""
    if low < 0xFF000000 or low >= (1 << 32):
        carry = low >> 32
        byte = cache
        while True:
            if position < out.size:
                out[position] = (byte + carry) & 0xFF
            position += 1
            byte = 0xFF
            pending -= 1
            if pending == 0:
                break
        cache = (low >> 24) & 0xFF
    return (low & 0x00FFFFFF) << 8, cache, pending + 1, position


@njit(inline="always")
def finish(coder, out):
    """Flush the encoder; returns the number of bytes the stream takes (maybe more than ``out`` holds)."""
    low, _, cache, pending, position, _ = coder
    for _ in range(5):
        low, cache, pending, position = _shift_low(low, cache, pending, position, out)
    return position


@njit(cache=True)
def new_models(count):
    """``count`` adaptive binary contexts: (fast, slow) estimates of P(bit = 1) in 1/65536, and a count."""
    models = np.zeros((count, 3), dtype=np.int64)
    models[:, :2] = 1 << 15
    return models


@njit(cache=True)
def new_mixers(count):
    """``count`` sets of mixer weights (16.16 fixed point), each starting as the mean of the two models."""
    mixers = np.zeros((count, MIXER_INPUTS), dtype=np.int64)
    mixers[:, 0] = 1 << 15
    mixers[:, 1] = 1 << 15
    return mixers


@njit(inline="always")
def mixed_bit(coder, data, bit, models, first, second, mixers, mixer, decoding):
    """Code one bit with the logistic mix of two adaptive contexts (``first``, ``second``), weighted by
    ``mixers[mixer]``, which learn online (Mahoney's PAQ mixing in integers); update all three.
    Returns (coder, bit).

    One flat body: numba gives the arrays of every nested inlined call a reference count that it
    cannot prune inside the kernel's loops (measured: half the encoder's time in NRT_incref), so the
    range coding step and the model updates are written out here rather than called."""
    s0 = STRETCH[(models[first, 0] + models[first, 1]) >> 5]
    s1 = STRETCH[(models[second, 0] + models[second, 1]) >> 5]
    dot = (mixers[mixer, 0] * s0 + mixers[mixer, 1] * s1 + mixers[mixer, 2] * 256) >> 16
    if dot < -2047:
        dot = -2047
    elif dot > 2047:
        dot = 2047
    p1 = SQUASH[dot + 2047]
    # the range coder: P(bit = 0) = (4096 - p1) / 4096
    low, span, cache, pending, position, code = coder
    bound = (span >> PROBABILITY_BITS) * (4096 - p1)
    if decoding:
        if code < bound:
            span = bound
            bit = 0
        else:
            code -= bound
            span -= bound
            bit = 1
        while span < TOP:
            span <<= 8
            code = (code << 8) | (data[position] if position < data.size else 0)
            position += 1
    else:
        if bit == 0:
            span = bound
        else:
            low += bound
            span -= bound
        while span < TOP:  # _shift_low, written out
            span <<= 8
            if low < 0xFF000000 or low >= (1 << 32):
                carry = low >> 32
                byte = cache
                while True:
                    if position < data.size:
                        data[position] = (byte + carry) & 0xFF
                    position += 1
                    byte = 0xFF
                    pending -= 1
                    if pending == 0:
                        break
                cache = (low >> 24) & 0xFF
            pending += 1
            low = (low & 0x00FFFFFF) << 8
    # learn: the mixer's weights, then both contexts' fast and slow estimates
    error = ((bit << 12) - p1) * MIXER_RATE
    mixers[mixer, 0] += (s0 * error) >> 16
    mixers[mixer, 1] += (s1 * error) >> 16
    mixers[mixer, 2] += (256 * error) >> 16
    target = 65535 if bit else 0
    for context in (first, second):
        count = models[context, 2]
        models[context, 0] += ((target - models[context, 0]) * FAST_RATES[count]) >> 16
        models[context, 1] += ((target - models[context, 1]) * SLOW_RATES[count]) >> 16
        if count < MAX_COUNT:
            models[context, 2] = count + 1
    return (low, span, cache, pending, position, code), bit
