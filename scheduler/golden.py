"""The golden records in a retraining: the pinned sample of the original training data
(``nearwatch golden``) and the labelled anomalies of the same file."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from . import fields as usable
from .buffer import GOLDEN_ANOMALIES_KEY, golden_records
from .feedback import Verdict, canonical_id

if TYPE_CHECKING:
    from nearwatch.detector import Detector
    from redis import Redis


def golden_anomalies(client: Redis, champion: Detector, figures: dict[str, Any],
                     verdict_ids: set[str]) -> tuple[list[Verdict], list[Verdict]]:
    """The golden file's labelled anomalies (``nearwatch golden --label-field``) as anomaly
    verdicts, (trained on, judged on) by ``held_out_for_judging`` of each record as pinned.
    Without them, challengers trained without a champion's known anomalies lost recall that
    no check could see. A record an analyst gave a verdict on (``verdict_ids``, canonical)
    is left to the verdict: counted once, in one half."""
    from nearwatch.detector.held_out import held_out_for_judging

    pinned = [r for r in golden_records(client, GOLDEN_ANOMALIES_KEY)
              if r.get(champion.id_field) is None
              or canonical_id(r[champion.id_field]) not in verdict_ids]
    halves: list[list[Verdict]] = []
    for judged in (False, True):
        half = [r for r in pinned if held_out_for_judging(r, champion.id_field) == judged]
        name = "golden_anomalies_" + ("judged" if judged else "trained")
        readable = usable.readable_records(champion, half, name, figures)
        figures[name] = len(readable)
        halves.append([Verdict(record.get(champion.id_field), "anomaly", record, 0.0, "golden")
                       for record in readable])
    return halves[0], halves[1]


def split_golden(golden: list[Any], champion: Detector, rng: np.random.Generator
                 ) -> tuple[list[Any], list[Any]]:
    """(calibration, the rest): half the golden records when that half holds 4 times what
    certifies alpha (fewer give a loose threshold: recall 0.93 -> 0.57 with 500 at 0.01).
    Traffic the champion did not flag lacks the normal tail it flags, and each promotion
    cut it again (realised FPR 0.0036 -> 0.0179 over eight at alpha = 0.01)."""
    from nearwatch.detector.calibration import required_calibration_size

    if champion.alpha is None or not golden:
        return [], golden
    half = len(golden) // 2
    if half < 4 * required_calibration_size(champion.alpha, champion.delta):
        return [], golden
    order = rng.permutation(len(golden)).tolist()
    return [golden[i] for i in order[:half]], [golden[i] for i in order[half:]]
