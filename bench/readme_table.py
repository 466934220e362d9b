"""The README's quality table, generated from `nearwatch bench` reports (never typed by hand).

    .venv/bin/python -m bench.readme_table bench/results/adbench29 \\
        bench/results/adbench29-labelled10

prints the Markdown table that README.md's "Quality" section holds: one row per report, the
means over datasets of nearwatch, raw kNN, the best PyOD peer of the run where peers ran, and
the pooled realised FPR.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def row(report: dict[str, Any]) -> str:
    config, summary = report["config"], report["overall"]
    means = summary["mean_auroc"]
    datasets = report["datasets"]
    peers = sorted({key for d in datasets.values() for key in d if key.startswith("pyod_")})
    peer_means = {name: sum(d[name]["auroc"]["mean"] for d in datasets.values()) / len(datasets)
                  for name in peers}
    best = max(peer_means, key=lambda name: peer_means[name]) if peer_means else None
    run = ("unlabelled default" if not config["labelled_anomalies"]
           else f"`--labelled-anomalies {config['labelled_anomalies']}`")
    best_cell = "–" if best is None else f"{peer_means[best]:.2f} ({best[5:]})"
    return (f"| {run} | {len(datasets)} × {config['seeds']} | **{means['nearwatch']:.2f}** | "
            f"{means['raw_knn']:.2f} | {means['nearwatch'] - means['raw_knn']:+.2f} | "
            f"{best_cell} | {summary['pooled_realised_fpr']:.4f} |")


def table(folders: list[Path]) -> str:
    lines = ["| run | datasets × seeds | nearwatch AUROC | raw kNN | vs raw kNN | best PyOD peer "
             "| pooled FPR at α = 0.01 |", "|---|---|---:|---:|---:|---:|---:|"]
    for folder in folders:
        lines.append(row(json.loads((folder / "report.json").read_text())))
    return "\n".join(lines)


if __name__ == "__main__":
    print(table([Path(arg) for arg in sys.argv[1:]]))
