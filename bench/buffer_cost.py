"""The reference buffer's cost on the scoring path, in-process (issue 7).

Scores 1000-record batches of the service benchmark's 40-field workload with the default
Detector (10 000 references), and after each batch runs ``BufferWriter.write`` against Redis
(DB 12, flushed), timing both. A fresh bucket first fills (every record is serialised and
sent), then the reservoir is full and the writer sends only the records it may keep. Medians
over the batches of each phase, with the default buffer settings (834 records per bucket).

    .venv/bin/python -m bench.buffer_cost --out bench/results/buffer-cost
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import click


@click.command("bench-buffer-cost")
@click.option("--refs", "n_refs", default=10_000, show_default=True, type=int)
@click.option("--batches", default=60, show_default=True, type=int)
@click.option("--batch", "batch_size", default=1000, show_default=True, type=int)
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False, path_type=Path))
def main(n_refs: int, batches: int, batch_size: int, out_dir: Path | None) -> None:
    import redis
    from nearwatch.detector import Detector
    from nearwatch.detector.synthetic import LABEL_FIELD
    from nearwatch.detector.threads import configure_threads
    from nearwatch.worker.reference_buffer import BufferWriter
    from nearwatch.worker.settings import BufferSettings

    from bench.service import _workload

    configure_threads(1)
    train, records = _workload(n_refs, batches * batch_size)
    detector = Detector(label_fields=(LABEL_FIELD,), random_state=0).fit(train)
    client = redis.Redis.from_url("redis://127.0.0.1:6379/12")
    client.flushdb()
    writer = BufferWriter(client, BufferSettings())
    rows: list[dict[str, Any]] = []
    for start in range(0, len(records), batch_size):
        batch = records[start:start + batch_size]
        began = time.perf_counter()
        results = detector.score_records(batch, 3)
        scored = time.perf_counter()
        writer.write(detector, "v0001", batch, results)
        rows.append({"score_s": scored - began, "buffer_s": time.perf_counter() - scored,
                     "seen": writer._seen and next(iter(writer._seen.values()))})
    client.flushdb()
    cap = writer.cap
    phases = {"filling (first batch)": rows[:1],
              f"full bucket (seen > {10 * cap})": [r for r in rows if (r["seen"] or 0) > 10 * cap]}
    table = ["| phase | batches | score µs/record | buffer µs/record | buffer / score |",
             "|---|---:|---:|---:|---:|"]
    summary = {}
    for name, chosen in phases.items():
        if not chosen:
            continue
        score = statistics.median(r["score_s"] for r in chosen) / batch_size * 1e6
        buffer = statistics.median(r["buffer_s"] for r in chosen) / batch_size * 1e6
        summary[name] = {"batches": len(chosen), "score_us": score, "buffer_us": buffer}
        table.append(f"| {name} | {len(chosen)} | {score:.1f} | {buffer:.2f} | "
                     f"{buffer / score:.1%} |")
    text = "\n".join(table)
    click.echo(text)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(
            {"refs": n_refs, "batch": batch_size, "batches": batches, "phases": summary},
            indent=2) + "\n")
        (out_dir / "results.md").write_text(
            "`.venv/bin/python -m bench.buffer_cost --out bench/results/buffer-cost`\n\n"
            + text + "\n")


if __name__ == "__main__":
    main()
