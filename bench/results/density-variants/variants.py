# ruff: noqa
# Experiment script of issue 10 (not part of the bench CLI); see README.md here.
from __future__ import annotations
import sys, json
from pathlib import Path
import numpy as np, faiss
from sklearn.metrics import roc_auc_score
faiss.omp_set_num_threads(1)
CACHE = Path("/tmp/exp/cache")

def knn(ref, q, k, exclude_self=False):
    index = faiss.IndexFlatL2(ref.shape[1]); index.add(np.ascontiguousarray(ref, np.float32))
    d, i = index.search(np.ascontiguousarray(q, np.float32), k + int(exclude_self))
    d = np.sqrt(np.maximum(d, 0))
    if exclude_self:
        d, i = d[:, 1:], i[:, 1:]
    return d, i

def zs(train, test):
    m, s = train.mean(0), train.std(0); s[s == 0] = 1
    return (train - m) / s, (test - m) / s

def variants(f):
    z_tr, z_te = zs(f["train"], f["test"])
    out = {}
    d, _ = knn(z_tr, z_te, 5); out["raw_knn"] = d[:, -1]
    E_tr, E_te = f["e_train"], f["e_test"]; nf = int(f["nf"])
    for tag, (tr, te) in {"E": (E_tr, E_te), "I": (E_tr[:, :nf], E_te[:, :nf])}.items():
        K = 40
        d, i = knn(tr, te, K)
        dr, _ = knn(tr, tr, K, exclude_self=True)
        for k in (5, 10, 20):
            s = d[:, :k].mean(1); out[f"{tag}_mean{k}"] = s
            r = dr[:, :k].mean(1)  # each reference's own mean k-distance
            eps = 1e-6 + 1e-3 * np.median(r)
            nr = r[i[:, :k]].mean(1)
            for p in (0.25, 0.5, 1.0):
                out[f"{tag}_lof{k}^{p}"] = s / (nr + eps) ** p
    return out

rows = {}
files = sorted(CACHE.glob("*.npz"))
if len(sys.argv) > 1:
    files = [p for p in files if p.stem.rsplit("-", 1)[1] in sys.argv[1].split(",")]
for path in files:
    f = np.load(path)
    y = f["y"]
    rows[path.stem] = {k: 100 * roc_auc_score(y, v) for k, v in variants(f).items()}
    print(path.stem, flush=True, file=sys.stderr)
json.dump(rows, open("/tmp/exp/variants.json", "w"))
