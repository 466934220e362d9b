"""Split-conformal p-values and a threshold whose false-positive rate is certified.

Calibration scores s_1..s_n are kNN scores of held-out *normal* records, exchangeable with a
future normal record's score S. Sorted, s_(1) <= ... <= s_(n).

Why the threshold is the k-th order statistic (Bates et al. 2023, "Testing for outliers with
conformal p-values", calibration-conditional guarantee): flagging ``S > s_(k)`` has false-positive
rate FPR = 1 - F(s_(k)), F the CDF of normal scores. For continuous F, F(s_(k)) is the k-th order
statistic of n uniforms, U_(k) ~ Beta(k, n + 1 - k), so

    P(FPR > alpha) = P(U_(k) < 1 - alpha) = P(Binomial(n, 1 - alpha) >= k).

The smallest k with that probability <= delta gives the lowest threshold that is still certified:
P(FPR > alpha) <= delta over the calibration draw. With ties (discrete F) F(s_(k)) is only
stochastically larger, so the bound stays valid (conservative). ``fpr_bound_`` is the
(1 - delta) upper confidence bound 1 - BetaInv(delta; k, n + 1 - k) <= alpha. k <= n exists only
when P(all n below the 1 - alpha quantile) = (1 - alpha)^n <= delta; see
``required_calibration_size``. With fewer scores, ``strict=False`` still gives the tightest
threshold they allow, the largest score s_(n), with the honest bound
1 - BetaInv(delta; n, 1) = 1 - delta^(1/n) > alpha and ``certified_ = False``.

Why this holds for *any* index, approximate ones included: exchangeability needs the
calibration scores and a new record's score to come from the same function of the record. The
``Detector`` therefore computes calibration scores with the index over the references R that
then serves, unchanged (same faiss object, same efSearch), so s(x) is one fixed function for
calibration and live records whether the index is exact or HNSW. Calibration records C join the
served references only as extra copies of existing references or as a separate index part
(``detector.references``); search merges parts, so the served candidates for x are a superset of
the calibrated search's and the served score s'(x) <= s(x) for every x. Hence
P(s'(X) > t) <= P(s(X) > t): the FPR certificate and the p-values stay valid (conservative).
What is *not* valid, and was the bug on duplicate-heavy data: rebuilding an HNSW graph over
R ∪ C, whose approximate distances can exceed those of the graph that was calibrated.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from .errors import BundleError, CalibrationError, NotFittedError

STATE_FORMAT = 1


def _check_level(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    if not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    return float(value)


def required_calibration_size(alpha: float, delta: float) -> int:
    """Smallest n with (1 - alpha)^n <= delta: fewer calibration scores cannot certify alpha.

    >>> required_calibration_size(0.01, 0.05)
    299
    >>> required_calibration_size(0.05, 0.05)
    59
    """
    alpha, delta = _check_level("alpha", alpha), _check_level("delta", delta)
    n = max(1, math.ceil(math.log(delta) / math.log1p(-alpha)))
    # guard the float rounding of the log ratio on both sides
    while n * math.log1p(-alpha) > math.log(delta):
        n += 1
    while n > 1 and (n - 1) * math.log1p(-alpha) <= math.log(delta):
        n -= 1
    return n


def certified_order_statistic(n: int, alpha: float, delta: float) -> int | None:
    """Smallest k in 1..n with P(Binomial(n, 1 - alpha) >= k) <= delta, or None if none."""
    alpha, delta = _check_level("alpha", alpha), _check_level("delta", delta)
    if n < 1:
        return None
    # P(X >= k) <= delta  <=>  P(X <= k - 1) >= 1 - delta: start at the quantile, then verify
    k = int(stats.binom.ppf(1.0 - delta, n, 1.0 - alpha)) + 1
    k = min(max(k, 1), n + 1)
    while k > 1 and stats.binom.sf(k - 2, n, 1.0 - alpha) <= delta:
        k -= 1
    while k <= n and stats.binom.sf(k - 1, n, 1.0 - alpha) > delta:
        k += 1
    return k if k <= n else None


def plain_quantile_threshold(scores: np.ndarray, alpha: float) -> float:
    """The uncorrected rule: the empirical (1 - alpha) quantile, flag scores above it.

    Only for comparison: its FPR exceeds alpha in roughly half of all calibration draws.

    >>> plain_quantile_threshold(np.arange(101.0), 0.1)
    90.0
    """
    alpha = _check_level("alpha", alpha)
    values = np.asarray(scores, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("scores must not be empty")
    return float(np.quantile(values, 1.0 - alpha))


class ConformalCalibrator:
    """Certified anomaly threshold and conformal p-values from normal calibration scores.

    >>> rng = np.random.default_rng(0)
    >>> calibrator = ConformalCalibrator(alpha=0.05, delta=0.1).fit(rng.exponential(size=500))
    >>> calibrator.order_statistic_, calibrator.fpr_bound_ <= 0.05
    (482, True)
    >>> calibrator.is_anomaly([0.1, 50.0]).tolist()
    [False, True]
    >>> calibrator.p_value([50.0]).round(4).tolist()  # no calibration score is that large
    [0.002]

    Too few scores for ``alpha``: ``strict=True`` (the default) raises ``CalibrationError``;
    ``strict=False`` uses the largest score and reports the bound it does achieve.

    >>> loose = ConformalCalibrator(alpha=0.01, delta=0.05, strict=False).fit(np.arange(100.0))
    >>> loose.certified_, loose.order_statistic_, round(loose.fpr_bound_, 4)
    (False, 100, 0.0295)
    """

    def __init__(
        self, alpha: float | None = 0.01, delta: float = 0.05, strict: bool = True
    ) -> None:
        self.alpha = alpha  # None: p-values only, no threshold
        self.delta = delta
        self.strict = strict  # False: too few scores give an uncertified threshold, no error

    def fit(self, calibration_scores: np.ndarray) -> ConformalCalibrator:
        """Sort the scores and pick the certified order statistic.

        Raises CalibrationError when no order statistic certifies ``alpha`` and ``strict`` is
        set; otherwise the largest score is the threshold and ``certified_`` is False.
        """
        delta = _check_level("delta", self.delta)
        scores = np.sort(np.asarray(calibration_scores, dtype=np.float64).ravel())
        if not np.isfinite(scores).all():
            raise ValueError("calibration scores contain NaN or infinite values")
        n = int(scores.size)
        if self.alpha is None:
            if n == 0:
                raise CalibrationError("need at least 1 calibration record for p-values")
            self.calibration_scores_, self.n_calibration_ = scores, n
            self.order_statistic_ = self.threshold_ = self.fpr_bound_ = None
            self.certified_ = False
            return self
        alpha = _check_level("alpha", self.alpha)
        k = certified_order_statistic(n, alpha, delta)
        certified = k is not None
        if k is None:
            needed = required_calibration_size(alpha, delta)
            if self.strict or n == 0:
                raise CalibrationError(
                    f"need at least {needed} calibration records to certify a false-positive "
                    f"rate <= {alpha:g} with confidence {1 - delta:g}, got {n}; add normal "
                    f"records, or raise alpha or delta"
                )
            k = n  # the tightest threshold n scores allow: bound 1 - delta^(1/n) > alpha
        self.calibration_scores_ = scores
        self.n_calibration_ = n
        self.certified_ = certified
        self.order_statistic_ = k
        self.threshold_ = float(scores[k - 1])
        self.fpr_bound_ = float(1.0 - stats.beta.ppf(delta, k, n + 1 - k))
        return self

    def _require_fitted(self) -> None:
        if not hasattr(self, "calibration_scores_"):
            raise NotFittedError("ConformalCalibrator is not fitted: call fit() first")

    @staticmethod
    def _as_scores(scores: np.ndarray | list[float] | float) -> np.ndarray:
        values = np.asarray(scores, dtype=np.float64)
        if np.isnan(values).any():
            raise ValueError("scores contain NaN")
        return values

    def p_value(self, scores: np.ndarray | list[float] | float) -> np.ndarray:
        """(1 + #{calibration >= s}) / (n + 1): super-uniform for normal records."""
        self._require_fitted()
        values = self._as_scores(scores)
        at_least = self.n_calibration_ - np.searchsorted(
            self.calibration_scores_, values, side="left"
        )
        return (1.0 + at_least) / (self.n_calibration_ + 1.0)

    def is_anomaly(self, scores: np.ndarray | list[float] | float) -> np.ndarray:
        """``scores > threshold_``; strict, so ties with the threshold are not flagged."""
        self._require_fitted()
        if self.threshold_ is None:
            raise NotFittedError("this calibrator has alpha=None: it has no threshold")
        return self._as_scores(scores) > self.threshold_

    def to_state(self) -> dict[str, Any]:
        """JSON params; the scores themselves travel as ``calibration_scores_`` (.npy)."""
        self._require_fitted()
        return {
            "format": STATE_FORMAT,
            "alpha": None if self.alpha is None else float(self.alpha),
            "delta": float(self.delta),
            "n_calibration": self.n_calibration_,
            "order_statistic": self.order_statistic_,
            "threshold": self.threshold_,
            "fpr_bound": self.fpr_bound_,
            "strict": bool(self.strict),
            "certified": self.certified_,
        }

    @classmethod
    def from_state(
        cls, state: dict[str, Any], calibration_scores: np.ndarray
    ) -> ConformalCalibrator:
        """Refit from the saved scores and check the result matches the saved state."""
        if state.get("format") != STATE_FORMAT:
            raise BundleError(f"unknown calibration state format {state.get('format')!r}")
        try:
            calibrator = cls(alpha=state["alpha"], delta=state["delta"],
                             strict=bool(state.get("strict", True))).fit(calibration_scores)
            saved = (int(state["n_calibration"]), state["order_statistic"], state["threshold"],
                     state.get("certified", calibrator.certified_))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"invalid calibration state: {exc}") from exc
        found = (calibrator.n_calibration_, calibrator.order_statistic_, calibrator.threshold_,
                 calibrator.certified_)
        if found != saved:
            raise BundleError(
                f"calibration scores do not match the saved state: (n, k, threshold, certified) "
                f"is {found}, state says {saved}"
            )
        return calibrator
