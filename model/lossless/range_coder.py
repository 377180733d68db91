"""Binary adaptive range coder: the entropy coder of the lossless / near-lossless layer.

    bit, P(bit = 0) in 1/4096 --code_bit--> bytes        (encoder: carry-propagating, LZMA-style)
    bytes, the same probability --code_bit--> bit         (decoder)

One function codes in both directions, so the encoder and the decoder cannot drift apart. The
state is six int64 words (``new_state``); every operation is integer arithmetic on values below
2**40, identical on every machine. The probabilities come from adaptive counters
(``adaptive_bit``): two estimates per context, a fast and a slow one, whose rate starts at 1/2 and
falls with the count of bits the context has seen (a context learns quickly, then settles).

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
LOW, RANGE, CACHE, CACHE_SIZE, POSITION, CODE = range(6)
FAST_LIMIT = 60  # the fast estimate's rate settles at 1/20 ...
SLOW_LIMIT = 1023
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
    """Rate of an estimate that has seen n bits, in 1/65536: 1/(n + 1.5) until 1/limit."""
    return np.array([int(65536 / min(n + 1.5, limit)) for n in range(MAX_COUNT + 1)], dtype=np.int64)


FAST_RATES = _rates(FAST_LIMIT)
SLOW_RATES = _rates(SLOW_LIMIT)


@njit(cache=True)
def new_state(data, decoding):
    """A fresh encoder state, or (``decoding``) a decoder state primed with the first bytes of ``data``."""
    state = np.zeros(6, dtype=np.int64)
    state[RANGE] = 0xFFFFFFFF
    state[CACHE_SIZE] = 1
    if decoding:
        for _ in range(5):
            position = state[POSITION]
            state[CODE] = (state[CODE] << 8) | (data[position] if position < data.size else 0)
            state[POSITION] = position + 1
        state[CODE] &= 0xFFFFFFFF
    return state


@njit(cache=True)
def new_models(count):
    """``count`` adaptive binary contexts: (fast, slow) estimates of P(bit = 1) in 1/65536, and a count."""
    models = np.zeros((count, 3), dtype=np.int64)
    models[:, :2] = 1 << 15
    return models


@njit(inline="always")
def _shift_low(state, out):
    low = state[LOW]
    if low < 0xFF000000 or low >= (1 << 32):
        carry = low >> 32
        byte = state[CACHE]
        while True:
            position = state[POSITION]
            if position < out.size:
                out[position] = (byte + carry) & 0xFF
            state[POSITION] = position + 1
            byte = 0xFF
            state[CACHE_SIZE] -= 1
            if state[CACHE_SIZE] == 0:
                break
        state[CACHE] = (low >> 24) & 0xFF
    state[CACHE_SIZE] += 1
    state[LOW] = (low & 0x00FFFFFF) << 8


@njit(inline="always")
def code_bit(state, data, bit, p0, decoding):
    """Code one bit whose probability of being 0 is ``p0``/4096 (1..4095); returns the bit."""
    span = state[RANGE]
    bound = (span >> PROBABILITY_BITS) * p0
    if decoding:
        if state[CODE] < bound:
            state[RANGE] = bound
            bit = 0
        else:
            state[CODE] -= bound
            state[RANGE] = span - bound
            bit = 1
        while state[RANGE] < TOP:
            state[RANGE] <<= 8
            position = state[POSITION]
            byte = data[position] if position < data.size else 0
            state[POSITION] = position + 1
            state[CODE] = (state[CODE] << 8) | byte
    else:
        if bit == 0:
            state[RANGE] = bound
        else:
            state[LOW] += bound
            state[RANGE] = span - bound
        while state[RANGE] < TOP:
            state[RANGE] <<= 8
            _shift_low(state, data)
    return bit


@njit(inline="always")
def finish(state, out):
    """Flush the encoder; returns the number of bytes the stream takes (maybe more than ``out`` holds)."""
    for _ in range(5):
        _shift_low(state, out)
    return state[POSITION]


@njit(cache=True)
def new_mixers(count):
    """``count`` sets of mixer weights (16.16 fixed point), each starting as the mean of the two models."""
    mixers = np.zeros((count, MIXER_INPUTS), dtype=np.int64)
    mixers[:, 0] = 1 << 15
    mixers[:, 1] = 1 << 15
    return mixers


@njit(inline="always")
def _update_model(models, context, bit):
    fast = models[context, 0]
    slow = models[context, 1]
    count = models[context, 2]
    target = 65535 if bit else 0
    models[context, 0] = fast + (((target - fast) * FAST_RATES[count]) >> 16)
    models[context, 1] = slow + (((target - slow) * SLOW_RATES[count]) >> 16)
    if count < MAX_COUNT:
        models[context, 2] = count + 1


@njit(inline="always")
def mixed_bit(state, data, bit, models, first, second, mixers, mixer, decoding):
    """Code one bit with the logistic mix of two adaptive contexts (``first``, ``second``), weighted by
    ``mixers[mixer]``, which learn online (Mahoney's PAQ mixing in integers); update all three."""
    s0 = STRETCH[(models[first, 0] + models[first, 1]) >> 5]
    s1 = STRETCH[(models[second, 0] + models[second, 1]) >> 5]
    dot = (mixers[mixer, 0] * s0 + mixers[mixer, 1] * s1 + mixers[mixer, 2] * 256) >> 16
    if dot < -2047:
        dot = -2047
    elif dot > 2047:
        dot = 2047
    p1 = SQUASH[dot + 2047]
    bit = code_bit(state, data, bit, 4096 - p1, decoding)
    error = ((bit << 12) - p1) * MIXER_RATE
    mixers[mixer, 0] += (s0 * error) >> 16
    mixers[mixer, 1] += (s1 * error) >> 16
    mixers[mixer, 2] += (256 * error) >> 16
    _update_model(models, first, bit)
    _update_model(models, second, bit)
    return bit
