"""The code books of bitsandbytes, bit for bit: NF4, FP4 (E2M1) and the 8-bit dynamic map.

A 4-bit code `c` dequantizes to `CODE[c] * absmax` of its block. Values are float32 exactly as
`bitsandbytes.functional.get_4bit_type` and `create_dynamic_map` produce them (the tests compare
them with bitsandbytes itself).

Quantizing picks a code by comparing the scaled value `x / absmax` with the midpoints between
neighbouring sorted code values, as bitsandbytes' CPU kernel does (`torch.bucketize`, right=False:
a value equal to a midpoint goes to the lower code). FP4's codes are not sorted by value, so its
buckets map back to codes through `FP4_BUCKET_CODES` (the order of `torch.argsort` that bnb uses,
where the two zero codes 0 and 8 both mean 0.0 and positive values below the first midpoint get
code 8).
"""

from __future__ import annotations

import numpy as np

# NormalFloat4 (QLoRA, Dettmers et al. 2023): quantiles of N(0, 1) scaled to [-1, 1].
NF4 = np.array(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=np.float32,
)

# FP4 E2M1 in bitsandbytes' bit-pattern order (sign bit 3; exponent bias 2), divided by 12.
FP4 = np.array(
    [0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3], dtype=np.float32
) / np.float32(12.0)

# The code of each value bucket of FP4 (sorted by value), as bitsandbytes' quantizer maps them.
FP4_BUCKET_CODES = np.array([11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3], dtype=np.uint8)
NF4_BUCKET_CODES = np.arange(16, dtype=np.uint8)

# The positive values below 1 of the signed 8-bit dynamic map (Dettmers 2015), which is
# symmetric: the map is [-reversed(positive), 0, positive, 1], 256 values sorted.
_DYNAMIC_POSITIVE = """
5.5000004e-07, 3.2500002e-06, 7.75e-06, 2.1249998e-05, 4.375e-05, 6.625e-05, 8.875e-05,
1.5625001e-04, 2.6875004e-04, 3.8125002e-04, 4.9375003e-04, 6.062501e-04, 7.1875006e-04,
8.3125e-04, 9.437501e-04, 0.0012812499, 0.00184375, 0.00240625, 0.00296875, 0.0035312497,
0.00409375, 0.0046562497, 0.0052187503, 0.00578125, 0.00634375, 0.00690625, 0.00746875,
0.00803125, 0.00859375, 0.009156249, 0.00971875, 0.01140625, 0.01421875, 0.01703125,
0.019843752, 0.02265625, 0.02546875, 0.028281251, 0.03109375, 0.03390625, 0.036718752,
0.03953125, 0.042343747, 0.04515625, 0.04796875, 0.05078125, 0.05359375, 0.05640625,
0.059218753, 0.06203125, 0.06484375, 0.067656256, 0.070468746, 0.07328125, 0.07609375,
0.07890625, 0.08171876, 0.08453125, 0.08734375, 0.09015625, 0.092968754, 0.09578126,
0.09859375, 0.107031256, 0.12109375, 0.13515624, 0.14921875, 0.16328125, 0.17734376,
0.19140625, 0.20546874, 0.21953125, 0.23359375, 0.24765624, 0.26171875, 0.27578127,
0.28984374, 0.30390626, 0.31796873, 0.33203125, 0.34609374, 0.36015624, 0.37421876,
0.38828123, 0.40234375, 0.41640624, 0.43046874, 0.44453126, 0.45859373, 0.47265625,
0.4867187, 0.50078124, 0.5148437, 0.5289062, 0.54296875, 0.5570313, 0.5710938, 0.58515626,
0.5992187, 0.61328125, 0.6273438, 0.6414063, 0.65546876, 0.6695312, 0.68359375, 0.6976563,
0.7117188, 0.72578126, 0.7398437, 0.75390625, 0.7679688, 0.78203124, 0.79609376, 0.8101562,
0.82421875, 0.8382813, 0.85234374, 0.86640626, 0.8804687, 0.89453125, 0.9085938, 0.92265624,
0.93671876, 0.9507812, 0.96484375, 0.9789063, 0.99296874
"""


def _dynamic_map() -> np.ndarray:
    positive = np.array([float(v) for v in _DYNAMIC_POSITIVE.split(",")], dtype=np.float32)
    one = np.ones(1, np.float32)
    return np.concatenate([-positive[::-1], np.zeros(1, np.float32), positive, one])


# bitsandbytes.functional.create_dynamic_map(): the code of the double-quantized absmax.
DYNAMIC8 = _dynamic_map()
assert DYNAMIC8.shape == (256,) and np.all(np.diff(DYNAMIC8) > 0)

FOUR_BIT_METHODS = ("nf4", "fp4")
METHODS = ("nf4", "fp4", "int8")


def code4(method: str) -> np.ndarray:
    """The 16 code values of a 4-bit method, indexed by code."""
    return {"nf4": NF4, "fp4": FP4}[method]


def bucket_bounds(method: str) -> tuple[np.ndarray, np.ndarray]:
    """(15 midpoints between sorted code values, code of each of the 16 buckets)."""
    codes = NF4_BUCKET_CODES if method == "nf4" else FP4_BUCKET_CODES
    values = code4(method)[codes]
    return (values[:-1] + values[1:]) / np.float32(2.0), codes


# ----------------------------------------------------------------------------- 8-bit thresholds
# bitsandbytes' CPU `quantize_blockwise` (which double quantization uses) does not search the
# code: it rounds v = x * (1/absmax), clamped to [-1, 1], onto a grid of 65536 points,
# i = trunc(((v + 1) * 0.5) * 65535 + 0.5) in float32, and looks up the code whose midpoints
# bracket grid point i. That map is a monotone step function of v, so it equals "the number of
# thresholds <= v" for the 255 float32 thresholds computed below (the smallest v giving each
# code), which needs only comparisons on the device (no float rounding that a compiler could
# fuse differently).
LUT_SIZE = 65536


def _dynamic_lut() -> np.ndarray:
    mids = (np.float32(0.5) * (DYNAMIC8[:-1] + DYNAMIC8[1:])).astype(np.float32)
    grid = np.float32(-1.0) + (
        np.float32(2.0) * np.arange(LUT_SIZE, dtype=np.float32)
    ) / np.float32(LUT_SIZE - 1)
    return np.searchsorted(mids, grid.astype(np.float32), side="left").astype(np.uint8)


def _lut_code(v: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """bnb's CPU 8-bit code of normalised values v (float32, in [-1, 1]), in numpy."""
    t = (v.astype(np.float32) + np.float32(1.0)) * np.float32(0.5)
    p = (t * np.float32(LUT_SIZE - 1)).astype(np.float32)
    return lut[np.trunc(p + np.float32(0.5)).astype(np.int64)]


def _key(x: np.ndarray) -> np.ndarray:
    """float32 -> int64 keys in the same order as the values (-0.0 just below +0.0)."""
    raw = np.asarray(x, np.float32).view(np.uint32).astype(np.int64)
    return np.where(raw < 0x80000000, raw, -(raw & 0x7FFFFFFF) - 1)


def _from_key(keys: np.ndarray) -> np.ndarray:
    raw = np.where(keys >= 0, keys, (-keys - 1) | 0x80000000)
    return raw.astype(np.uint32).view(np.float32)


def _dynamic_thresholds() -> np.ndarray:
    lut = _dynamic_lut()
    wanted = np.arange(1, 256)
    top = int(_key(np.float32(1.0)))
    lo = np.full(255, int(_key(np.float32(-1.0))), np.int64)  # code(lo) < k (code(-1) = 0)
    hi = np.full(255, top + 1, np.int64)  # code(hi) >= k; one past 1.0 stands for "never"
    while np.any(hi - lo > 1):
        mid = (lo + hi) // 2
        ok = _lut_code(_from_key(np.minimum(mid, top)), lut) >= wanted
        ok &= mid <= top
        hi = np.where(ok, mid, hi)
        lo = np.where(ok, lo, mid)
    thresholds = _from_key(np.minimum(hi, top)).copy()
    thresholds[hi > top] = np.inf  # a code that no value in [-1, 1] reaches
    return thresholds


# DYNAMIC8_THRESHOLDS[k-1] = the smallest float32 v in [-1, 1] that bnb's CPU kernel maps to a
# code >= k; code(v) = number of thresholds <= v.
DYNAMIC8_THRESHOLDS = _dynamic_thresholds()
