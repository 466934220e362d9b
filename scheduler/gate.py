"""The promotion gate: a challenger replaces the champion only when it is at least as good.

Both models are judged on the same records: the held-out *gate window* of recent traffic
(records neither model trained or calibrated on) and the labelled anomalies (analyst
verdicts and known anomalies). A challenger passes when

1. its threshold is certified (``certified_``) whenever the champion's is;
2. its realised false-positive rate on the window's presumed normals is within its certified
   bound: the gate fails only when the one-sided 95 % Clopper-Pearson *lower* bound of the
   realised rate exceeds ``fpr_bound_`` (evidence, not noise, that the bound is broken).
   Presumed normals are the window's records that no verdict calls anomalous and that the
   champion did not flag: the stream also carries anomalies, which would otherwise count as
   false positives. Leaving out the champion's flags can understate the challenger's rate by
   at most the champion's own false-positive rate; the rate on the whole window (anomalies
   included, an overstatement) is reported beside it;
3. when the champion flags more of the window than its false-positive bound explains (95 %
   lower bound above it), the excess is presumed anomalous: the challenger must still flag
   all but ``margins.recall`` of as many of those records (records an analyst called normal
   aside). Without it, a stream 15 % anomalous (below the 20 % flag-rate cap) trained a
   challenger that flagged 9.7 % of the window against the champion's 15.7 %, and recall on
   fresh traffic fell from 0.875 to 0.517 with no labelled anomaly to show it;
4. with labelled anomalies: its AUROC (labelled anomalies against every window record: a
   normal set chosen by either model would favour that model) and its recall at threshold are
   not below the champion's by more than the configured margins.

Pure functions of the two fitted detectors and the records: no Redis, no Celery.

>>> clopper_pearson_lower(0, 100), round(clopper_pearson_lower(10, 100), 4)
(0.0, 0.0553)
>>> auroc(np.array([0.1, 0.2]), np.array([0.3, 0.15]))
0.75
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import beta as beta_distribution

CONFIDENCE = 0.95


@dataclass(frozen=True)
class GateMargins:
    """How much worse than the champion the challenger may be on labelled anomalies."""

    auroc: float = 0.01
    recall: float = 0.05


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: list[str]  # why it failed (empty when it passed)
    figures: dict[str, Any] = field(default_factory=dict)


def clopper_pearson_lower(successes: int, trials: int, confidence: float = CONFIDENCE) -> float:
    """One-sided lower confidence bound of a binomial proportion (exact)."""
    if successes <= 0 or trials <= 0:
        return 0.0
    return float(beta_distribution.ppf(1.0 - confidence, successes, trials - successes + 1))


def auroc(normal_scores: np.ndarray, anomaly_scores: np.ndarray) -> float:
    """P(anomaly score > normal score), ties counted half (Mann-Whitney)."""
    if len(normal_scores) == 0 or len(anomaly_scores) == 0:
        return float("nan")
    combined = np.concatenate([normal_scores, anomaly_scores])
    order = combined.argsort(kind="mergesort")
    ranks = np.empty(len(combined))
    sorted_values = combined[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_values, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    anomaly_rank_sum = ranks[len(normal_scores):].sum()
    n_anomaly, n_normal = len(anomaly_scores), len(normal_scores)
    return float((anomaly_rank_sum - n_anomaly * (n_anomaly + 1) / 2) / (n_anomaly * n_normal))


def _excess_flags_kept(champion: Any, champion_flags: np.ndarray, challenger_flags: np.ndarray,
                       called_normal: np.ndarray, margins: GateMargins,
                       figures: dict[str, Any]) -> list[str]:
    """Check 3: the challenger still flags the champion's flags that false alarms can't
    explain (unlabelled evidence of anomalies in the window)."""
    n, flagged = len(champion_flags), int(champion_flags.sum())
    bound = champion.fpr_bound_
    if bound is None or not n or clopper_pearson_lower(flagged, n) <= bound:
        return []
    suspects = champion_flags & ~called_normal
    excess = int(suspects.sum()) - math.ceil(bound * n)
    kept = int((challenger_flags & suspects).sum())
    needed = math.ceil((1.0 - margins.recall) * excess)
    figures.update(window_excess_flags=excess, challenger_flags_of_excess=kept)
    if excess <= 0 or kept >= needed:
        return []
    return [f"the champion flags {flagged} of {n} window records, {excess} more than its "
            f"false-positive bound {bound:.4g} explains (presumed anomalies); the challenger "
            f"flags {kept} of them, fewer than {needed}: it would learn them as normal"]


def _scores(detector: Any, records: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Scores and flags of ``records`` (a record the model cannot read scores +inf)."""
    if not records:
        return np.zeros(0), np.zeros(0, dtype=bool)
    results = detector.score_records(list(records), n_neighbours=0)
    scores = np.array([r.get("score", np.inf) if "error" not in r else np.inf
                       for r in results], dtype=float)
    flags = np.array([bool(r.get("is_anomaly", True)) if "error" not in r else True
                      for r in results])
    return scores, flags


def judge(champion: Any, challenger: Any, window: Sequence[Any], anomalies: Sequence[Any],
          called_normal: Sequence[bool], margins: GateMargins) -> GateDecision:
    """Compare the two fitted detectors on the gate ``window`` and labelled ``anomalies``;
    ``called_normal`` marks the window records an analyst called normal."""
    reasons: list[str] = []
    champion_scores, champion_flags = _scores(champion, window)
    challenger_scores, challenger_flags = _scores(challenger, window)
    presumed_normal = ~champion_flags
    n_normal = int(presumed_normal.sum())
    false_positives = int(challenger_flags[presumed_normal].sum())
    bound = challenger.fpr_bound_
    lower = clopper_pearson_lower(false_positives, n_normal)
    figures: dict[str, Any] = {
        "window_records": len(window),
        "window_presumed_normal": n_normal,
        "champion_flag_rate_window": _rate(int(champion_flags.sum()), len(window)),
        "challenger_flag_rate_window": _rate(int(challenger_flags.sum()), len(window)),
        "challenger_fpr_realised": _rate(false_positives, n_normal),
        "challenger_fpr_lower95": lower,
        "challenger_fpr_bound": bound,
        "champion_fpr_bound": champion.fpr_bound_,
        "challenger_certified": bool(challenger.certified_),
        "champion_certified": bool(champion.certified_),
        "challenger_threshold": challenger.threshold_,
        "labelled_anomalies": len(anomalies),
    }
    if champion.certified_ and not challenger.certified_:
        reasons.append("the challenger's threshold is not certified (too few calibration "
                       "records) while the champion's is")
    if bound is not None and n_normal and lower > bound:
        reasons.append(f"realised false-positive rate {false_positives}/{n_normal} on the gate "
                       f"window: its 95 % lower bound {lower:.4g} exceeds the certified "
                       f"bound {bound:.4g}")
    reasons += _excess_flags_kept(champion, champion_flags, challenger_flags,
                                  np.asarray(called_normal, dtype=bool), margins, figures)
    if not anomalies:
        figures["labelled_checks"] = "skipped: no labelled anomaly held out for the gate"
    else:
        champion_anomaly_scores, champion_hits = _scores(champion, anomalies)
        challenger_anomaly_scores, challenger_hits = _scores(challenger, anomalies)
        figures.update({
            "champion_auroc": auroc(champion_scores, champion_anomaly_scores),
            "challenger_auroc": auroc(challenger_scores, challenger_anomaly_scores),
            "champion_recall": float(champion_hits.mean()),
            "challenger_recall": float(challenger_hits.mean()),
        })
        if figures["challenger_auroc"] < figures["champion_auroc"] - margins.auroc:
            reasons.append(f"AUROC on {len(anomalies)} labelled anomalies fell from "
                           f"{figures['champion_auroc']:.4f} to "
                           f"{figures['challenger_auroc']:.4f} (margin {margins.auroc})")
        if figures["challenger_recall"] < figures["champion_recall"] - margins.recall:
            reasons.append(f"recall at threshold on {len(anomalies)} labelled anomalies fell "
                           f"from {figures['champion_recall']:.3f} to "
                           f"{figures['challenger_recall']:.3f} (margin {margins.recall})")
    return GateDecision(passed=not reasons, reasons=reasons, figures=_finite(figures))


def _rate(count: int, total: int) -> float | None:
    return count / total if total else None


def _finite(figures: dict[str, Any]) -> dict[str, Any]:
    """Strict JSON: NaN (no normals to rank against) becomes None."""
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
            for k, v in figures.items()}
