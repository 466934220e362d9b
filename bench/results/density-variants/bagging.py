# ruff: noqa
# Experiment (issue 10): feature bagging (Lazarevic & Kumar 2005) of the default density score.
from __future__ import annotations
import sys, json
from pathlib import Path
import numpy as np, faiss
from sklearn.metrics import roc_auc_score
faiss.omp_set_num_threads(1)
sys.path.insert(0, "/tmp/exp")
from variants import knn, zs
CACHE = Path("/tmp/exp/cache")

def dens(tr, te, p=0.25, k=5):
    d, i = knn(tr, te, k)
    dr, _ = knn(tr, tr, k, exclude_self=True)
    r = dr.mean(1); eps = 1e-3 * r.mean() + 1e-12
    s = d.mean(1) / (r[i].mean(1) + eps) ** p
    # a scale from the references alone: their own leave-one-out score
    s_ref = r / (r + eps) ** p
    return s, np.median(s_ref) + 1e-12

def variants(f, seed):
    E_tr, E_te = f["e_train"], f["e_test"]; nf = int(f["nf"])
    out = {}
    z_tr, z_te = zs(f["train"], f["test"])
    d, _ = knn(z_tr, z_te, 5); out["raw_knn"] = d[:, -1]
    base, _ = dens(E_tr, E_te); out["default"] = base
    dim = E_tr.shape[1]
    rng = np.random.default_rng(seed)
    for B in (5, 10):
        acc_n = np.zeros(len(E_te)); acc_r = np.zeros(len(E_te))
        for b in range(B):
            m = rng.integers(max(1, dim // 2), max(2, dim)) if dim > 1 else 1
            cols = np.sort(rng.choice(dim, size=m, replace=False))
            s, scale = dens(E_tr[:, cols], E_te[:, cols])
            acc_n += s / scale
            acc_r += np.argsort(np.argsort(s))
        out[f"bag{B}_norm"] = acc_n; out[f"bag{B}_rank"] = acc_r
        out[f"bag{B}_norm+def"] = acc_n / B + base / dens_scale(E_tr)
    return out

def dens_scale(E_tr):
    _, sc = dens(E_tr, E_tr[:1]); return sc

rows = {}
for path in sorted(CACHE.glob("*.npz")):
    f = np.load(path)
    seed = int(path.stem.rsplit("-", 1)[1])
    rows[path.stem] = {k: 100 * roc_auc_score(f["y"], v) for k, v in variants(f, seed).items()}
    print(path.stem, {k: round(v, 2) for k, v in rows[path.stem].items()}, flush=True)
json.dump(rows, open("/tmp/exp/bag.json", "w"))
