# ruff: noqa
# Experiment script of issue 10 (not part of the bench CLI); see README.md here.
from __future__ import annotations
import sys, json
from pathlib import Path
import numpy as np, faiss
from sklearn.metrics import roc_auc_score
faiss.omp_set_num_threads(1)
sys.path.insert(0, "/tmp/exp")
from variants import knn, zs
CACHE = Path("/tmp/exp/cache")

def lof(tr, te, p, k=5):
    d, i = knn(tr, te, k); dr, _ = knn(tr, tr, k, exclude_self=True)
    r = dr.mean(1); eps = 1e-3 * r.mean() + 1e-12
    return d.mean(1) / (r[i].mean(1) + eps) ** p

rows = {}
for path in sorted(CACHE.glob("*.npz")):
    f = np.load(path); nf = int(f["nf"])
    out = {}
    z_tr, z_te = zs(f["train"], f["test"]); d, _ = knn(z_tr, z_te, 5); out["raw_knn"] = d[:, -1]
    for w in (0.0, 0.15, 0.3, 0.6, 1.0, 2.0):
        def view(e):
            e = e.copy(); e[:, nf:] *= w / 0.3; return e
        for p in (0.25, 0.5):
            out[f"w{w}^{p}"] = lof(view(f["e_train"]), view(f["e_test"]), p)
    rows[path.stem] = {k: 100 * roc_auc_score(f["y"], v) for k, v in out.items()}
json.dump(rows, open("/tmp/exp/v4.json", "w"))
