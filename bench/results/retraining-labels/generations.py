"""Unattended retraining, generation after generation, with and without labelled anomalies.

The setting of a new user's trial (issue 10's demo telemetry): a champion trained on 4 900
normal records (seed 0), a buffer of 6 000 records of traffic (seed 1, 2 % anomalies) scored
once by it, the normal records pinned as golden, then six retrainings in a row on that buffer
with the service's own steps (``scheduler/retrain.py``, ``scheduler/golden.py``,
``scheduler/gate.py``); each challenger that passes the gate becomes the champion. Recall and
FPR at the certified threshold are measured on 20 000 fresh records (seed 7).

``--labels``: the training file's 100 labelled anomalies are pinned too (``golden
--label-field``): one half trains every challenger, the other half judges it.

    .venv/bin/python bench/results/retraining-labels/generations.py [--labels]
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from nearwatch.detector import Detector
from nearwatch.detector.held_out import held_out_for_judging
from nearwatch.detector.synthetic import LABEL_FIELD, generate_records
from nearwatch.scheduler import retrain
from nearwatch.scheduler.buffer import BufferEntry
from nearwatch.scheduler.feedback import Verdict
from nearwatch.scheduler.gate import GateMargins, judge
from nearwatch.scheduler.golden import split_golden
from nearwatch.worker.settings import Settings


def strip(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != LABEL_FIELD} for r in records]


def at_threshold(detector: Detector, records: list[dict[str, Any]], truth: np.ndarray
                 ) -> tuple[float, float]:
    flags = np.array([r.get("is_anomaly") is True
                      for r in detector.score_records(records, n_neighbours=0)])
    return float(flags[truth].mean()), float(flags[~truth].mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--labels", action="store_true")
    parser.add_argument("--generations", type=int, default=6)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    settings = Settings()
    train = generate_records(5000, anomaly_rate=0.02, seed=0)
    golden = strip([r for r in train if not r[LABEL_FIELD]])
    known = strip([r for r in train if r[LABEL_FIELD]]) if args.labels else []
    trained_on = [Verdict(r["id"], "anomaly", r, 0.0, "golden") for r in known
                  if not held_out_for_judging(r)]
    judged_on = [r for r in known if held_out_for_judging(r)]
    champion = Detector(random_state=0).fit(golden)
    traffic = strip(generate_records(6000, anomaly_rate=0.02, seed=1))
    fresh = generate_records(20000, anomaly_rate=0.02, seed=7)
    truth = np.array([r[LABEL_FIELD] for r in fresh], dtype=bool)
    fresh = strip(fresh)
    scored = champion.score_records(traffic, n_neighbours=0)
    entries = [BufferEntry(r, float(s["p_value"]), 0.0, r["id"], "v1")
               for r, s in zip(traffic, scored, strict=True)]
    recall, fpr = at_threshold(champion, fresh, truth)
    rows = [{"generation": 0, "recall": recall, "fpr": fpr, "outcome": "trained"}]
    for generation in range(1, args.generations + 1):
        rng = np.random.default_rng(generation)  # the lock token seeds this in the service
        shuffled = [entries[i] for i in rng.permutation(len(entries)).tolist()]
        n_held = int(len(shuffled) * settings.retrain.holdout_fraction)
        window = [e.record for e in shuffled[n_held // 2: n_held]]
        training = [e for e in shuffled[n_held:] if e.p_value >= settings.buffer.min_p]
        calibration, pinned = split_golden(golden, champion, rng)
        figures: dict[str, Any] = {}
        references, pairs, anomalies = retrain._training_set(
            pinned, champion, training, trained_on, settings, figures)
        challenger = retrain._fit_challenger(champion, references, calibration, pairs,
                                             anomalies, figures)
        decision = judge(champion, challenger, window, judged_on, [False] * len(window),
                         GateMargins())
        recall, fpr = at_threshold(challenger, fresh, truth)
        rows.append({"generation": generation, "recall": recall, "fpr": fpr,
                     "outcome": "promoted" if decision.passed else "rejected",
                     "reasons": decision.reasons})
        if decision.passed:
            champion = challenger
    name = "with-labels" if args.labels else "without-labels"
    Path(__file__).with_name(f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"{name}: generation, challenger recall / FPR on 20 000 fresh records, gate")
    for row in rows:
        print(f"  {row['generation']}  {row['recall']:.3f} / {row['fpr']:.4f}  {row['outcome']}")


if __name__ == "__main__":
    main()
