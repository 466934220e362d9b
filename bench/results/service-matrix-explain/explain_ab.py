"""A/B in one process: alert explanations by a second ``explain`` vs from the scoring search.

Run: .venv/bin/python bench/results/service-matrix-explain/explain_ab.py 10000  (and 100000)
40 numeric telemetry fields (as ``bench/service_matrix.py``), 40k live records in batches of
1000, each batch scored by ``score_matrix`` and turned into alert events (``build_events``,
explain_max 50): "old" explains the flagged rows again (``Detector.explain`` on their
records), "new" takes the fields from the scoring search (4bbbf8d). CPU µs per record,
medians of 5 alternating runs. Exploration script, not part of `nearwatch bench`.

Measured 2026-12-01 (2 shared cores): 10k references old 46.57, new 44.13 (paired median
saving 2.20); 100k old 219.97, new 199.39 (saving 19.06).
"""

from __future__ import annotations

import sys
import time

import numpy as np
from nearwatch.detector import Detector
from nearwatch.detector.matrix_scoring import field_names, score_matrix
from nearwatch.detector.synthetic import telemetry_matrix
from nearwatch.detector.threads import configure_threads
from nearwatch.worker.alerts import build_events
from nearwatch.worker.matrix import RowRecords, decode_matrix, encode_matrix

N_RECORDS = 40_000


def main(n_refs: int) -> None:
    configure_threads(1)
    matrix, fields, labels = telemetry_matrix(int(n_refs * 1.05) + N_RECORDS, 0.02, seed=1,
                                              n_extra_fields=34)
    train = matrix[:-N_RECORDS][~labels[:-N_RECORDS]][:n_refs]
    detector = Detector(random_state=0).fit(
        [dict(zip(fields, row, strict=True)) for row in train.tolist()])
    names = field_names(detector)
    live = np.ascontiguousarray(matrix[-N_RECORDS:][:, [fields.index(n) for n in names]])
    batches = [decode_matrix(encode_matrix(live[i:i + 1000], names), names)
               for i in range(0, N_RECORDS, 1000)]

    def run(new: bool) -> float:
        started = time.process_time()
        for batch in batches:
            scored = score_matrix(detector, batch.matrix, explain=50 if new else 0)
            records = RowRecords(batch, names, detector.id_field)
            results = [{"id": i, "is_anomaly": flag, "score": 1.0}
                       for i, flag in enumerate(scored.is_anomaly.tolist())]
            build_events(detector, "v1", records, results, 50,  # type: ignore[arg-type]
                         explanations=scored.fields if new else None)
        return (time.process_time() - started) / N_RECORDS * 1e6

    old, new = [], []
    for _ in range(5):
        old.append(run(False))
        new.append(run(True))
    saved = np.median(np.array(old) - np.array(new))
    print(f"refs {n_refs}: old {np.median(old):.2f} new {np.median(new):.2f} us/record; "
          f"saved {saved:.2f} (paired median)")


if __name__ == "__main__":
    main(int(sys.argv[1]))
