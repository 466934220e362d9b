# ruff: noqa
"""Unseen-category cost (``fields.UNSEEN_CATEGORY_COST``) on the transactions of
``transactions.py`` (AUROC / share flagged per fraud pattern, false-alarm rate on the test
normals, share of 2 000 test normals flagged once their merchant category is one no training
record had) and on synthetic telemetry (AUROC, recall, FPR). Default Detector, seeds 0 and 1.

    python exp.py COST DATA_DIR > cCOST.json
"""
import json, sys, time, numpy as np
from sklearn.metrics import roc_auc_score
import nearwatch.detector.features.fields as fields
from nearwatch import Detector
from nearwatch.detector.synthetic import generate_records
from nearwatch.detector.threads import configure_threads
configure_threads(1)
strip = lambda r: {k: v for k, v in r.items() if k not in ("is_fraud", "pattern")}
tr = [strip(json.loads(l)) for l in open(f"{sys.argv[2]}/train.jsonl")]
te_raw = [json.loads(l) for l in open(f"{sys.argv[2]}/test.jsonl")]
pat = np.array([r["pattern"] for r in te_raw]); te = [strip(r) for r in te_raw]
normal = pat == "normal"
KINDS = ["huge_amount", "foreign_country", "cross_border", "new_category", "odd_hour_online", "rare_combo", "burst_small"]
normals_te = [r for r, p in zip(te, pat) if p == "normal"][:2000]
perturbed = [dict(r, merchant_category="pawn_shop") for r in normals_te]
tel_tr = generate_records(20000, 0.0, seed=1)
tel_te = generate_records(10000, 0.03, seed=2)
tel_y = np.array([r["is_anomaly"] for r in tel_te])
cost = float(sys.argv[1]); encoder = "auto"
fields.UNSEEN_CATEGORY_COST = cost
out = {"cost": cost, "encoder": encoder}
for seed in (0, 1):
    det = Detector(random_state=seed, encoder=encoder).fit(tr)
    s = det.score(te); f = s > det.threshold_
    row = {"fpr": float(f[normal].mean()), "unseen_category_flagged": float(det.predict(perturbed).mean())}
    for k in KINDS + ["ALL"]:
        m = pat == k if k != "ALL" else ~normal
        row[k] = [round(100 * roc_auc_score(np.r_[np.zeros(normal.sum()), np.ones(m.sum())], np.r_[s[normal], s[m]]), 2), round(float(f[m].mean()), 3)]
    det = Detector(random_state=seed, encoder=encoder, label_fields=("is_anomaly",)).fit(tel_tr)
    ts = det.score(tel_te); tf = ts > det.threshold_
    row["telemetry"] = [round(100 * roc_auc_score(tel_y, ts), 3), round(float(tf[tel_y].mean()), 3), round(float(tf[~tel_y].mean()), 4)]
    out[f"seed{seed}"] = row
    print(json.dumps(out), flush=True)
