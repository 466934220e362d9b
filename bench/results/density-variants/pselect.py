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
PS = (0.0, 0.25, 0.5, 0.75)

def scorer(ref, q, p, k=5):
    d, i = knn(ref, q, k); dr, _ = knn(ref, ref, k, exclude_self=True)
    r = dr.mean(1); eps = 1e-3 * r.mean() + 1e-12
    return d.mean(1) / (r[i].mean(1) + eps) ** p

def corrupt(rng, x, pool, rate):
    mask = rng.random(x.shape) < rate
    none = ~mask.any(1); mask[none, rng.integers(0, x.shape[1], none.sum())] = True
    donors = pool[rng.integers(0, len(pool), x.shape)] if False else pool[rng.integers(0, len(pool), size=x.shape), np.arange(x.shape[1])]
    return np.where(mask, donors, x)

out = {}
for path in sorted(CACHE.glob("*.npz")):
    f = np.load(path); seed = int(path.stem.rsplit("-", 1)[1])
    nf = int(f["nf"]); tr, te = f["e_train"][:, :nf], f["e_test"][:, :nf]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(tr)); nc = max(len(tr) * 3 // 10, 1)
    C, R = tr[perm[:nc]], tr[perm[nc:]]
    row = {}
    for rate in (0.1, 0.3):
        bad = corrupt(rng, C, R, rate)
        for p in PS:
            s = scorer(R, np.vstack([C, bad]), p)
            row[f"crit{rate}_{p}"] = 100 * roc_auc_score(np.r_[np.zeros(len(C)), np.ones(len(bad))], s)
    for p in PS:
        row[f"test_{p}"] = 100 * roc_auc_score(f["y"], scorer(tr, te, p))
    z_tr, z_te = zs(f["train"], f["test"]); d, _ = knn(z_tr, z_te, 5)
    row["raw_knn"] = 100 * roc_auc_score(f["y"], d[:, -1])
    for rate in (0.1, 0.3):
        best = max(PS, key=lambda p: row[f"crit{rate}_{p}"])
        row[f"sel{rate}"] = row[f"test_{best}"]; row[f"selp{rate}"] = best
    out[path.stem] = row
    print(path.stem, {k: round(v, 2) for k, v in row.items() if k.startswith(("sel", "test"))}, file=sys.stderr)
json.dump(out, open("/tmp/exp/pselect.json", "w"))
