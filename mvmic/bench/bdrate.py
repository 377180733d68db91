"""Bjøntegaard-delta metrics for comparing two rate-distortion curves (VCEG-M33).

Each curve is fitted with a polynomial of degree min(3, n_points - 1): log(rate)
as a function of PSNR for BD-rate, PSNR as a function of log(rate) for BD-PSNR.
Both fits are integrated over the interval where the curves overlap and the mean
difference (test minus reference) is reported:

* ``bd_rate``: average bitrate change of the test curve at equal quality, in
  percent. Negative means the test codec needs fewer bits.
* ``bd_psnr``: average PSNR change of the test curve at equal rate, in dB.
  Positive means the test codec gives higher quality.

Lossless points (infinite PSNR) cannot be fitted; callers must filter them out.

``fit="pchip"`` interpolates instead, with a monotone piecewise cubic (scipy's
PchipInterpolator) through the points: for task scores such as Dice, whose curves
saturate. One cubic polynomial through a nearly flat top swings far outside the
points: it made task heads that beat the JPEG 2000 route at every rate +53 %.
"""

from collections.abc import Sequence

import numpy as np
from scipy.interpolate import PchipInterpolator

_MAX_DEGREE = 3


def bd_rate(
    rate_ref: Sequence[float],
    psnr_ref: Sequence[float],
    rate_test: Sequence[float],
    psnr_test: Sequence[float],
    quality_name: str = "PSNR",
    fit: str = "polynomial",
) -> float:
    """Average bitrate difference of test against reference, in percent. ``quality_name``
    names the quality measure in errors when it is not PSNR (e.g. Dice); ``fit`` is
    "polynomial" (VCEG-M33) or "pchip" (monotone piecewise cubic: quality must rise
    with rate along each curve). Raises ValueError for curves that cannot be compared."""
    ref_rate, ref_psnr = _validated_curve(rate_ref, psnr_ref, "reference")
    test_rate, test_psnr = _validated_curve(rate_test, psnr_test, "test")
    mean_log_diff = _mean_fit_difference(
        ref_psnr, np.log(ref_rate), test_psnr, np.log(test_rate), quality_name, fit
    )
    # A mean difference d in ln(rate) is a rate ratio of exp(d).
    return float((np.exp(mean_log_diff) - 1.0) * 100.0)


def bd_psnr(
    rate_ref: Sequence[float],
    psnr_ref: Sequence[float],
    rate_test: Sequence[float],
    psnr_test: Sequence[float],
) -> float:
    """Average PSNR difference of test against reference, in dB."""
    ref_rate, ref_psnr = _validated_curve(rate_ref, psnr_ref, "reference")
    test_rate, test_psnr = _validated_curve(rate_test, psnr_test, "test")
    return _mean_fit_difference(
        np.log(ref_rate), ref_psnr, np.log(test_rate), test_psnr, "log rate"
    )


def _validated_curve(
    rate: Sequence[float], psnr: Sequence[float], name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Return one curve's rates and PSNRs as float arrays, or raise ValueError."""
    rate_arr = np.asarray(rate, dtype=float)
    psnr_arr = np.asarray(psnr, dtype=float)
    if rate_arr.ndim != 1 or psnr_arr.ndim != 1:
        raise ValueError(f"{name} curve: rates and PSNRs must be 1-D sequences")
    if rate_arr.size != psnr_arr.size:
        raise ValueError(
            f"{name} curve: rate and PSNR lengths differ "
            f"({rate_arr.size} != {psnr_arr.size})"
        )
    if rate_arr.size < 2:
        raise ValueError(
            f"{name} curve: at least 2 points are needed, got {rate_arr.size}"
        )
    # Checked before general finiteness so lossless points get a specific hint.
    if np.any(np.isposinf(psnr_arr)):
        raise ValueError(
            f"{name} curve: infinite PSNR (lossless point); filter lossless points out"
        )
    if not (np.all(np.isfinite(rate_arr)) and np.all(np.isfinite(psnr_arr))):
        raise ValueError(f"{name} curve: rates and PSNRs must be finite")
    if np.any(rate_arr <= 0):
        raise ValueError(f"{name} curve: rates must be positive (log is taken)")
    return rate_arr, psnr_arr


def _mean_fit_difference(
    x_ref: np.ndarray,
    y_ref: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    x_label: str,
    fit: str = "polynomial",
) -> float:
    """Mean of (test fit - reference fit) of y over the overlapping x interval."""
    low = max(x_ref.min(), x_test.min())
    high = min(x_ref.max(), x_test.max())
    if not high > low:
        raise ValueError(
            f"curves do not overlap in {x_label}: reference spans "
            f"[{x_ref.min():g}, {x_ref.max():g}], test spans "
            f"[{x_test.min():g}, {x_test.max():g}]"
        )
    if fit == "pchip":
        area = _pchip(x_test, y_test, f"test curve {x_label}").integrate(low, high) - _pchip(
            x_ref, y_ref, f"reference curve {x_label}").integrate(low, high)
        return float(area / (high - low))
    if fit != "polynomial":
        raise ValueError(f"fit {fit!r}: use polynomial or pchip")
    ref_poly = _fit(x_ref, y_ref, f"reference curve {x_label}")
    test_poly = _fit(x_test, y_test, f"test curve {x_label}")
    area = _integral(test_poly, low, high) - _integral(ref_poly, low, high)
    return float(area / (high - low))


def _pchip(x: np.ndarray, y: np.ndarray, label: str) -> PchipInterpolator:
    order = np.argsort(x)
    if np.any(np.diff(x[order]) <= 0) or np.any(np.diff(y[order]) <= 0):
        raise ValueError(f"{label}: quality must rise strictly with rate (reduce the curve to its operational "
                         "points first)")
    return PchipInterpolator(x[order], y[order])


def _fit(x: np.ndarray, y: np.ndarray, label: str) -> np.ndarray:
    """Polynomial coefficients of y(x), highest power first."""
    # Repeated x values make the fit ill-posed (no unique y at that x). The
    # least-squares fit itself does not depend on point order, so no sort.
    if np.unique(x).size != x.size:
        raise ValueError(f"{label} has duplicate values")
    degree = min(_MAX_DEGREE, x.size - 1)
    return np.polyfit(x, y, degree)


def _integral(poly: np.ndarray, low: float, high: float) -> float:
    """Definite integral of a polynomial over [low, high]."""
    antiderivative = np.polyint(poly)
    return float(np.polyval(antiderivative, high) - np.polyval(antiderivative, low))
