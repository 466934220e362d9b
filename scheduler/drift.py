"""Drift signal on the stream of flags: is a model flagging more than its certificate allows?

Each model certifies ``fpr_bound`` q: a normal record is flagged with probability <= q (with
probability >= 1 - delta over its calibration draw). Workers count records scored and flagged
per registry version (``HINCRBY nearwatch:drift:counts:{version} scored n flagged x``, ``HSET
... bound q``). Each ``window`` records close a test window with the one-sided p-value
P(Binomial(n, q) >= flagged): only more flags than the bound allows is evidence.

Null: given the past, every record is flagged with probability <= q. Then a window's flag
count is stochastically below Binomial(n, q) and its p-value is super-uniform (P(p <= t) <= t)
given the past windows, discrete counts included. The p-values drive a Shiryaev-Roberts
statistic R_k = (1 + R_{k-1}) f(p_k), f the mixture bet (E f(p) <= 1 under the null), so
R_k - k is a supermartingale. Optional stopping at the first crossing T of the alarm level c
(Doob): c P(T <= m) <= E R_{min(T, m)} <= m, so **P(a false alarm within the first m windows)
<= m / c**, and the mean number of windows to a false alarm is >= c. With R reset to 0 after
an alarm, R_k + c alarms_k - k stays a supermartingale: E[false alarms in m windows] <= m / c.
With ``baseline_windows`` (the service uses 5), the first windows of a model measure its own
flag rate, and the null becomes "every record is flagged with probability <= max(q, that rate's
99 % upper bound)": traffic with a steady share of anomalies is stationary, not drift. Not
covered: the certificate fails with probability delta, the baseline bound with probability
0.01 (then alarms are right), and anomaly bursts raise the flag rate too: an alarm says flags
exceed what the model certified and showed, not why.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scipy import special, stats

if TYPE_CHECKING:
    pass

log = logging.getLogger("nearwatch.drift")

STATE_FORMAT = 2
# p-values below this are clipped up to it: f(p) stays finite (~2e294) and, f being
# decreasing, a larger p only bets less, so clipping never breaks the guarantee.
MIN_P_VALUE = 1e-300


def binomial_tail(n: int, x: int, q: float) -> float:
    """P(X >= x) for X ~ Binomial(n, q); exactly 1.0 for x <= 0.

    >>> binomial_tail(10, 0, 0.3), binomial_tail(10, 11, 0.3), binomial_tail(2, 2, 0.5)
    (1.0, 0.0, 0.25)
    """
    if n < 0 or not 0.0 <= q <= 1.0:
        raise ValueError(f"need n >= 0 and q in [0, 1], got n={n}, q={q}")
    if x <= 0:
        return 1.0
    if x > n:
        return 0.0
    # P(X >= x) = I_q(x, n - x + 1), the regularised incomplete beta: accurate in the far tail,
    # where 1 - cdf would cancel to 0 long before the true value underflows
    return float(special.betainc(x, n - x + 1, q))


def mixture_bet(p: float) -> float:
    """The simple-mixture betting function f(p) = ∫_0^1 ε p^(ε-1) dε.

    With t = -ln p: f = (e^t - 1 - t) / t^2 = (p ln p - p + 1) / (p (ln p)^2), f(1) = 1/2.
    Why it is a fair bet: each p -> ε p^(ε-1) integrates to 1 over U(0, 1), so f does too
    (Fubini), and f is decreasing; for a super-uniform p, P(f(p) > s) = P(p < f^-1(s))
    <= P(f(U) > s) for every s, hence E f(p) <= E f(U) = 1.

    >>> mixture_bet(1.0), round(mixture_bet(0.01), 4), mixture_bet(0.0) > 1e290
    (0.5, 4.451, True)
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    t = -math.log(max(p, MIN_P_VALUE))
    if t < 1e-3:  # (e^t - 1 - t) / t^2 cancels: its series, error < t^4 / 720 < 1e-15
        return 0.5 + t / 6.0 + t * t / 24.0 + t**3 / 120.0
    return (math.expm1(t) - t) / (t * t)


class ShiryaevRoberts:
    """Shiryaev-Roberts change detector on super-uniform p-values: R = (1 + R) f(p).

    Under the null R_k - k is a supermartingale: P(an alarm within the first m updates)
    <= m / threshold, and the mean number of updates to a false alarm is >= threshold.

    >>> detector = ShiryaevRoberts(threshold=100.0)
    >>> detector.update(0.5), round(detector.statistic, 4)
    (False, 0.6387)
    >>> detector.update(1e-6), detector.statistic, detector.alarms
    (True, 0.0, 1)
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold  # alarm level c > 1
        self.statistic = 0.0
        self.reached = 0.0  # R after the last update, before an alarm's reset
        self.alarms = 0
        self.windows = 0

    def update(self, p: float) -> bool:
        """Feed one p-value; True (an alarm) when R reaches the threshold, and R restarts at 0."""
        if not self.threshold > 1.0:
            raise ValueError(f"threshold must exceed 1, got {self.threshold}")
        self.statistic = self.reached = (1.0 + self.statistic) * mixture_bet(p)
        self.windows += 1
        if self.statistic >= self.threshold:
            self.statistic = 0.0
            self.alarms += 1
            return True
        return False


@dataclass(frozen=True)
class DriftStep:
    """One closed window: its counts, p-value, and R after it (before the reset on an alarm)."""

    n: int
    flagged: int
    p_value: float
    statistic: float
    alarm: bool


class FlagRateDrift:
    """Flag counts of one model -> windows of >= ``window`` records -> Shiryaev-Roberts.

    >>> drift = FlagRateDrift(threshold=1000.0, window=2000)
    >>> drift.add(1500, 15, 0.01)  # under a window: nothing closes
    []
    >>> [(s.n, s.flagged, s.alarm) for s in drift.add(1000, 80, 0.01)]  # 95 flags, ~25 allowed
    [(2500, 95, True)]
    """

    def __init__(self, threshold: float = 1000.0, window: int = 2000,
                 baseline_windows: int = 0) -> None:
        self.threshold = threshold
        self.window = window
        # The first windows measure the model's own flag rate (anomalies included): the test
        # is then against max(bound, its 99 % upper bound), so steady traffic with anomalies
        # does not alarm forever (1 % anomalies at 0.74 recall: 1.3 % flags against a 1 %
        # bound alarmed within a median of 12 windows without it).
        self.baseline_windows = baseline_windows
        self.baseline_seen = self.baseline_scored = self.baseline_flagged = 0
        self.reference_rate: float | None = None
        self.detector = ShiryaevRoberts(threshold)
        self.bound: float | None = None  # fpr_bound of the counts since the last reset
        self.pending_scored = 0
        self.pending_flagged = 0

    @property
    def statistic(self) -> float:
        return self.detector.statistic

    def add(self, scored: int, flagged: int, bound: float) -> list[DriftStep]:
        """Add one model's counts; close a window (with all pending counts) once it is full,
        never with more flags than records (a worker whose HINCRBYs are not one transaction
        can have a batch's flags taken a check after its records)."""
        if self.window < 1 or scored < 0 or flagged < 0 or not 0.0 <= bound <= 1.0:
            raise ValueError(f"need window >= 1, counts >= 0, bound in [0, 1]: got "
                             f"{self.window}, {flagged} of {scored}, {bound}")
        if (self.pending_scored or self.pending_flagged) and bound != self.bound:
            # one p-value needs one q: a new model gets a new FlagRateDrift (DriftMonitor resets)
            raise ValueError(f"bound changed from {self.bound} to {bound} inside a window")
        self.bound = bound
        self.pending_scored += scored
        self.pending_flagged += flagged
        if self.pending_scored < self.window or self.pending_flagged > self.pending_scored:
            return []
        n, x = self.pending_scored, self.pending_flagged
        self.pending_scored = self.pending_flagged = 0
        if self.baseline_seen < self.baseline_windows:
            self.baseline_seen += 1
            self.baseline_scored += n
            self.baseline_flagged += x
            if self.baseline_seen == self.baseline_windows:
                self.reference_rate = float(stats.beta.ppf(
                    0.99, self.baseline_flagged + 1, self.baseline_scored - self.baseline_flagged))
            return [DriftStep(n=n, flagged=x, p_value=1.0, statistic=self.statistic,
                              alarm=False)]
        p_value = binomial_tail(n, x, max(bound, self.reference_rate or 0.0))
        self.detector.threshold = self.threshold
        alarm = self.detector.update(p_value)
        return [DriftStep(n=n, flagged=x, p_value=p_value, statistic=self.detector.reached,
                          alarm=alarm)]

    def to_state(self) -> dict[str, Any]:
        """JSON-able state (``from_state`` restores it)."""
        return {"format": STATE_FORMAT, "threshold": self.threshold, "window": self.window,
                "bound": self.bound, "pending_scored": self.pending_scored,
                "pending_flagged": self.pending_flagged, "statistic": self.detector.statistic,
                "alarms": self.detector.alarms, "windows": self.detector.windows,
                "baseline": [self.baseline_windows, self.baseline_seen, self.baseline_scored,
                             self.baseline_flagged], "reference_rate": self.reference_rate}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FlagRateDrift:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown drift state format {state.get('format')!r}")
        baseline = [int(v) for v in state["baseline"]]
        drift = cls(threshold=float(state["threshold"]), window=int(state["window"]),
                    baseline_windows=baseline[0])
        drift.baseline_seen, drift.baseline_scored, drift.baseline_flagged = baseline[1:]
        drift.reference_rate = (None if state["reference_rate"] is None
                                else float(state["reference_rate"]))
        drift.bound = None if state["bound"] is None else float(state["bound"])
        drift.pending_scored, drift.pending_flagged = (int(state["pending_scored"]),
                                                       int(state["pending_flagged"]))
        drift.detector.statistic = float(state["statistic"])
        drift.detector.alarms, drift.detector.windows = int(state["alarms"]), int(state["windows"])
        return drift
