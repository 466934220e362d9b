"""Two calibration choices measured on the project's telemetry (issues 7 and 10).

1. Retraining: which held-out records calibrate the challenger. Traffic with 1 % anomalies
   (as many as alpha = 1 % allows false alarms) scored by a champion; the challenger (same
   parameters, references from records with p >= 0.1) calibrated on every held-out record,
   on those the champion did not flag (what ``scheduler/retrain.py`` does), or on those with
   p >= 0.1. Recall and false-positive rate at the threshold on fresh traffic.
2. The calibration cap (``detector.fitting.enough_calibration``): 100 000 normal references,
   30 % held out for calibration without the cap against the capped default, same records.

    .venv/bin/python -m bench.calibration_choices --out bench/results/calibration-choices
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Any
from unittest import mock

import click
import numpy as np


def _at_threshold(detector: Any, records: list[dict[str, Any]], truth: np.ndarray
                  ) -> dict[str, float]:
    flags = detector.predict(records)
    return {"recall": round(float(flags[truth].mean()), 3),
            "fpr": round(float(flags[~truth].mean()), 4),
            "bound": round(float(detector.fpr_bound_), 4)}


@click.command("bench-calibration-choices")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False, path_type=Path))
def main(out_dir: Path | None) -> None:
    from nearwatch.detector import Detector
    from nearwatch.detector.synthetic import LABEL_FIELD, generate_records
    from nearwatch.detector.threads import configure_threads

    configure_threads(1)
    warnings.simplefilter("ignore")
    report: dict[str, Any] = {}
    # 1. retraining's calibration records
    train = generate_records(6000, anomaly_rate=0.0, seed=1)
    live = generate_records(8000, anomaly_rate=0.01, seed=2)
    fresh = generate_records(30000, anomaly_rate=0.01, seed=3)
    truth = np.array([bool(r[LABEL_FIELD]) for r in fresh])
    champion = Detector(label_fields=(LABEL_FIELD,)).fit(train)
    scored = champion.score_records(live, 0)
    p_value = np.array([r["p_value"] for r in scored])
    flagged = np.array([bool(r["is_anomaly"]) for r in scored])
    order = np.random.default_rng(0).permutation(len(live))
    held, rest = order[:1600], order[3200:]
    references = [live[i] for i in rest if p_value[i] >= 0.1] + train[:1900]
    choices = {"every held-out record": held,
               "held-out records the champion did not flag": held[~flagged[held]],
               "held-out records with p >= 0.1": held[p_value[held] >= 0.1]}
    rows = {"champion": _at_threshold(champion, fresh, truth)}
    for name, rows_used in choices.items():
        challenger = Detector(**champion.get_params()).fit(
            references, calibration=[live[i] for i in rows_used])
        rows[name] = _at_threshold(challenger, fresh, truth)
    report["retraining_calibration"] = rows
    # 2. the cap
    normals = generate_records(100_000, anomaly_rate=0.0, seed=0)
    test = generate_records(40_000, anomaly_rate=0.02, seed=1)
    test_truth = np.array([bool(r[LABEL_FIELD]) for r in test])
    cap: dict[str, Any] = {}
    for encoder in ("identity", "auto"):
        for name, limit in (("30 % (no cap)", 10**9), ("capped (default)", None)):
            patch = (mock.patch("nearwatch.detector.fitting.enough_calibration",
                                return_value=limit) if limit else contextlib.nullcontext())
            with patch:
                detector = Detector(label_fields=(LABEL_FIELD,), encoder=encoder).fit(normals)
            cap[f"{encoder}, {name}"] = {"n_calibration": detector.n_calibration_,
                                         **_at_threshold(detector, test, test_truth)}
    report["calibration_cap"] = cap
    lines = ["| retraining: challenger calibrated on | recall | FPR | bound |",
             "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v['recall']} | {v['fpr']} | {v['bound']} |" for k, v in rows.items()]
    lines += ["", "| 100k references: encoder, calibration | records | recall | FPR | bound |",
              "|---|---:|---:|---:|---:|"]
    lines += [f"| {k} | {v['n_calibration']} | {v['recall']} | {v['fpr']} | {v['bound']} |"
              for k, v in cap.items()]
    table = "\n".join(lines)
    click.echo(table)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        (out_dir / "results.md").write_text(
            "`.venv/bin/python -m bench.calibration_choices --out "
            "bench/results/calibration-choices`\n\n" + table + "\n")


if __name__ == "__main__":
    main()
