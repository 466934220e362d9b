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
from variants5 import lof, norm
CACHE = Path("/tmp/exp/cache")
rows = {}
for path in sorted(CACHE.glob("*.npz")):
    f = np.load(path)
    out = {}
    z_tr, z_te = zs(f["train"], f["test"]); d, _ = knn(z_tr, z_te, 5); out["raw_knn"] = d[:, -1]
    L = lof(f["e_train"], f["e_test"], 0.25); out["lof"] = L[1]
    Z = lof(z_tr.astype(np.float32), z_te.astype(np.float32), 0.25); out["zlof"] = Z[1]
    out["lof+zlof"] = norm(*L) + norm(*Z)
    # rank-style: each score as its empirical tail probability among the train LOO scores
    def tail(s_tr, s_te):
        srt = np.sort(s_tr); return np.searchsorted(srt, s_te, side="right") / (len(srt) + 1)
    out["lof*zlof_rank"] = -np.log1p(-np.minimum(tail(*L), 0.999999)) - np.log1p(-np.minimum(tail(*Z), 0.999999))
    rows[path.stem] = {k: 100 * roc_auc_score(f["y"], v) for k, v in out.items()}
json.dump(rows, open("/tmp/exp/v6.json", "w"))
