"""The lossless / near-lossless coder of one integer plane: prediction, contexts, binarisation.

    for each sample, in raster order, from the decoded causal neighbourhood only:
      sub-predictions p_i (1/8 units): W + NE - N; N and W corrected by their neighbours' errors;
          N corrected by a weighted sum of errors; a gradient-adjusted one (CALIC's GAP); and an
          18-tap least-squares predictor, one per gradient class, fitted by the encoder to this
          plane and sent as integers (enc_least_squares); W's own tap multiplies 0 (taps are
          taken relative to W), so its coefficient is always 0
      blend  P = sum w_i p_i / sum w_i,  w_i = 2**30 / (1 + sum of p_i's recent |errors| near it / 4)**2,
          the least-squares one's weight x16 (JPEG XL's weighted predictor, Alakuijala et al. 2019,
          with squared inverse weights); clamped to the neighbours' range where their errors agree
      e = x - round(P);  q = sign(e) floor((|e| + tau) / (2 tau + 1));  x' = clip(round(P) + (2 tau + 1) q)
          (JPEG-LS's near-lossless quantiser: |x - x'| <= tau by construction; tau = 0 is lossless)
      q is coded as binary decisions with adaptive probabilities (mvmic.model.lossless.range_coder):
          q == 0?   |q| >= 2, 4, 8 ... (unary over the bit length)   bits below the top one   sign
          each decision mixes two adaptive contexts (range_coder.mixed_bit): one on the activity
          (recent |errors| of the blend around the sample, 4 steps an octave), one on the texture
          (local gradients and the least-squares / GAP disagreement), both with the decision's
          position; the sign also sees the signs of the neighbours' errors and the fraction the
          prediction was rounded by. (CALIC-style bias cancellation was measured and left out: with
          the least-squares predictor it cost 0.5 %.)

Everything is integer arithmetic, so the decoder repeats the encoder's every step on every machine.
One body codes in both directions (encode_plane, decode_plane), so the encoder and the decoder cannot diverge.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

from mvmic.model.lossless.range_coder import finish, mixed_bit, new_mixers, new_models, start

PREDICTORS = 6
LS_WEIGHT_SHIFT = 4
LS_TAPS = 18  # W, N, NW, NE, WW, NN, NWW, NNW, NNE, NEE, WWW, NNN, NNWW, NNEE, NWWW, NNNW, NNNE, NEEE
LS_SHIFT = 12  # least-squares coefficients are multiples of 2**-12
MAX_COEFFICIENT = 1 << 16  # |least-squares coefficient| at most 16
LS_CLASSES = 24  # least-squares predictors per plane: two an octave of local gradient (ls_class)
ACTIVITY_CONTEXTS = 80
MAX_BIT_LENGTH = 18  # |q| < 2**17 for 16-bit samples
MANTISSA_CONTEXT_BITS = 2

INVERSE_SQUARE_BITS = 12
# 2**30 / e**2 for e < 4096: the blend's weights without a division per sub-predictor
INVERSE_SQUARES = np.array([1 << 30] + [max(1, (1 << 30) // (e * e)) for e in range(1, 1 << INVERSE_SQUARE_BITS)],
                           dtype=np.int64)

# model table layout (offsets into one array of contexts)
_ZERO = 0
_ZERO_COUNT = ACTIVITY_CONTEXTS * 3
_LENGTH = _ZERO + _ZERO_COUNT
_LENGTH_COUNT = ACTIVITY_CONTEXTS * MAX_BIT_LENGTH
_SIGN = _LENGTH + _LENGTH_COUNT
_SIGN_COUNT = 9 * 8 * (ACTIVITY_CONTEXTS // 4)
_MANTISSA = _SIGN + _SIGN_COUNT
_MANTISSA_COUNT = ACTIVITY_CONTEXTS * MAX_BIT_LENGTH * 4
_LOW_BITS = _MANTISSA + _MANTISSA_COUNT
_LOW_BITS_COUNT = MAX_BIT_LENGTH * MAX_BIT_LENGTH
MODEL_COUNT = _LOW_BITS + _LOW_BITS_COUNT  # per model set; there are two, on activity and on texture
MIXER_KINDS = 2 * MAX_BIT_LENGTH + 4
MIXER_COUNT = MIXER_KINDS * (ACTIVITY_CONTEXTS // 8)


@njit(inline="always")
def _bit_length(value):
    """The number of bits of ``value`` >= 0 (0 for 0)."""
    length = 0
    while value > 0:
        value >>= 1
        length += 1
    return length


@njit(inline="always")
def _activity_context(value):
    """About 4 log2(value): 0..ACTIVITY_CONTEXTS - 1."""
    if value < 8:
        return value
    length = _bit_length(value)
    context = 4 * (length - 2) + ((value >> (length - 3)) & 3)
    return min(context, ACTIVITY_CONTEXTS - 1)


@njit(inline="always")
def ls_class(plane, y, x, classes):
    """The least-squares class of an interior sample: 2 log2 of its local gradient, at most classes - 1."""
    w = plane[y, x - 1]
    n = plane[y - 1, x]
    nw = plane[y - 1, x - 1]
    gradient = (abs(w - nw) + abs(n - nw) + abs(n - plane[y - 1, x + 1]) + abs(w - plane[y, x - 2])
                + abs(n - plane[y - 2, x]))
    if gradient < 4:
        return min(gradient, classes - 1)
    length = _bit_length(gradient)
    return min(2 * (length - 1) + ((gradient >> (length - 2)) & 1), classes - 1)  # 2 classes an octave


@njit(inline="always")
def ls_taps(plane, y, x, taps):
    taps[0] = plane[y, x - 1]
    taps[1] = plane[y - 1, x]
    taps[2] = plane[y - 1, x - 1]
    taps[3] = plane[y - 1, x + 1]
    taps[4] = plane[y, x - 2]
    taps[5] = plane[y - 2, x]
    taps[6] = plane[y - 1, x - 2]
    taps[7] = plane[y - 2, x - 1]
    taps[8] = plane[y - 2, x + 1]
    taps[9] = plane[y - 1, x + 2]
    taps[10] = plane[y, x - 3]
    taps[11] = plane[y - 3, x]
    taps[12] = plane[y - 2, x - 2]
    taps[13] = plane[y - 2, x + 2]
    taps[14] = plane[y - 1, x - 3]
    taps[15] = plane[y - 3, x - 1]
    taps[16] = plane[y - 3, x + 1]
    taps[17] = plane[y - 1, x + 3]


@njit(inline="always")
def ls_interior(y, x, width):
    return y >= 3 and x >= 3 and x + 3 < width


@njit(inline="always")
def _sign3(value):
    return 0 if value == 0 else (1 if value > 0 else 2)


@njit(nogil=True, cache=True, error_model="numpy")
def encode_plane(plane, max_value, tau, data, ls_coefficients):
    """Code ``plane`` (H, W) int32, values 0..max_value, with every sample within ``tau``, into ``data``
    (uint8) with the least-squares predictors ``ls_coefficients`` (classes, LS_TAPS) int64. Returns the
    bytes the stream needs (more than ``data.size``: it did not fit, ``data`` is incomplete); ``plane``
    becomes the reconstruction (the samples themselves when tau = 0)."""
    return _code_plane(plane, max_value, tau, data, False, ls_coefficients)


@njit(nogil=True, cache=True, error_model="numpy")
def decode_plane(plane, max_value, tau, data, ls_coefficients):
    """Inverse of encode_plane: ``plane`` (H, W) int32 receives the samples decoded from ``data``."""
    return _code_plane(plane, max_value, tau, data, True, ls_coefficients)


@njit(inline="always")
def _code_plane(plane, max_value, tau, data, decoding, ls_coefficients):
    """Both directions in one body, so that they cannot diverge; ``decoding`` is a constant in each
    caller, so the compiler keeps only one direction's branches."""
    height, width = plane.shape
    step = 2 * tau + 1
    coder = start(data, decoding)
    models = new_models(2 * MODEL_COUNT)
    # Errors of the last two rows: the blend's signed error (1/8 units) and each sub-predictor's |error|.
    blend_error = np.zeros((2, width + 2), dtype=np.int64)
    sub_error = np.zeros((2, PREDICTORS, width + 2), dtype=np.int64)
    predictions = np.zeros(PREDICTORS, dtype=np.int64)
    taps = np.zeros(LS_TAPS, dtype=np.int64)
    mixers = new_mixers(MIXER_COUNT)
    classes = ls_coefficients.shape[0]
    max_length = _bit_length(max_value // step + 1)  # bits of the largest |q|, plus one
    for y in range(height):
        row = y & 1
        above = row ^ 1
        for x in range(width):
            # neighbours, replicated at the borders
            if y > 0:
                n = plane[y - 1, x]
                w = plane[y, x - 1] if x > 0 else n
                nw = plane[y - 1, x - 1] if x > 0 else n
                ne = plane[y - 1, x + 1] if x + 1 < width else n
                nn = plane[y - 2, x] if y > 1 else n
            else:
                w = plane[y, x - 1] if x > 0 else 0
                n = w
                nw = w
                ne = w
                nn = w
            ww = plane[y, x - 2] if x > 1 else w
            # errors of the blend at the neighbours (index x + 1: column -1 is slot 0)
            te_w = blend_error[row, x]
            te_ww = blend_error[row, x - 1] if x > 0 else 0
            te_n = blend_error[above, x + 1] if y > 0 else 0
            te_nw = blend_error[above, x] if y > 0 else 0
            te_ne = blend_error[above, x + 2] if y > 0 else 0
            n8 = n << 3
            w8 = w << 3
            ne8 = ne << 3
            predictions[0] = w8 + ne8 - n8
            predictions[1] = n8 - (((te_w + te_n + te_ne) * 16) >> 5)
            predictions[2] = w8 - (((te_w + te_n + te_nw) * 10) >> 5)
            predictions[3] = n8 - ((te_nw * 7 + te_n * 7 + te_ne * 7) >> 5)
            dh = abs(w - ww) + abs(n - nw) + abs(n - ne)
            dv = abs(w - nw) + abs(n - nn) + abs(ne - (plane[y - 2, x + 1] if y > 1 and x + 1 < width else ne))
            gap = ((w + n) << 2) + ((ne - nw) << 1)
            if dv - dh > 80:
                gap = w8
            elif dh - dv > 80:
                gap = n8
            else:
                if dv - dh > 32:
                    gap = (gap + w8) >> 1
                elif dv - dh > 8:
                    gap = (3 * gap + w8) >> 2
                elif dh - dv > 32:
                    gap = (gap + n8) >> 1
                elif dh - dv > 8:
                    gap = (3 * gap + n8) >> 2
            predictions[4] = gap
            if ls_interior(y, x, width):
                c = ls_class(plane, y, x, classes)
                ls_taps(plane, y, x, taps)
                acc = 0
                for i in range(LS_TAPS):
                    acc += ls_coefficients[c, i] * (taps[i] - w)
                predictions[5] = w8 + ((acc + (1 << (LS_SHIFT - 4))) >> (LS_SHIFT - 3))
            else:
                predictions[5] = predictions[0]
            # blend by the squared inverse of each sub-predictor's recent error
            weight_sum = 0
            blended = 0
            for i in range(PREDICTORS):
                err = (sub_error[above, i, x + 1] + sub_error[row, i, x] + sub_error[above, i, x]
                       + sub_error[above, i, x + 2] + (sub_error[row, i, x - 1] if x > 0 else 0))
                e = 1 + (err >> 2)
                if e < (1 << INVERSE_SQUARE_BITS):
                    weight = INVERSE_SQUARES[e]
                else:
                    shift = 0
                    while (e >> shift) >= (1 << INVERSE_SQUARE_BITS):
                        shift += 1
                    weight = max(1, INVERSE_SQUARES[e >> shift] >> (2 * shift))
                if i == PREDICTORS - 1:
                    weight <<= LS_WEIGHT_SHIFT
                weight_sum += weight
                blended += weight * predictions[i]
            prediction8 = (blended + (weight_sum >> 1)) // weight_sum
            low = min(n, w, ne)
            high = max(n, w, ne)
            if (te_w ^ te_n) >= 0 and (te_n ^ te_ne) >= 0:  # the neighbours' errors agree: trust the extremes less
                prediction8 = max(low << 3, min(high << 3, prediction8))
            # activity of the blend's errors around the sample
            activity = 2 * (abs(te_n) + abs(te_w)) + abs(te_nw) + abs(te_ne) + abs(te_ww)
            texture = ((dh + dv) << 2) + (abs(predictions[5] - predictions[4]) >> 1)
            if step > 1:  # near-lossless: activity in units of the quantiser's width
                activity //= step
                texture //= step
            context = _activity_context(activity)
            texture = _activity_context(texture)
            mix = context >> 3
            predicted = max(0, min(max_value, (prediction8 + 4) >> 3))
            fraction = (prediction8 + 4 - (predicted << 3)) & 7 if 0 < predicted < max_value else 4
            # the residual
            if not decoding:
                e = plane[y, x] - predicted
                q = abs(e)
                if step > 1:
                    q = (q + tau) // step
                if e < 0:
                    q = -q
            else:
                q = 0
            flat = 1 if te_n == 0 and te_w == 0 else 0
            still = flat + (1 if activity == 0 and n == w and nw == ne else 0)
            coder, nonzero = mixed_bit(coder, data, 1 if q != 0 else 0, models, _ZERO + context * 3 + still,
                                MODEL_COUNT + _ZERO + texture * 3 + still, mixers, mix, decoding)
            if nonzero:
                magnitude = abs(q)
                length = _bit_length(magnitude)  # the encoder's; the decoder learns it below
                # unary over the bit length: 1 then "longer than j?" for j = 1, 2, ...
                j = 1
                while j < max_length:
                    coder, longer = mixed_bit(coder, data, 1 if length > j else 0, models,
                                       _LENGTH + context * MAX_BIT_LENGTH + j,
                                       MODEL_COUNT + _LENGTH + texture * MAX_BIT_LENGTH + j,
                                       mixers, (1 + j) * (ACTIVITY_CONTEXTS // 8) + mix, decoding)
                    if not longer:
                        break
                    j += 1
                length = j
                # bits below the top one: the first two with contexts, the rest with their position only
                value = 1
                for b in range(length - 2, -1, -1):
                    bit = (magnitude >> b) & 1 if not decoding else 0
                    if b >= length - 1 - MANTISSA_CONTEXT_BITS:
                        ctx = _MANTISSA + (context * MAX_BIT_LENGTH + length) * 4 + (value & 3)
                        ctx2 = MODEL_COUNT + _MANTISSA + (texture * MAX_BIT_LENGTH + length) * 4 + (value & 3)
                    else:
                        ctx = _LOW_BITS + length * MAX_BIT_LENGTH + b
                        ctx2 = ctx
                    coder, bit = mixed_bit(coder, data, bit, models, ctx, ctx2, mixers,
                                    (1 + MAX_BIT_LENGTH + length) * (ACTIVITY_CONTEXTS // 8) + mix, decoding)
                    value = (value << 1) | bit
                magnitude = value
                signs = _SIGN + ((_sign3(te_n) * 3 + _sign3(te_w)) * 8 + fraction) * (ACTIVITY_CONTEXTS // 4)
                coder, negative = mixed_bit(coder, data, 1 if q < 0 else 0, models, signs + (context >> 2),
                                            MODEL_COUNT + signs + (texture >> 2), mixers,
                                     (MIXER_KINDS - 1) * (ACTIVITY_CONTEXTS // 8) + mix, decoding)
                q = -magnitude if negative else magnitude
            reconstructed = predicted + q * step
            reconstructed = max(0, min(max_value, reconstructed))
            plane[y, x] = reconstructed
            # learn
            r8 = reconstructed << 3
            blend_error[row, x + 1] = r8 - prediction8
            for i in range(PREDICTORS):
                sub_error[row, i, x + 1] = abs(r8 - predictions[i])
    if decoding:
        return coder[4]
    return finish(coder, data)


# What encode_plane makes of known_answer_plane() (lossless): changes exactly when the format does.
KNOWN_STREAM = bytes.fromhex(
    "007dec6a7003bf936315343ce9cc5b43a37835d7e1ebcf6102f27174691441870bab657509af9f3ac3f4e6d9bc3f7c533db4e687ce"
    "4fb1b0b091da55f7eaf0a0d19990dcede566210a741939d5320ad3f4d442b3dc7c4da52895ac1319a9d9ebc0f2dfda77039ec600")


def known_answer_plane() -> tuple[np.ndarray, np.ndarray]:
    """A fixed 8 x 12 12-bit plane and least-squares coefficients for it (two taps)."""
    y, x = np.mgrid[0:8, 0:12]
    coefficients = np.zeros((LS_CLASSES, LS_TAPS), dtype=np.int64)
    coefficients[:, 1], coefficients[:, 3] = 1 << (LS_SHIFT - 1), 1 << (LS_SHIFT - 2)
    return ((y * 37 + x * x * 11 + (x * y) % 7 * 5) % 4096).astype(np.int32), coefficients


def _encoder_answers() -> bool:
    plane, coefficients = known_answer_plane()
    data = np.zeros(4 * len(KNOWN_STREAM), dtype=np.uint8)
    used = encode_plane(plane, 4095, 0, data, coefficients)
    return data[:used].tobytes() == KNOWN_STREAM


def _decoder_answers() -> bool:
    plane, coefficients = known_answer_plane()
    decoded = np.zeros_like(plane)
    decode_plane(decoded, 4095, 0, np.frombuffer(bytearray(KNOWN_STREAM), dtype=np.uint8), coefficients)
    return bool(np.array_equal(decoded, plane))


def _checked(kernel, answers) -> None:
    """numba keys its on-disk cache on this file alone, so after a change to range_coder.py it would
    load a kernel compiled from the old one: the known answer tells, and the kernel is compiled again."""
    if answers():
        return
    kernel.recompile()  # drops the on-disk cache of every signature and compiles afresh
    if not answers():
        raise RuntimeError(f"{kernel.__name__} disagrees with KNOWN_STREAM: the format changed without it")


@functools.cache
def check_encoder() -> None:
    """Make sure the encoder in use is this source's (once per process); RuntimeError if not."""
    _checked(encode_plane, _encoder_answers)


@functools.cache
def check_decoder() -> None:
    """Make sure the decoder in use is this source's (once per process); RuntimeError if not."""
    _checked(decode_plane, _decoder_answers)
