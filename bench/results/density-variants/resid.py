# ruff: noqa
# Experiment (issue 10): kNN on z-scored features plus damped regression residuals of each feature on the others.
from __future__ import annotations
import sys, json
from pathlib import Path
import numpy as np, faiss
from sklearn.metrics import roc_auc_score
faiss.omp_set_num_threads(1)
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/tmp/exp")
from bench.protocol import load_dataset, split
from variants import knn, zs
DATA = Path("/work/shared/data/adbench")
rows = {}
for seed in (0, 1):
    for p in sorted(DATA.glob("*.npz")):
        x, y = load_dataset(p); s = split(x, y, seed)
        z_tr, z_te = zs(s.train.astype(np.float64), s.test.astype(np.float64))
        out = {}
        d, _ = knn(z_tr, z_te, 5); out["raw"] = d[:, -1]
        C = np.cov(z_tr, rowvar=False); dim = C.shape[0]
        for lam in (0.1,):
            P = np.linalg.inv(C + lam * np.eye(dim)); pd = np.diag(P)
            for floor in (0.3, 0.5):
                scale = 1.0 / (pd * np.maximum(1.0 / np.sqrt(pd), floor))
                r_tr, r_te = (z_tr @ P) * scale, (z_te @ P) * scale
                for w in (0.5, 1.0):
                    d, _ = knn(np.hstack([z_tr, w * r_tr]), np.hstack([z_te, w * r_te]), 5)
                    out[f"l{lam}_f{floor}_w{w}"] = d[:, -1]
        rows[f"{p.stem}-{seed}"] = {k: 100 * roc_auc_score(s.test_is_anomaly, v) for k, v in out.items()}
        print(p.stem, seed, {k: round(v - rows[f"{p.stem}-{seed}"]["raw"], 2) for k, v in rows[f"{p.stem}-{seed}"].items()}, flush=True)
json.dump(rows, open("/tmp/exp/resid.json", "w"))
keys = next(iter(rows.values())).keys()
for k in keys:
    diffs = np.array([r[k] - r["raw"] for r in rows.values()])
    print(k, "mean", round(diffs.mean(), 2), "worst", round(diffs.min(), 2))
