"""Latency at a steady input rate (issue 11, item 9): a live monitor's view of the service.

Records arrive at a fixed rate (100, 1 000, 10 000 records/s by default) through the Python
client with its default linger and batch size, into a 2-process ``nearwatch worker`` node;
each record's latency is the time from its arrival to its answer (answers come in input
order, so a record also waits for the ones before it). Reports p50/p99 per rate and the rate
achieved; a rate the node cannot sustain shows as achieved < offered and a growing p99.

    .venv/bin/python -m bench.latency --out bench/results/latency
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from bench.service_node import _worker_node


@click.command("bench-latency")
@click.option("--rates", default="100,1000,10000", show_default=True,
              help="Offered rates, records/s (comma-separated).")
@click.option("--seconds", default=10.0, show_default=True, help="Duration per rate.")
@click.option("--refs", "n_refs", default=10_000, show_default=True, type=int)
@click.option("--concurrency", default=2, show_default=True, type=int)
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False, path_type=Path))
def main(rates: str, seconds: float, n_refs: int, concurrency: int,
         out_dir: Path | None) -> None:
    from nearwatch.detector import Detector
    from nearwatch.detector.store.registry import ModelRegistry
    from nearwatch.detector.synthetic import LABEL_FIELD
    from nearwatch.detector.threads import configure_threads
    from nearwatch.worker.client import ClientOptions, ScoringClient

    from bench.service import _workload

    configure_threads(1)
    offered = [int(rate) for rate in rates.split(",")]
    n_live = int(max(offered) * seconds)
    train, records = _workload(n_refs, n_live)
    for record in records:
        record.pop(LABEL_FIELD)
    work = Path(tempfile.mkdtemp(prefix="nearwatch-latency-"))
    rows = []
    try:
        Detector(label_fields=(LABEL_FIELD,), random_state=0).fit(train).save(work / "bundle")
        registry = ModelRegistry(work / "models")
        registry.add(work / "bundle", promote=True)
        with _worker_node(registry.root, concurrency, work) as app:
            options = ClientOptions()  # the defaults a producer gets: batch, linger, in flight
            for rate in offered:
                client = ScoringClient(app, options)
                rows.append(_at_rate(client, records[:int(rate * seconds)], rate))
                click.echo(_table(rows[-1:]), err=True)
        settings = {"refs": n_refs, "concurrency": concurrency, "seconds": seconds,
                    "batch_size": options.batch_size, "linger_s": options.linger,
                    "max_in_flight": options.max_in_flight}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    click.echo(_table(rows))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        report = {"command": "python -m bench.latency " + " ".join(
            f"--{k} {v}" for k, v in (("rates", rates), ("seconds", seconds))),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_average_at_end": os.getloadavg()},
            "settings": settings, "results": rows}
        (out_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        (out_dir / "results.md").write_text(f"`{report['command']}`\n\n{_table(rows)}\n\n"
                                            f"settings: {settings}\n")


def _at_rate(client: Any, records: list[dict[str, Any]], rate: int) -> dict[str, Any]:
    arrived = [0.0] * len(records)
    latencies: list[float] = []
    ready = threading.Event()

    def source() -> Any:
        ready.set()
        start = time.perf_counter()
        for i, record in enumerate(records):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            arrived[i] = time.perf_counter()
            yield record

    began = time.perf_counter()
    for i, _ in enumerate(client.score(source())):
        latencies.append(time.perf_counter() - arrived[i])
    elapsed = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    return {"offered_per_s": rate, "records": len(records),
            "achieved_per_s": round(len(records) / elapsed, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "max_ms": round(float(ms.max()), 2)}


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| offered rec/s | achieved rec/s | p50 ms | p99 ms | max ms |",
             "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['offered_per_s']:,} | {r['achieved_per_s']:,} | {r['p50_ms']} | "
              f"{r['p99_ms']} | {r['max_ms']} |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
