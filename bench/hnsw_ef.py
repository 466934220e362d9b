"""HNSW efSearch on real embeddings: recall@5 vs exact search, AUROC, and time per query.

Trains a ``Detector`` on ``--refs`` normal 40-field records (the service benchmark's workload,
HNSW above 20k references), embeds ``--queries`` live records of the same generator run (2%
anomalies), and for each efSearch measures, at one thread:

- recall@5 of the HNSW neighbours against exact (Flat) search, for normal and anomalous queries;
- the AUROC of the scores (mean distance to the 5 nearest references) against the labels;
- search time per query in batches of 1000.

Run::

    .venv/bin/python -m bench.hnsw_ef --refs 100000 --out bench/results/service
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import faiss
import numpy as np

from bench.service import _workload

EF_VALUES = (16, 24, 32, 40, 48, 64, 96)


@click.command("bench-hnsw-ef")
@click.option("--refs", "n_refs", default=100_000, show_default=True, type=int)
@click.option("--queries", "n_queries", default=40_000, show_default=True, type=int)
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False, path_type=Path))
def main(n_refs: int, n_queries: int, out_dir: Path | None) -> None:
    """Sweep efSearch on a trained detector's embeddings (see the module docstring)."""
    from nearwatch.detector import Detector
    from nearwatch.detector.synthetic import LABEL_FIELD
    from nearwatch.detector.threads import configure_threads

    configure_threads(1)
    train, pool = _workload(n_refs, n_queries)
    labels = np.array([bool(r.pop(LABEL_FIELD)) for r in pool])
    detector = Detector(label_fields=(LABEL_FIELD,), random_state=0).fit(train)
    index = detector.reference_index_
    if index.kind_ != "hnsw":
        raise click.UsageError(f"{n_refs} references use a {index.kind_} index, not HNSW")
    embeddings = detector.embedder_.embed(detector.feature_encoder_.transform(pool))
    centred = np.ascontiguousarray(embeddings - index.center_, dtype=np.float32)
    k = detector.n_neighbors
    flat = faiss.IndexFlatL2(index.dim_)
    flat.add(np.ascontiguousarray(index._refs))
    exact_sq, truth = flat.search(centred, k)
    rows = [_row("exact (Flat)", None, np.ones(len(labels)), labels,
                 np.sqrt(np.maximum(exact_sq, 0)).mean(1), detector.threshold_)]
    hnsw = index._index.hnsw
    fitted_ef = hnsw.efSearch
    try:
        for ef in EF_VALUES:
            hnsw.efSearch = ef
            started = time.perf_counter()
            for start in range(0, len(centred), 1000):
                index._index.search(centred[start:start + 1000], k)
            us = (time.perf_counter() - started) / len(centred) * 1e6
            _, ids = index._index.search(centred, k)
            recall = np.array([len(set(a) & set(b)) / k for a, b in zip(ids, truth, strict=True)])
            distances, _ = index.search(embeddings, k)
            rows.append(_row(f"efSearch={ef}", us, recall, labels,
                             distances.astype(np.float64).mean(1), detector.threshold_))
    finally:
        hnsw.efSearch = fitted_ef
    table = _table(rows)
    click.echo(table)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        command = " ".join(["python -m bench.hnsw_ef", *sys.argv[1:]])
        (out_dir / "hnsw_ef.json").write_text(json.dumps(
            {"command": command, "refs": n_refs, "queries": n_queries,
             "dim": int(index.dim_), "fitted_ef_search": int(fitted_ef), "rows": rows},
            indent=2) + "\n")
        (out_dir / "hnsw_ef.md").write_text(
            f"`{command}`\n\n{n_refs:,} references, {n_queries:,} queries "
            f"({int(labels.sum())} anomalies), {index.dim_}-d embeddings, M={index.hnsw_m}, "
            f"efConstruction={index.ef_construction}, one thread. The threshold is the "
            f"model's (calibrated at efSearch={fitted_ef}); flagged = share above it.\n\n"
            f"{table}\n")


def _row(name: str, us: float | None, recall: np.ndarray, labels: np.ndarray,
         scores: np.ndarray, threshold: float | None) -> dict[str, object]:
    flagged = scores > (np.inf if threshold is None else threshold)
    return {"search": name, "us_per_query": None if us is None else round(us, 1),
            "recall5_normal": round(float(recall[~labels].mean()), 4),
            "recall5_anomaly": round(float(recall[labels].mean()), 4),
            "auroc": round(_auroc(scores, labels), 4),
            "flagged_normal": round(float(flagged[~labels].mean()), 4),
            "flagged_anomaly": round(float(flagged[labels].mean()), 4)}


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _table(rows: list[dict[str, object]]) -> str:
    lines = ["| search | µs/query | recall@5 normal | recall@5 anomaly | AUROC | "
             "flagged normal | flagged anomaly |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        us = "" if r["us_per_query"] is None else r["us_per_query"]
        lines.append(f"| {r['search']} | {us} | {r['recall5_normal']} | "
                     f"{r['recall5_anomaly']} | {r['auroc']} | {r['flagged_normal']} | "
                     f"{r['flagged_anomaly']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
