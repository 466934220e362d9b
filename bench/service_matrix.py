"""Service benchmark of numeric batches: end to end next to in-process ``Detector.score``.

The records path (``bench/service.py``) parses, scores and answers JSON per record; a producer
whose records are numbers can send a matrix instead (``worker/matrix.py``,
``ScoringClient.score_matrix``). This measures that path the same way, in one run per size:

- in-process: ``Detector.score`` on the same float64 matrix, batches of ``--batch`` rows, in 1
  process and in ``--concurrency`` forked processes (the fair baseline: as many processes as
  the node has);
- end to end: ``ScoringClient.score_matrix`` → Redis → ``nearwatch worker --concurrency N``
  (prefork, alerts and reference buffer on, as deployed) → the answer columns, with the
  CPU seconds of the producer, the node and Redis.

Run (needs Redis at 127.0.0.1:6379; uses DB 12)::

    .venv/bin/python -m bench.service_matrix --refs 10000 --refs 100000 --records 100000 \\
        --repeat 3 --out bench/results/service-matrix

The data are the numeric fields of the project's synthetic telemetry (``telemetry_matrix``,
6 fields + 34 extra = 40 per record), training and live records from one generator run
(live: 2 % anomalies), the model a default ``Detector`` trained on the normal records.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from bench.service import _in_process_cpu_us, _in_process_rate, _median, cpu_and_rate_figures
from bench.service_node import _cpu_seconds, _worker_node

N_EXTRA_FIELDS = 34  # + 6 numeric telemetry fields = 40 numeric fields per record


@click.command("bench-service-matrix")
@click.option("--refs", "ref_sizes", multiple=True, type=int, default=(10_000, 100_000),
              show_default=True, help="Reference-set sizes (repeatable).")
@click.option("--records", "n_records", default=100_000, show_default=True, type=int)
@click.option("--batch", "batch_size", default=1000, show_default=True, type=int)
@click.option("--in-flight", "max_in_flight", default=6, show_default=True, type=int)
@click.option("--concurrency", default=2, show_default=True, type=int)
@click.option("--repeat", default=3, show_default=True, type=int)
@click.option("--pool", default="prefork", show_default=True,
              type=click.Choice(["prefork", "processes"]), help="The node's --pool.")
@click.option("--alerts/--no-alerts", default=True, show_default=True)
@click.option("--buffer/--no-buffer", default=True, show_default=True)
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False, path_type=Path))
def main(ref_sizes: tuple[int, ...], n_records: int, batch_size: int, max_in_flight: int,
         concurrency: int, repeat: int, pool: str, alerts: bool, buffer: bool,
         out_dir: Path | None) -> None:
    """Measure numeric batches end to end (see the module docstring)."""
    from nearwatch.detector.threads import configure_threads

    configure_threads(1)
    env = {"NEARWATCH_ALERTS": "1" if alerts else "0", "NEARWATCH_BUFFER": "1" if buffer else "0"}
    rows = [_bench_one(n_refs, n_records, batch_size, max_in_flight, concurrency,
                       max(1, repeat), pool, env) for n_refs in ref_sizes]
    report = {"command": " ".join(["python -m bench.service_matrix", *sys.argv[1:]]),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_average_at_end": os.getloadavg()},
              "settings": {"records": n_records, "batch": batch_size,
                           "in_flight": max_in_flight, "concurrency": concurrency,
                           "fields": 6 + N_EXTRA_FIELDS, "repeat": repeat, "pool": pool,
                           "alerts": alerts, "buffer": buffer},
              "results": rows}
    click.echo(_table(rows))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        (out_dir / "results.md").write_text(f"`{report['command']}`\n\n{_table(rows)}\n\n"
                                            f"load average at end: "
                                            f"{report['machine']['load_average_at_end']}\n")


def _bench_one(n_refs: int, n_records: int, batch_size: int, max_in_flight: int,
               concurrency: int, repeat: int, pool: str = "prefork",
               env: dict[str, str] | None = None) -> dict[str, Any]:
    from nearwatch.detector import Detector
    from nearwatch.detector.matrix_scoring import field_names
    from nearwatch.detector.store.registry import ModelRegistry
    from nearwatch.detector.synthetic import telemetry_matrix

    work = Path(tempfile.mkdtemp(prefix="nearwatch-bench-matrix-"))
    try:
        matrix, fields, labels = telemetry_matrix(int(n_refs * 1.05) + n_records, 0.02, seed=1,
                                                  n_extra_fields=N_EXTRA_FIELDS)
        train = matrix[:-n_records][~labels[:-n_records]][:n_refs]
        started = time.perf_counter()
        detector = Detector(random_state=0).fit(
            [dict(zip(fields, row, strict=True)) for row in train.tolist()])
        fit_s = time.perf_counter() - started
        order = [fields.index(name) for name in field_names(detector)]
        live = np.ascontiguousarray(matrix[-n_records:][:, order])
        detector.save(work / "bundle")
        registry = ModelRegistry(work / "models")
        registry.add(work / "bundle", promote=True)
        runs = []
        node = _worker_node(registry.root, concurrency, work, extra_env=env, pool=pool)
        with node as app:
            for _ in range(repeat):
                runs.append(_measure(detector, live, field_names(detector), app,
                                     batch_size, max_in_flight, concurrency, node))
        row = {key: _median([run[key] for run in runs]) for key in runs[0]}
        return {"refs": n_refs, "pool": pool, "index": detector.reference_index_.kind_,
                "fit_s": round(fit_s, 1), "runs": repeat,
                "e2e_rps_runs": [run["e2e_rps"] for run in runs], **row}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _measure(detector: Any, live: np.ndarray, fields: list[str], app: Any, batch_size: int,
             max_in_flight: int, concurrency: int, node: Any) -> dict[str, Any]:
    from nearwatch.worker.client import ClientOptions, ScoringClient

    n = len(live)
    in_1 = _in_process_rate(detector, live, batch_size, processes=1)
    in_2 = _in_process_rate(detector, live, batch_size, processes=concurrency)
    in_cpu = _in_process_cpu_us(detector, live, batch_size)
    client = ScoringClient(app, ClientOptions(batch_size=batch_size, max_in_flight=max_in_flight))
    before = _cpu_seconds(node)
    started = time.perf_counter()
    flagged = errors = 0
    for answer in client.score_matrix(live, fields):
        flagged += int(answer.is_anomaly.sum())
        errors += len(answer.errors)
    e2e = n / (time.perf_counter() - started)
    cpu = {k: v - before[k] for k, v in _cpu_seconds(node).items()}
    latencies = np.array(client.stats.latencies) * 1000
    return {"e2e_rps": round(e2e), "e2e_errors": errors, "e2e_flagged": flagged,
            "batch_latency_p50_ms": round(float(np.percentile(latencies, 50)), 1),
            "batch_latency_p99_ms": round(float(np.percentile(latencies, 99)), 1),
            **cpu_and_rate_figures(n, cpu, in_cpu, e2e, in_1, in_2)}


def _table(rows: list[dict[str, Any]]) -> str:
    header = ("| refs | pool | index | in-process 1 proc | in-process 2 proc | end to end | "
              "e2e / 2 proc | batch p50 / p99 | CPU µs/rec in-process / e2e "
              "(producer+node+redis) | flagged | errors |")
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for r in rows:
        lines.append(
            f"| {r['refs']:,} | {r['pool']} | {r['index']} | {r['in_process_1proc_rps']:,} rec/s | "
            f"{r['in_process_2proc_rps']:,} rec/s | {r['e2e_rps']:,} rec/s | "
            f"{r['e2e_vs_in_process_2proc']:.0%} | {r['batch_latency_p50_ms']} / "
            f"{r['batch_latency_p99_ms']} ms | {r['cpu_us_per_record_in_process']} / "
            f"{r['cpu_us_per_record_e2e_total']} ({r['cpu_us_per_record_client']}+"
            f"{r['cpu_us_per_record_worker_node']}+{r['cpu_us_per_record_redis']}) | "
            f"{r['e2e_flagged']} | {r['e2e_errors']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
