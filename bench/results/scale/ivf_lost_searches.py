"""Does the compressed IVF index (nprobe 8) lose searches on telemetry, as HNSW did?

Run: .venv/bin/python bench/results/scale/ivf_lost_searches.py 100000 50000
(100k telemetry references, the IVF index forced from 50k; 20k test records, 2 % anomalies;
output in ivf_lost_searches.txt). Exploration script, not part of `nearwatch bench`.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from nearwatch.detector import Detector
from nearwatch.detector.synthetic import LABEL_FIELD, generate_records
from nearwatch.detector.threads import configure_threads
from sklearn.metrics import roc_auc_score


def main(n_refs: int, compress_min: int) -> None:
    configure_threads(1)
    train = generate_records(n_refs, anomaly_rate=0.0, seed=5)
    started = time.perf_counter()
    detector = Detector(random_state=0, label_fields=(LABEL_FIELD,), compress_min=compress_min)
    detector.fit(train)
    print("fit", round(time.perf_counter() - started), "s kinds",
          detector.reference_index_.kinds_, "n_unique", detector.n_unique_reference_)
    test = generate_records(20000, anomaly_rate=0.02, seed=6)
    y = np.array([bool(r[LABEL_FIELD]) for r in test])
    part0 = detector.reference_index_.parts_[0]
    index = part0._index
    print("part0", part0.kind_, "nlist", index.nlist, "nprobe", index.nprobe)
    scores = {}
    for nprobe in (8, 32, index.nlist):
        index.nprobe = nprobe
        started = time.perf_counter()
        s = detector.score(test)
        per_record = (time.perf_counter() - started) / len(test) * 1e6
        scores[nprobe] = s
        fpr = (s[~y] > detector.threshold_).mean()
        recall = (s[y] > detector.threshold_).mean()
        print(f"nprobe {nprobe}: AUROC {100 * roc_auc_score(y, s):.2f} FPR@thr {fpr:.4f} "
              f"recall@thr {recall:.3f} {per_record:.0f} us/rec")
    every_list = scores[index.nlist]
    for nprobe in (8, 32):
        lost = scores[nprobe] > every_list * 1.05
        print(f"nprobe {nprobe}: normals whose score is >5% above all-lists: "
              f"{lost[~y].mean():.4f}; anomalies {lost[y].mean():.4f}")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
