"""Tests for mvmic.bench.bdrate, using examples whose answers are derived by hand."""

import math

import pytest

from mvmic.bench.bdrate import bd_psnr, bd_rate

# A JPEG-2000-like reference and a slightly better test codec (rates in bpp).
J2K_RATE = [0.25, 0.5, 1.0, 2.0]
J2K_PSNR = [32.1, 35.4, 38.9, 42.6]
BETTER_RATE = [0.22, 0.45, 0.93, 1.9]
BETTER_PSNR = [32.4, 35.9, 39.3, 43.0]


def test_bd_rate_constant_rate_ratio():
    # rate_test = 0.8 * rate_ref at every PSNR, so ln(rate_test) - ln(rate_ref)
    # = ln(0.8) everywhere; its mean is ln(0.8) and exp(ln 0.8) - 1 = -0.2.
    rate_ref = [100.0, 200.0, 400.0, 800.0]
    psnr = [30.0, 34.0, 38.0, 42.0]
    rate_test = [0.8 * r for r in rate_ref]
    assert bd_rate(rate_ref, psnr, rate_test, psnr) == pytest.approx(-20.0, rel=1e-9)


def test_bd_rate_linear_curves_closed_form():
    # ref:  log10 R = a1 + b1*P at P = 30, 34, 38, 42
    # test: log10 R = a2 + b2*P at P = 33, 37, 41, 45
    # The cubic fits reproduce these lines exactly. Overlap is [33, 42]; the
    # mean of a line over an interval is its value at the midpoint 37.5, so
    #   mean diff = (a2 - a1) + (b2 - b1) * 37.5
    #             = 0.5 + (-0.02) * 37.5 = -0.25   (in log10 R)
    #   BD-rate   = 10**-0.25 - 1 = 0.5623413251903491 - 1 = -43.76586748096509 %
    # The log base does not matter: ln R = ln(10) * log10 R scales d and the
    # back-transform alike.
    a1, b1, a2, b2 = -1.0, 0.1, -0.5, 0.08
    psnr_ref = [30.0, 34.0, 38.0, 42.0]
    psnr_test = [33.0, 37.0, 41.0, 45.0]
    rate_ref = [10 ** (a1 + b1 * p) for p in psnr_ref]
    rate_test = [10 ** (a2 + b2 * p) for p in psnr_test]

    result = bd_rate(rate_ref, psnr_ref, rate_test, psnr_test)

    closed_form = (10 ** ((a2 - a1) + (b2 - b1) * (33.0 + 42.0) / 2) - 1) * 100
    assert result == pytest.approx(-43.76586748096509, rel=1e-9)
    assert result == pytest.approx(closed_form, rel=1e-9)


def test_bd_psnr_constant_offset():
    # Same rates, PSNR higher by 0.5 dB everywhere, so the mean gap is 0.5 dB.
    rate = [100.0, 200.0, 400.0, 800.0]
    psnr_ref = [30.0, 33.5, 36.0, 40.0]
    psnr_test = [p + 0.5 for p in psnr_ref]
    assert bd_psnr(rate, psnr_ref, rate, psnr_test) == pytest.approx(0.5, rel=1e-9)


def test_bd_psnr_linear_curves_closed_form():
    # ref:  P = c1 + k1*log10 R at log10 R = 2.5, 3.0, 3.5, 4.0
    # test: P = c2 + k2*log10 R at log10 R = 2.75, 3.25, 3.75, 4.25
    # Overlap in log10 R is [2.75, 4.0], midpoint 3.375, so
    #   BD-PSNR = (c2 - c1) + (k2 - k1) * 3.375 = 2 + (-0.5) * 3.375 = 0.3125 dB
    # Averaging over ln R instead of log10 R is a linear change of variable
    # and leaves the mean unchanged.
    c1, k1, c2, k2 = 10.0, 8.0, 12.0, 7.5
    log_rate_ref = [2.5, 3.0, 3.5, 4.0]
    log_rate_test = [2.75, 3.25, 3.75, 4.25]
    rate_ref = [10**x for x in log_rate_ref]
    rate_test = [10**x for x in log_rate_test]
    psnr_ref = [c1 + k1 * x for x in log_rate_ref]
    psnr_test = [c2 + k2 * x for x in log_rate_test]

    result = bd_psnr(rate_ref, psnr_ref, rate_test, psnr_test)

    closed_form = (c2 - c1) + (k2 - k1) * (2.75 + 4.0) / 2
    assert result == pytest.approx(0.3125, rel=1e-9)
    assert result == pytest.approx(closed_form, rel=1e-9)


def test_bd_psnr_cubic_reference_is_fitted_exactly():
    # With x = log10 R at x = -1, 0, 1, 3 for both curves:
    #   ref:  P = 35 + x**3 / 4   (4 points, so the cubic fit is exact)
    #   test: P = 35 + x
    # Over [-1, 3]: mean of x**3 / 4 = (3**4 - (-1)**4) / 4 / 4 / 4 = 1.25 and
    # mean of x = 1, so BD-PSNR = 1 - 1.25 = -0.25 dB.
    # The points are unevenly spaced so that a linear or quadratic fit of x**3
    # would not happen to have the same mean over the interval.
    xs = [-1.0, 0.0, 1.0, 3.0]
    rate = [10**x for x in xs]
    psnr_ref = [35 + x**3 / 4 for x in xs]
    psnr_test = [35 + x for x in xs]
    assert bd_psnr(rate, psnr_ref, rate, psnr_test) == pytest.approx(-0.25, rel=1e-9)


def test_bd_rate_cubic_reference_is_fitted_exactly():
    # With t = P - 35 at P = 34, 35, 36, 38 (t = -1, 0, 1, 3) for both curves:
    #   ref:  log10 R = 1 + t**3 / 10
    #   test: log10 R = 1 + 0.4*t
    # Over t in [-1, 3]: mean of t**3 = (81 - 1) / 4 / 4 = 5, mean of t = 1, so
    # mean diff = 0.4 * 1 - 5 / 10 = -0.1 (log10 R) and
    # BD-rate = 10**-0.1 - 1 = 0.7943282347242815 - 1 = -20.567176527571853 %.
    psnr = [34.0, 35.0, 36.0, 38.0]
    rate_ref = [10 ** (1 + (p - 35) ** 3 / 10) for p in psnr]
    rate_test = [10 ** (1 + 0.4 * (p - 35)) for p in psnr]
    assert bd_rate(rate_ref, psnr, rate_test, psnr) == pytest.approx(
        -20.567176527571853, rel=1e-9
    )


def test_two_point_curves_use_a_linear_fit():
    # Two points per curve: degree-1 fit. Same PSNRs, test rates half the
    # reference rates: ln ratio is ln(0.5), so BD-rate = 0.5 - 1 = -50 %.
    psnr = [30.0, 40.0]
    assert bd_rate([1.0, 4.0], psnr, [0.5, 2.0], psnr) == pytest.approx(-50.0)


def test_bd_psnr_swap_negates():
    # Swapping the curves keeps the overlap and both fits, and only flips the
    # sign of the integrated difference.
    forward = bd_psnr(J2K_RATE, J2K_PSNR, BETTER_RATE, BETTER_PSNR)
    backward = bd_psnr(BETTER_RATE, BETTER_PSNR, J2K_RATE, J2K_PSNR)
    assert forward > 0
    assert backward == pytest.approx(-forward, rel=1e-9)


def test_bd_rate_swap_flips_sign_and_inverts_ratio():
    # The mean log difference d negates on swap, so the rate ratios exp(d) and
    # exp(-d) are reciprocal: (1 + x/100) * (1 + y/100) == 1.
    forward = bd_rate(J2K_RATE, J2K_PSNR, BETTER_RATE, BETTER_PSNR)
    backward = bd_rate(BETTER_RATE, BETTER_PSNR, J2K_RATE, J2K_PSNR)
    assert forward < 0 < backward
    assert (1 + forward / 100) * (1 + backward / 100) == pytest.approx(1.0, rel=1e-9)


@pytest.mark.parametrize("metric", [bd_rate, bd_psnr])
def test_point_order_does_not_matter(metric):
    order = [2, 0, 3, 1]
    shuffled = metric(
        [J2K_RATE[i] for i in order],
        [J2K_PSNR[i] for i in order],
        [BETTER_RATE[i] for i in reversed(order)],
        [BETTER_PSNR[i] for i in reversed(order)],
    )
    assert shuffled == pytest.approx(
        metric(J2K_RATE, J2K_PSNR, BETTER_RATE, BETTER_PSNR), rel=1e-9
    )


@pytest.mark.parametrize("metric", [bd_rate, bd_psnr])
def test_non_overlapping_curves_rejected(metric):
    # Test curve lies entirely above the reference in both rate and PSNR.
    with pytest.raises(ValueError, match="overlap"):
        metric([1.0, 2.0, 4.0], [30.0, 33.0, 36.0], [8.0, 16.0, 32.0], [40.0, 43.0, 46.0])


@pytest.mark.parametrize(
    ("rate_test", "psnr_test", "word"),
    [
        ([1.0], [30.0], "at least 2"),
        ([0.0, 2.0, 4.0], [30.0, 33.0, 36.0], "positive"),
        ([-1.0, 2.0, 4.0], [30.0, 33.0, 36.0], "positive"),
        ([1.0, 2.0, 4.0], [30.0, 33.0, math.inf], "lossless"),
        ([1.0, 2.0, 4.0], [30.0, math.nan, 36.0], "finite"),
        ([1.0, 2.0, 4.0], [30.0, 33.0], "lengths differ"),
    ],
)
@pytest.mark.parametrize("metric", [bd_rate, bd_psnr])
def test_invalid_test_curve_rejected(metric, rate_test, psnr_test, word):
    with pytest.raises(ValueError, match=f"test curve.*{word}"):
        metric([1.0, 2.0, 4.0], [30.0, 33.0, 36.0], rate_test, psnr_test)


def test_invalid_reference_curve_named_in_message():
    with pytest.raises(ValueError, match="reference curve.*lossless"):
        bd_rate([1.0, 2.0], [30.0, math.inf], [1.0, 2.0], [30.0, 33.0])


def test_duplicate_independent_values_rejected():
    # Two points at the same PSNR leave log(rate) undefined as a function of PSNR.
    with pytest.raises(ValueError, match="duplicate"):
        bd_rate([1.0, 2.0, 4.0], [30.0, 30.0, 36.0], [1.0, 2.0, 4.0], [30.0, 33.0, 36.0])
    # Two points at the same rate do the same for PSNR as a function of log rate.
    with pytest.raises(ValueError, match="duplicate"):
        bd_psnr([1.0, 1.0, 4.0], [30.0, 31.0, 36.0], [1.0, 2.0, 4.0], [30.0, 33.0, 36.0])


def test_pchip_keeps_a_saturating_task_curve_that_wins_everywhere_negative() -> None:
    # Lesion Dice against bits per pixel (bench tasks): the test route is better at every rate, but its
    # curve and the reference's flatten out at the top, where one cubic polynomial swings wildly.
    rate_ref, dice_ref = [0.045, 0.089, 0.311, 0.85, 2.139], [0.016, 0.075, 0.286, 0.307, 0.310]
    rate_test, dice_test = [0.045, 0.089, 0.311, 0.85], [0.133, 0.218, 0.300, 0.316]
    assert bd_rate(rate_ref, dice_ref, rate_test, dice_test, "Dice") > 0  # the polynomial fit's artefact
    assert -70 < bd_rate(rate_ref, dice_ref, rate_test, dice_test, "Dice", fit="pchip") < -30
    # Where a polynomial fits well (a straight line in log rate), both agree.
    psnr = [30.0, 33.0, 36.0, 39.0]
    assert bd_rate([1.0, 2.0, 4.0, 8.0], psnr, [0.8, 1.6, 3.2, 6.4], psnr, fit="pchip") == pytest.approx(-20.0)
    for quality in ([0.1, 0.2, 0.2, 0.3, 0.4], [0.1, 0.3, 0.25, 0.35, 0.4]):  # flat, or falling with rate
        with pytest.raises(ValueError, match="rise strictly"):
            bd_rate(rate_ref, quality, rate_test, dice_test, "Dice", fit="pchip")
