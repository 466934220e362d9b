"""Scale benchmark: fit time, peak memory, bundle size, serving memory per node, scoring rate.

For each reference-set size, on synthetic 40-field numeric records (``bench.timing``'s
correlated Gaussian mixture; cost depends on the shape of the data, not its meaning):

- **fit**, in a fresh process with ``--threads`` faiss/torch threads: wall time of
  ``Detector.fit`` and the process' peak RSS (``ru_maxrss``, which includes the data);
- **bundle**: bytes per file, and the bundle's total over the index files' total;
- **scoring**: in-process ``Detector.score`` on 20 000 held-out records, one thread;
- **serving memory per node**: a real ``nearwatch worker --concurrency 2`` node serving the
  bundle from a registry; the sum of the proportional set size (PSS, from
  ``/proc/PID/smaps_rollup``) over the node's processes after every pool process has scored
  a batch: pages shared between processes (the memory-mapped bundle, shared libraries) count
  once in the sum, so it is the node's real footprint.

Run (needs Redis at 127.0.0.1:6379; uses DB 12)::

    .venv/bin/python -m bench.scale --refs 100000 --refs 1000000 --out bench/results/scale
"""

from __future__ import annotations

import json
import multiprocessing
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from bench.service_node import _worker_node
from bench.timing import synthetic_normals

N_TEST = 20_000


def _fit_in_child(n_refs: int, n_fields: int, threads: int, index: str, out: str,
                  queue: Any) -> None:
    from nearwatch.detector import Detector
    from nearwatch.detector.threads import configure_threads

    configure_threads(threads)
    data = synthetic_normals(n_refs + N_TEST, n_fields, seed=0)
    train, test = data[:n_refs], data[n_refs:]
    started = time.perf_counter()
    detector = Detector(random_state=0, index=index).fit(train)
    fit_s = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    detector.save(out)
    configure_threads(1)
    detector.score(test[:1000])  # warm
    started = time.perf_counter()
    detector.score(test)
    score_s = time.perf_counter() - started
    queue.put({
        "fit_s": round(fit_s, 1), "peak_rss_mb_fit": round(peak_mb),
        "data_mb": round(train.nbytes / 2**20),
        "index_parts": detector.reference_index_.kinds_,
        "calibration_index": detector.calibration_index_,
        "n_distinct": detector.n_unique_reference_,
        "score_records_per_s_1_thread": round(N_TEST / score_s),
    })


def _pss_mb(pids: list[int]) -> float:
    total_kb = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kb += int(line.split()[1])
        except OSError:
            pass
    return total_kb / 1024


def _serving_memory(bundle: Path, work: Path, n_fields: int) -> dict[str, Any]:
    from nearwatch.detector.store.registry import ModelRegistry
    from nearwatch.worker.client import ClientOptions, ScoringClient

    registry = ModelRegistry(work / "registry")
    registry.add(bundle, promote=True)
    records = [{f"f{j}": float(v) for j, v in enumerate(row)}
               for row in synthetic_normals(4_000, n_fields, seed=1)]
    node = _worker_node(registry.root, 2, work)
    with node as app:
        client = ScoringClient(app, ClientOptions(batch_size=200, batch_timeout=300))
        answered = sum(1 for _ in client.score(records))  # every pool process serves batches
        time.sleep(1.0)
        processes = node.pids()  # the node's parent and its pool processes
        return {"node_pss_mb": round(_pss_mb(processes)), "node_processes": len(processes),
                "answered": answered}


def _bundle_sizes(bundle: Path) -> dict[str, Any]:
    sizes = {path.name: path.stat().st_size for path in sorted(bundle.iterdir())}
    index_bytes = sum(size for name, size in sizes.items() if name.endswith(".faiss"))
    total = sum(sizes.values())
    return {"bundle_mb": round(total / 2**20, 1), "index_mb": round(index_bytes / 2**20, 1),
            "bundle_over_index": round(total / index_bytes, 2),
            "files_mb": {name: round(size / 2**20, 2) for name, size in sizes.items()}}


def run_size(n_refs: int, n_fields: int, threads: int, index: str, work: Path
             ) -> dict[str, Any]:
    bundle = work / f"model-{n_refs}-{index}"
    context = multiprocessing.get_context("spawn")  # a fresh process: honest peak RSS
    queue = context.Queue()
    child = context.Process(target=_fit_in_child,
                            args=(n_refs, n_fields, threads, index, str(bundle), queue))
    child.start()
    result = queue.get()
    child.join()
    result.update(refs=n_refs, fields=n_fields, index=index, threads=threads)
    result.update(_bundle_sizes(bundle))
    result.update(_serving_memory(bundle, work, n_fields))
    return result


@click.command("bench-scale")
@click.option("--refs", "ref_sizes", multiple=True, type=int, default=(100_000, 1_000_000),
              show_default=True)
@click.option("--fields", "n_fields", default=40, show_default=True, type=int)
@click.option("--threads", default=2, show_default=True, type=int,
              help="faiss/torch threads while fitting (scoring is measured on one).")
@click.option("--index", "indexes", multiple=True, default=("auto",), show_default=True,
              type=click.Choice(["auto", "flat", "hnsw", "ivf"]))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
def main(ref_sizes: tuple[int, ...], n_fields: int, threads: int, indexes: tuple[str, ...],
         out: Path) -> None:
    """Measure fit, memory, bundle size and scoring rate against the reference-set size."""
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="nearwatch-scale-"))
    rows = []
    try:
        for n_refs in ref_sizes:
            for index in indexes:
                row = run_size(n_refs, n_fields, threads, index, work)
                click.echo(json.dumps(row))
                rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"environment": {"python": platform.python_version(),
                              "cpus": multiprocessing.cpu_count()}, "runs": rows}
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    table = _table(rows)
    (out / "results.md").write_text("# nearwatch scale benchmark\n\n" + table)
    click.echo(table)


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| references | index parts | fit s | peak RSS in fit (MB) | data (MB) "
             "| node PSS serving, 2 pool processes (MB) | bundle MB | index MB "
             "| bundle / index | records/s (1 thread) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['refs']:,} | {'+'.join(r['index_parts'])} | {r['fit_s']} "
            f"| {r['peak_rss_mb_fit']} | {r['data_mb']} | {r['node_pss_mb']} "
            f"| {r['bundle_mb']} | {r['index_mb']} | {r['bundle_over_index']} "
            f"| {r['score_records_per_s_1_thread']:,} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
