"""Service benchmark: end-to-end throughput and latency next to in-process scoring.

For each reference-set size: train a detector on 40-field synthetic records, then measure,
``--repeat`` times in the same run (the table shows the median of each figure),

- in-process ``Detector.score`` (1 process, and 2 forked processes: the same core count as
  the worker pool), records already parsed;
- end to end: a JSONL file → ``worker.stream`` (read, batch, submit) → Redis broker →
  ``nearwatch worker --concurrency 2`` → answers → results written as JSON lines (to a null
  sink): records/s and the round-trip latency of a batch, for each ``--path``:
  ``prefork`` (the default node: Celery's prefork pool, answers on the client's Redis list),
  ``processes`` (``nearwatch worker --pool processes``: solo-pool scoring processes under a
  supervisor, answer lists) and ``prefork-backend`` (the path before: prefork pool, answers
  through the Redis result backend);
- single-record latency: one record per task, one task at a time (p50/p99).

Run (needs Redis at 127.0.0.1:6379; uses DB 12)::

    .venv/bin/python -m bench.service --refs 10000 --refs 100000 --records 40000 \\
        --repeat 3 --out bench/results/service

Training and live records come from one generator run (live: 2% anomalies): records of
another seed would be out of distribution for the model (see ``_workload``).

The CPU columns (client + worker node + Redis, from /proc and Redis INFO) make runs on a
shared machine comparable: "e2e CPU capacity" is what the pipeline sustains on this many
cores with nothing else running.
"""

from __future__ import annotations

import json
import multiprocessing
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

from bench.service_node import _cpu_seconds, _worker_node

# Service paths (--path): the default (prefork pool, answers on the producer's Redis list),
# scoring processes with answer lists, and the path before issue 12 (prefork, result backend).
PATHS = ("prefork", "processes", "prefork-backend")
N_EXTRA_FIELDS = 28  # + 12 telemetry fields = 40 fields per record (plus id and label)
NOTES = """In-process: `Detector.score` on parsed records, batches of `--batch`. End-to-end: JSONL
file -> `worker.stream` -> Redis -> `nearwatch worker` -> answers -> JSON lines; path
`prefork`: Celery's prefork pool, answers pushed to the client's Redis list; `processes`: N
solo-pool scoring processes under one supervisor, answer lists; `prefork-backend`: prefork
pool, answers through the Redis result backend (the path before issue 12).
The stream path sends records as JSON texts (`nearwatch.score_json_batch`):
the workers parse and serialise, the producer does neither. Batch p50/p99: submit -> answer of a
batch while `--in-flight` batches queue. Single: one record per task, one task at a time.
CPU µs/rec: CPU time of each part divided by records; capacity = cores / total. Every
figure is the median over `--repeat` runs; live records are in distribution (one generator
run with the training records, 2% anomalies)."""


@click.command("bench-service")
@click.option("--refs", "ref_sizes", multiple=True, type=int, default=(10_000, 100_000),
              show_default=True, help="Reference-set sizes (repeatable).")
@click.option("--records", "n_records", default=60_000, show_default=True, type=int)
@click.option("--batch", "batch_size", default=1000, show_default=True, type=int)
@click.option("--in-flight", "max_in_flight", default=6, show_default=True, type=int)
@click.option("--concurrency", default=2, show_default=True, type=int)
@click.option("--latency-samples", default=400, show_default=True, type=int)
@click.option("--repeat", default=3, show_default=True, type=int,
              help="Runs per size; the table shows the median of each figure.")
@click.option("--alerts/--no-alerts", default=True, show_default=True,
              help="Workers write alert events for flagged records (NEARWATCH_ALERTS).")
@click.option("--buffer/--no-buffer", default=True, show_default=True,
              help="Workers add scored records to the reference buffer (NEARWATCH_BUFFER).")
@click.option("--path", "paths", multiple=True, type=click.Choice(PATHS),
              default=(PATHS[0],), show_default=True,
              help="Service paths to measure (repeatable), each with its own node.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False, path_type=Path))
def main(ref_sizes: tuple[int, ...], n_records: int, batch_size: int, max_in_flight: int,
         concurrency: int, latency_samples: int, repeat: int, alerts: bool, buffer: bool,
         paths: tuple[str, ...], out_dir: Path | None) -> None:
    """Measure the scoring service end to end (see the module docstring)."""
    from nearwatch.detector.threads import configure_threads

    configure_threads(1)
    rows = []
    for n_refs in ref_sizes:
        rows += _bench_one(n_refs, n_records, batch_size, max_in_flight, concurrency,
                           latency_samples, max(1, repeat), alerts, buffer, paths)
        click.echo(_table(rows[-len(paths):]), err=True)
    report = {
        "command": " ".join(["python -m bench.service", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_at_end": os.getloadavg()},
        "settings": {"records": n_records, "batch": batch_size, "in_flight": max_in_flight,
                     "concurrency": concurrency, "fields": 40, "repeat": repeat,
                     "alerts": alerts, "buffer": buffer, "paths": list(paths)},
        "results": rows,
    }
    click.echo(_table(rows))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        (out_dir / "results.md").write_text(
            f"`{report['command']}`\n\n{_table(rows)}\n\nload average at end: "
            f"{report['machine']['load_average_at_end']}\n\n{NOTES}\n")


def _bench_one(n_refs: int, n_records: int, batch_size: int, max_in_flight: int,
               concurrency: int, latency_samples: int, repeat: int, alerts: bool = True,
               buffer: bool = True, paths: tuple[str, ...] = (PATHS[0],)
               ) -> list[dict[str, Any]]:
    from nearwatch.detector import Detector
    from nearwatch.detector.store.registry import ModelRegistry
    from nearwatch.detector.synthetic import LABEL_FIELD

    work = Path(tempfile.mkdtemp(prefix="nearwatch-bench-"))
    try:
        train, records = _workload(n_refs, n_records)
        for record in records:
            record.pop(LABEL_FIELD)
        started = time.perf_counter()
        detector = Detector(label_fields=(LABEL_FIELD,), random_state=0).fit(train)
        fit_s = time.perf_counter() - started
        del train
        detector.save(work / "bundle")
        registry = ModelRegistry(work / "models")
        registry.add(work / "bundle", promote=True)
        data = work / "records.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in records))
        rows = []
        for path in paths:  # one node at a time: they would share the queue
            runs = []
            node = _worker_node(registry.root, concurrency, work,
                                extra_env={"NEARWATCH_ALERTS": "1" if alerts else "0",
                                           "NEARWATCH_BUFFER": "1" if buffer else "0"},
                                pool="processes" if path == "processes" else "prefork")
            with node as app:  # idle while the in-process rates are measured
                for _ in range(repeat):
                    runs.append(_measure(detector, records, data, node, app, batch_size,
                                         max_in_flight, concurrency, latency_samples,
                                         answer_list=path != "prefork-backend"))
            # Each figure is the median over the runs (each run measures everything once).
            row = {key: _median([run[key] for run in runs]) for key in runs[0]}
            row["e2e_unanswered"] = max(run["e2e_unanswered"] for run in runs)
            rows.append({
                "refs": n_refs, "path": path, "index": detector.reference_index_.kind_,
                "ef_search": detector.reference_index_.parts_[0].ef_search,
                "embedder": type(detector.embedder_).__name__, "fit_s": round(fit_s, 1),
                "runs": repeat, "e2e_rps_runs": [run["e2e_rps"] for run in runs], **row,
            })
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _measure(detector: Any, records: list[dict[str, Any]], data: Path, node: Any, app: Any,
             batch_size: int, max_in_flight: int, concurrency: int, latency_samples: int,
             answer_list: bool = True) -> dict[str, Any]:
    """One run: in-process rates and CPU, then end to end and single-record latency."""
    n_records = len(records)
    in_1 = _in_process_rate(detector, records, batch_size, processes=1)
    in_2 = _in_process_rate(detector, records, batch_size, processes=concurrency)
    in_cpu = _in_process_cpu_us(detector, records, batch_size)
    cpu_before = _cpu_seconds(node)
    e2e = _end_to_end(app, data, batch_size, max_in_flight, answer_list)
    cpu = {k: v - cpu_before[k] for k, v in _cpu_seconds(node).items()}
    single = _single_record_latency(app, records[:latency_samples], answer_list)
    figures = cpu_and_rate_figures(n_records, cpu, in_cpu, e2e["e2e_rps"], in_1, in_2)
    total_us = figures["cpu_us_per_record_e2e_total"]
    return {
        **e2e, **single, **figures,
        # what the pipeline would sustain on this machine's cores with nothing else running
        "e2e_cpu_capacity_rps": round((os.cpu_count() or 1) * 1e6 / total_us),
    }


def cpu_and_rate_figures(n_records: int, cpu: dict[str, float], in_process_cpu_us: float,
                         e2e_rps: float, in_1: float, in_2: float) -> dict[str, Any]:
    """The figures every service benchmark reports: in-process rates, CPU µs per record of
    each part (client, worker node, Redis) and in all, and end to end / in-process."""
    return {
        "in_process_1proc_rps": round(in_1), "in_process_2proc_rps": round(in_2),
        **{f"cpu_us_per_record_{k}": round(v / n_records * 1e6, 1) for k, v in cpu.items()},
        "cpu_us_per_record_e2e_total": round(sum(cpu.values()) / n_records * 1e6, 1),
        "cpu_us_per_record_in_process": round(in_process_cpu_us, 1),
        "e2e_vs_in_process_1proc": round(e2e_rps / in_1, 3),
        "e2e_vs_in_process_2proc": round(e2e_rps / in_2, 3),
    }


def _median(values: list[Any]) -> Any:
    return sorted(values)[(len(values) - 1) // 2]  # lower median: a value actually measured


def _workload(n_refs: int, n_records: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``n_refs`` normal training records and ``n_records`` live records (2% anomalies,
    still labelled in ``LABEL_FIELD``).

    Both come from ONE generator run: the extra fields' weights are drawn per seed, so
    records of another seed are out of distribution (nearly all flagged), which is not the
    workload a monitor sees and makes HNSW look faster than it is on normal queries.
    """
    from nearwatch.detector.synthetic import LABEL_FIELD, generate_records

    pool = generate_records(int(n_refs * 1.05) + n_records, anomaly_rate=0.02, seed=1,
                            n_extra_fields=N_EXTRA_FIELDS)
    records = pool[-n_records:]
    train = [r for r in pool[:-n_records] if not r[LABEL_FIELD]][:n_refs]
    if len(train) != n_refs:
        raise RuntimeError(f"only {len(train)} normal training records for {n_refs}")
    return train, records


def _in_process_rate(detector: Any, records: Any, batch_size: int,
                     processes: int) -> float:
    """Records/s of ``Detector.score`` over parsed records, in ``processes`` processes."""
    if processes == 1:
        detector.score(records[:batch_size])  # warm up
        started = time.perf_counter()
        for i in range(0, len(records), batch_size):
            detector.score(records[i:i + batch_size])
        return len(records) / (time.perf_counter() - started)
    # Forked workers inherit the detector and the records (nothing is pickled per call).
    share = len(records) // processes
    _POOL_STATE.update(detector=detector, batch_size=batch_size, records=records, share=share)
    context = multiprocessing.get_context("fork")
    with context.Pool(processes) as pool:
        pool.map(_score_share, [-1] * processes)  # warm up every process
        started = time.perf_counter()
        pool.map(_score_share, range(processes))
        return share * processes / (time.perf_counter() - started)


_POOL_STATE: dict[str, Any] = {}


def _score_share(part: int) -> None:
    state = _POOL_STATE
    size, share = state["batch_size"], state["share"]
    records = state["records"][:size] if part < 0 else \
        state["records"][part * share:(part + 1) * share]
    for i in range(0, len(records), size):
        state["detector"].score(records[i:i + size])


def _in_process_cpu_us(detector: Any, records: Any, batch_size: int) -> float:
    started = time.process_time()
    for i in range(0, len(records), batch_size):
        detector.score(records[i:i + batch_size])
    return (time.process_time() - started) / len(records) * 1e6


class _NullSink:
    def write(self, text: str) -> int:
        return len(text)


def _end_to_end(app: Any, data: Path, batch_size: int, max_in_flight: int,
                answer_list: bool = True) -> dict[str, Any]:
    from nearwatch.worker.client import ClientOptions, ScoringClient
    from nearwatch.worker.stream import read_input, stream_records

    client = ScoringClient(app, ClientOptions(batch_size=batch_size, answer_list=answer_list,
                                              max_in_flight=max_in_flight))
    summary = stream_records(client, read_input(str(data)), _NullSink())  # type: ignore[arg-type]
    latencies = np.array(client.stats.latencies) * 1000
    return {"e2e_rps": round(summary.throughput), "e2e_records": summary.records,
            "e2e_unanswered": summary.unanswered,
            "batch_latency_p50_ms": round(float(np.percentile(latencies, 50)), 1),
            "batch_latency_p99_ms": round(float(np.percentile(latencies, 99)), 1)}


def _single_record_latency(app: Any, records: list[dict[str, Any]], answer_list: bool = True
                           ) -> dict[str, Any]:
    from nearwatch.worker.client import ClientOptions, ScoringClient

    client = ScoringClient(app, ClientOptions(batch_size=1, max_in_flight=1,
                                              answer_list=answer_list))
    for results in client.score_batches([[r] for r in records[:20]]):  # warm up
        assert len(results) == 1
    client.stats.latencies.clear()
    for results in client.score_batches([[r] for r in records]):
        assert len(results) == 1
    latencies = np.array(client.stats.latencies) * 1000
    return {"single_p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "single_p99_ms": round(float(np.percentile(latencies, 99)), 2)}


def _index_label(row: dict[str, Any]) -> str:
    return f"hnsw, efSearch {row['ef_search']}" if row["index"] == "hnsw" else row["index"]


def _table(rows: list[dict[str, Any]]) -> str:
    header = ("| refs | path | index | in-process 1 proc | in-process 2 proc | end-to-end | "
              "e2e / 1 proc | e2e / 2 proc | batch p50 / p99 | single p50 / p99 | "
              "CPU µs/rec in-process / e2e (client+node+redis) | e2e CPU capacity |")
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for r in rows:
        lines.append(
            f"| {r['refs']:,} | {r.get('path', 'prefork-backend')} | {_index_label(r)} | "
            f"{r['in_process_1proc_rps']:,} rec/s | "
            f"{r['in_process_2proc_rps']:,} rec/s | {r['e2e_rps']:,} rec/s | "
            f"{r['e2e_vs_in_process_1proc']:.0%} | {r['e2e_vs_in_process_2proc']:.0%} | "
            f"{r['batch_latency_p50_ms']} / {r['batch_latency_p99_ms']} ms | "
            f"{r['single_p50_ms']} / {r['single_p99_ms']} ms | "
            f"{r['cpu_us_per_record_in_process']} / {r['cpu_us_per_record_e2e_total']} "
            f"({r['cpu_us_per_record_client']}+{r['cpu_us_per_record_worker_node']}+"
            f"{r['cpu_us_per_record_redis']}) | {r['e2e_cpu_capacity_rps']:,} rec/s |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
