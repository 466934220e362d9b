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

def variants(f):
    E_tr, E_te = f["e_train"], f["e_test"]
    out = {}
    z_tr, z_te = zs(f["train"], f["test"])
    d, _ = knn(z_tr, z_te, 5); out["raw_knn"] = d[:, -1]
    K = 20
    d, i = knn(E_tr, E_te, K)
    dr, _ = knn(E_tr, E_tr, K, exclude_self=True)
    num = d[:, :5].mean(1)
    for kr in (5, 10, 20):
        r = dr[:, :kr].mean(1); eps = 1e-3 * r.mean() + 1e-12
        for kn in (5, 10, 20):
            nr = r[i[:, :kn]].mean(1)
            for p in (0.25, 0.35, 0.5):
                out[f"r{kr}_n{kn}^{p}"] = num / (nr + eps) ** p
    return out

rows = {}
files = sorted(CACHE.glob("*.npz"))
for path in files:
    f = np.load(path)
    rows[path.stem] = {k: 100 * roc_auc_score(f["y"], v) for k, v in variants(f).items()}
json.dump(rows, open("/tmp/exp/v3.json", "w"))
