# ruff: noqa
# Experiment (issue 10): fewer neighbours in the score and the radii (k = 2..5), density power 0.25-0.5.
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
    d, i = knn(E_tr, E_te, 5)
    dr, _ = knn(E_tr, E_tr, 5, exclude_self=True)
    for k in (2, 3, 4, 5):
        num = d[:, :k].mean(1)
        for kr in sorted({k, 5}):
            r = dr[:, :kr].mean(1); eps = 1e-3 * r.mean() + 1e-12
            nr = r[i[:, :k]].mean(1)
            for p in (0.0, 0.25, 0.35, 0.5):
                out[f"k{k}_r{kr}^{p}"] = num / (nr + eps) ** p
    return out

rows = {}
for path in sorted(CACHE.glob("*.npz")):
    f = np.load(path)
    rows[path.stem] = {k: 100 * roc_auc_score(f["y"], v) for k, v in variants(f).items()}
json.dump(rows, open("/tmp/exp/smallk.json", "w"))
