# ruff: noqa
"""Identity vs learned encoder on the transactions (after the unseen-category cost): AUROC over all frauds, recall and FPR at the certified threshold.

    python encoders.py DATA_DIR > encoders.txt
"""
import json, sys, numpy as np
from sklearn.metrics import roc_auc_score
from nearwatch import Detector
from nearwatch.detector.threads import configure_threads
configure_threads(1)
strip = lambda r: {k: v for k, v in r.items() if k not in ("is_fraud", "pattern")}
tr = [strip(json.loads(l)) for l in open(f"{sys.argv[1]}/train.jsonl")]
te_raw = [json.loads(l) for l in open(f"{sys.argv[1]}/test.jsonl")]
pat = np.array([r["pattern"] for r in te_raw]); te = [strip(r) for r in te_raw]
normal = pat == "normal"
for enc in ("identity", "auto"):
    for seed in (0, 1):
        det = Detector(random_state=seed, encoder=enc).fit(tr)
        s = det.score(te); f = s > det.threshold_
        print(enc, seed, round(100 * roc_auc_score(~normal, s), 2), "recall", round(float(f[~normal].mean()), 3), "fpr", round(float(f[normal].mean()), 4), flush=True)
