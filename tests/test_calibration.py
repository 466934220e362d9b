"""ConformalCalibrator: the certified threshold keeps P(FPR > alpha) <= delta, and can fail.

Calibration scores are drawn from Exp(1), where the true FPR of a threshold t is exp(-t) in
closed form, so each of the many seeded calibration draws is judged exactly, not by a sample.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from nearwatch.detector.calibration import (
    ConformalCalibrator,
    certified_order_statistic,
    plain_quantile_threshold,
    required_calibration_size,
)
from nearwatch.detector.errors import BundleError, CalibrationError, NotFittedError
from scipy import stats

N_DRAWS, N_CAL = 2000, 500


def _violation_rates(alpha: float, delta: float) -> tuple[float, float, int]:
    rng = np.random.default_rng(20230101)
    draws = rng.exponential(size=(N_DRAWS, N_CAL))
    certified, plain, k = [], [], 0
    for scores in draws:
        calibrator = ConformalCalibrator(alpha=alpha, delta=delta).fit(scores)
        k = calibrator.order_statistic_
        certified.append(math.exp(-calibrator.threshold_) > alpha)  # true FPR of the threshold
        plain.append(math.exp(-plain_quantile_threshold(scores, alpha)) > alpha)
    return float(np.mean(certified)), float(np.mean(plain)), k


@pytest.mark.parametrize(("alpha", "delta"), [(0.01, 0.05), (0.05, 0.1)])
def test_certified_threshold_controls_fpr_over_calibration_draws(alpha: float, delta: float):
    certified, plain, k = _violation_rates(alpha, delta)
    tolerance = 3 * math.sqrt(delta * (1 - delta) / N_DRAWS)  # 3 binomial standard errors
    assert certified <= delta + tolerance, (certified, delta)
    # and the rate is the one the theory predicts for that k (catches off-by-one choices of k)
    predicted = stats.binom.sf(k - 1, N_CAL, 1 - alpha)
    assert abs(certified - predicted) <= 3 * math.sqrt(predicted * (1 - predicted) / N_DRAWS) + 1e-3
    # the uncorrected quantile rule violates the target FPR in roughly half of all draws
    assert plain > delta + 0.25, plain


def test_order_statistic_is_the_smallest_certified_one() -> None:
    cases = [(299, 0.01, 0.05), (500, 0.01, 0.05), (500, 0.05, 0.1), (10_000, 0.001, 0.01)]
    for n, alpha, delta in cases:
        ks = np.arange(1, n + 1)
        tail = stats.binom.sf(ks - 1, n, 1 - alpha)  # P(Binomial(n, 1 - alpha) >= k)
        assert certified_order_statistic(n, alpha, delta) == int(ks[tail <= delta][0])
    assert certified_order_statistic(298, 0.01, 0.05) is None


def test_fpr_bound_is_the_beta_upper_confidence_bound() -> None:
    rng = np.random.default_rng(1)
    for n in (299, 500, 2000, 10_000):
        calibrator = ConformalCalibrator(alpha=0.01, delta=0.05).fit(rng.normal(size=n))
        k = calibrator.order_statistic_
        expected = 1 - stats.beta.ppf(0.05, k, n + 1 - k)
        assert calibrator.fpr_bound_ == pytest.approx(expected)
        assert calibrator.fpr_bound_ <= 0.01
        assert calibrator.threshold_ == calibrator.calibration_scores_[k - 1]
        assert calibrator.n_calibration_ == n


def test_p_values_are_super_uniform_on_fresh_normal_data() -> None:
    rng = np.random.default_rng(2)
    p_values = []
    for _ in range(200):
        calibrator = ConformalCalibrator(alpha=0.05, delta=0.1).fit(rng.normal(size=N_CAL))
        p_values.append(calibrator.p_value(rng.normal(size=N_CAL)))
    p = np.concatenate(p_values)
    for u in (0.01, 0.05, 0.1, 0.25, 0.5, 0.9):
        rate = float((p <= u).mean())
        tolerance = 0.01 + 3 * math.sqrt(u * (1 - u) / len(p))  # slack for per-draw correlation
        assert rate <= u + tolerance, (u, rate)
        assert rate >= u - 0.02 - tolerance, (u, rate)  # and not trivially conservative
    assert p.min() >= 1 / (N_CAL + 1) and p.max() <= 1.0


def test_p_value_formula_and_monotonicity() -> None:
    calibrator = ConformalCalibrator(alpha=0.5, delta=0.5).fit([1.0, 2.0, 2.0, 3.0])
    got = calibrator.p_value([0.0, 1.0, 2.0, 2.5, 3.0, 4.0])
    np.testing.assert_allclose(got, np.array([5, 5, 4, 2, 2, 1]) / 5)
    grid = np.linspace(-1, 5, 50)
    assert (np.diff(calibrator.p_value(grid)) <= 0).all()


def test_required_calibration_size_matches_the_formula() -> None:
    assert required_calibration_size(0.01, 0.05) == 299
    for alpha in (0.001, 0.01, 0.05, 0.1, 0.3):
        for delta in (0.01, 0.05, 0.1, 0.5):
            n = required_calibration_size(alpha, delta)
            assert (1 - alpha) ** n <= delta < (1 - alpha) ** (n - 1) or n == 1
            ConformalCalibrator(alpha=alpha, delta=delta).fit(np.arange(float(n)))
            if n > 1:
                with pytest.raises(CalibrationError,
                                   match=f"need at least {n} calibration records.*got {n - 1};"):
                    ConformalCalibrator(alpha=alpha, delta=delta).fit(np.arange(n - 1.0))


def test_too_few_calibration_records_says_how_many_are_needed() -> None:
    with pytest.raises(CalibrationError, match="need at least 299 calibration records") as info:
        ConformalCalibrator(alpha=0.01, delta=0.05).fit(np.ones(298))
    assert "got 298" in str(info.value)
    with pytest.raises(CalibrationError, match="need at least 299 calibration records.*got 0;"):
        ConformalCalibrator().fit(np.array([]))
    # exactly enough: the only certified threshold is the largest score
    calibrator = ConformalCalibrator(alpha=0.01, delta=0.05).fit(np.arange(299.0))
    assert calibrator.order_statistic_ == 299 and calibrator.threshold_ == 298.0


def test_ties_and_zero_scores() -> None:
    zeros = ConformalCalibrator(alpha=0.05, delta=0.1).fit(np.zeros(400))  # all duplicates
    assert zeros.threshold_ == 0.0
    assert zeros.is_anomaly([0.0, 1e-12]).tolist() == [False, True]  # strict: ties not flagged
    np.testing.assert_allclose(zeros.p_value([0.0, 1e-12]), [1.0, 1 / 401])
    rng = np.random.default_rng(3)
    tied = np.round(rng.exponential(size=1000), 1)  # heavy ties
    calibrator = ConformalCalibrator(alpha=0.05, delta=0.1).fit(tied)
    at_threshold = np.full(5, calibrator.threshold_)
    assert not calibrator.is_anomaly(at_threshold).any()
    assert calibrator.p_value(at_threshold).max() <= 1.0
    # true FPR with ties, P(score > threshold), is still within the certified bound's target
    fresh = np.round(rng.exponential(size=200_000), 1)
    assert calibrator.is_anomaly(fresh).mean() <= 0.05 + 0.003


def test_validation_and_not_fitted() -> None:
    for alpha in (0.0, 1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\), got"):
            ConformalCalibrator(alpha=alpha).fit(np.ones(1000))
    for delta in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"delta must be in \(0, 1\), got"):
            ConformalCalibrator(delta=delta).fit(np.ones(1000))
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\), got 0\.0"):
        required_calibration_size(0.0, 0.05)
    with pytest.raises(ValueError, match="alpha must be a number"):
        ConformalCalibrator(alpha="0.05").fit(np.ones(1000))
    with pytest.raises(ValueError, match="calibration scores contain NaN or infinite"):
        ConformalCalibrator().fit(np.r_[np.ones(500), np.nan])
    with pytest.raises(NotFittedError, match="ConformalCalibrator is not fitted"):
        ConformalCalibrator().p_value([1.0])
    with pytest.raises(NotFittedError, match="ConformalCalibrator is not fitted"):
        ConformalCalibrator().is_anomaly([1.0])
    scores_only = ConformalCalibrator(alpha=None).fit(np.ones(5))
    with pytest.raises(NotFittedError, match="alpha=None: it has no threshold"):
        scores_only.is_anomaly([1.0])
    calibrator = ConformalCalibrator().fit(np.ones(500))
    with pytest.raises(ValueError, match="scores contain NaN"):
        calibrator.p_value([np.nan])
    assert calibrator.p_value([np.inf]).tolist() == [1 / 501]


def test_state_round_trip_and_mismatch() -> None:
    scores = np.random.default_rng(4).exponential(size=700)
    calibrator = ConformalCalibrator(alpha=0.02, delta=0.1).fit(scores)
    state = json.loads(json.dumps(calibrator.to_state()))
    restored = ConformalCalibrator.from_state(state, calibrator.calibration_scores_)
    assert restored.to_state() == state
    probe = np.linspace(0, 8, 33)
    np.testing.assert_array_equal(restored.p_value(probe), calibrator.p_value(probe))
    with pytest.raises(BundleError, match="calibration scores do not match the saved state"):
        ConformalCalibrator.from_state(state, scores[:-1])
    with pytest.raises(BundleError, match="unknown calibration state format 2"):
        ConformalCalibrator.from_state({**state, "format": 2}, scores)


def test_plain_quantile_threshold() -> None:
    assert plain_quantile_threshold(np.arange(101.0), 0.05) == 95.0
    with pytest.raises(ValueError, match="scores must not be empty"):
        plain_quantile_threshold(np.array([]), 0.05)


def test_training_rows_repeated_by_an_artefact_are_warned_about() -> None:
    """Every row written 3 times: a calibration record's copies sit among the references, the
    threshold comes out low, and a trial realised up to 5 alpha with certified_ True."""
    from nearwatch.detector import Detector
    from nearwatch.detector.errors import RepeatedRecordsWarning

    rows = np.random.default_rng(0).normal(size=(1_000, 5))
    with pytest.warns(RepeatedRecordsWarning, match="occurs 3 times .* exact copy among the"):
        Detector(encoder="identity").fit(np.repeat(rows, 3, axis=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RepeatedRecordsWarning)
        Detector(encoder="identity").fit(rows)
        # discrete fields repeat values unevenly: copies, but no artefact (no warning)
        discrete = np.random.default_rng(1).poisson(1.0, size=(3_000, 2)).astype(float)
        Detector(encoder="identity").fit(discrete)
