"""``nearwatch bench``: the one-class quality benchmark (see ``bench.protocol``).

Runs the real ``Detector`` and, on the same splits, raw-feature kNN and IsolationForest;
writes ``report.json``, ``report.md`` and plots to ``--out`` and prints the table.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import click
from nearwatch.detector.threads import configure_threads
from tqdm.auto import tqdm


@click.command("bench")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True, help="Folder of .npz files with X (features) and y (1 = anomaly).")
@click.option("--seeds", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--labelled-anomalies", "labelled", type=click.IntRange(min=0), default=0,
              show_default=True, help="Known anomalies given to fit (and removed from the test).")
@click.option("--alpha", type=float, default=0.01, show_default=True)
@click.option("--delta", type=float, default=0.05, show_default=True)
@click.option("--encoder", type=click.Choice(["auto", "identity", "metric"]), default="auto",
              show_default=True, help="Detector encoder (identity = ablation without learning).")
@click.option("--index", type=click.Choice(["auto", "flat", "hnsw", "ivf"]), default="auto",
              show_default=True, help="Detector index (ivf = the compressed one, forced).")
@click.option("--datasets", default="", help="Comma-separated dataset names (default: all).")
@click.option("--timing/--no-timing", default=False, show_default=True,
              help="Also time training on a 100k x 40-field set.")
@click.option("--exact/--no-exact", default=False, show_default=True,
              help="Also run the Detector with an exact (flat) index on the same splits.")
@click.option("--peers", default="", help="Comma-separated PyOD peers on the same splits "
              "(knn,lof,iforest,ecod,copod,autoencoder; needs `pip install pyod`).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
def bench_command(
    data_dir: Path,
    seeds: int,
    labelled: int,
    alpha: float,
    delta: float,
    encoder: str,
    index: str,
    datasets: str,
    timing: bool,
    exact: bool,
    peers: str,
    threads: int,
    out: Path,
) -> None:
    """Run the one-class quality benchmark on every .npz in DATA_DIR."""
    # Imported here: scikit-learn and matplotlib are bench-only extras, and the CLI must start
    # (fast) without them.
    import numpy as np
    import torch
    from nearwatch.detector import Detector

    from bench.protocol import evaluate_baselines, evaluate_detector, load_dataset, split
    from bench.report import overall, summarise_dataset, write_report

    configure_threads(threads)  # torch's pool too
    peer_names = [name for name in peers.split(",") if name]
    if peer_names:
        from bench.peers import PEERS, evaluate_peers

        unknown = sorted(set(peer_names) - set(PEERS))
        if unknown:
            raise click.BadParameter(f"unknown peers {unknown}: choose from {PEERS}")
    wanted = {name for name in datasets.split(",") if name}
    paths = [p for p in sorted(data_dir.glob("*.npz")) if not wanted or p.stem in wanted]
    if not paths:
        raise click.ClickException(f"no matching .npz files in {data_dir}")
    # One tiny fit first: torch's lazy start-up (allocator, kernels) would otherwise be counted
    # in the first dataset's time and peak memory only.
    warm_up = np.random.default_rng(0).normal(size=(64, 2))
    Detector(alpha=None, random_state=0).fit(warm_up).score(warm_up)
    started = time.perf_counter()
    per_dataset: dict[str, dict[str, Any]] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    with tqdm(total=len(paths) * seeds, desc="bench", unit="run") as progress:
        for path in paths:
            x, y = load_dataset(path)
            runs[path.stem] = []
            for seed in range(seeds):
                progress.set_postfix(dataset=path.stem, seed=seed)
                s = split(x, y, seed, labelled)
                result = {"seed": seed, "nearwatch": evaluate_detector(
                    s, seed, alpha, delta, {"encoder": encoder, "index": index})}
                if exact:
                    result["nearwatch_exact"] = evaluate_detector(
                        s, seed, alpha, delta, {"encoder": encoder, "index": "flat"})
                result.update(evaluate_baselines(s, seed))
                if peer_names:
                    result.update(evaluate_peers(s.train, s.test, s.test_is_anomaly,
                                                 peer_names, seed))
                runs[path.stem].append(result)
                progress.update()
            per_dataset[path.stem] = summarise_dataset(runs[path.stem], alpha)
    report: dict[str, Any] = {
        "config": {
            "data_dir": str(data_dir), "seeds": seeds, "labelled_anomalies": labelled,
            "alpha": alpha, "delta": delta, "encoder": encoder, "index": index, "threads": threads,
            "exact": exact, "peers": peer_names,
            "protocol": "train on a random 50% of normals; test on the other 50% + anomalies",
        },
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "machine": platform.machine(), "processor": platform.processor()},
        "datasets": per_dataset,
        "overall": overall(per_dataset, alpha),
        "runs": runs,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    if timing:
        from bench.timing import measure_training_time

        report["timing"] = measure_training_time()
    table = write_report(report, out)
    click.echo(table)
    if timing:
        click.echo(f"timing: {report['timing']}")
    click.echo(f"wrote {out}/report.json, report.md, auroc.png, calibration.png")
