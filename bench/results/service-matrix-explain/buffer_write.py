"""Steady-state cost of ``BufferWriter.write`` (the reference buffer's write per batch).

Run from the repository root (Redis at 127.0.0.1:6379; uses and flushes database 15):
    .venv/bin/python bench/results/service-matrix-explain/buffer_write.py
60 batches of 1000 scored records into one bucket of the default buffer (834 records): the
first batches fill it, the rest are the steady state (nearly every record is rejected by the
reservoir). Median ms per batch over batches 10-59. Exploration script, not part of
`nearwatch bench`; it calls only ``BufferWriter.write``, so it runs on older commits too.

Measured 2026-12-01 (2 shared cores), same script: 3.09 ms at 4bbbf8d^ (a Python loop per
row), 2.39 ms at 4bbbf8d (the batch's entries decided at once).
"""

from __future__ import annotations

import random
import time

import numpy as np
import redis
from nearwatch.detector import Detector
from nearwatch.worker.reference_buffer import BufferWriter
from nearwatch.worker.settings_sections import BufferSettings


def main() -> None:
    rng = np.random.default_rng(0)
    detector = Detector(encoder="identity", random_state=0).fit(rng.normal(size=(3000, 4)))
    client = redis.Redis(db=15)
    client.flushdb()
    writer = BufferWriter(client, BufferSettings(), rng=random.Random(0))
    records = [{"id": f"r{i}", "f0": 1.0, "f1": 2.0, "f2": 3.0, "f3": 4.0} for i in range(1000)]
    results = [{"id": f"r{i}", "score": 1.0, "p_value": float(p), "is_anomaly": False}
               for i, p in enumerate(rng.random(1000))]
    times = []
    for _ in range(60):
        started = time.perf_counter()
        writer.write(detector, "v1", records, results, now=1_000_000.0)
        times.append((time.perf_counter() - started) * 1e3)
    print(f"first batches {[round(t, 2) for t in times[:3]]} ms; "
          f"steady state median {np.median(times[10:]):.2f} ms per 1000 records")
    client.flushdb()


if __name__ == "__main__":
    main()
