# ruff: noqa
# Experiment script of issue 10 (not part of the bench CLI); see README.md here.
from __future__ import annotations
import sys, json
from pathlib import Path
import numpy as np, faiss
from sklearn.metrics import roc_auc_score
from sklearn.ensemble import IsolationForest
from sklearn.preprocessing import QuantileTransformer
faiss.omp_set_num_threads(1)
sys.path.insert(0, "/tmp/exp")
from variants import knn, zs
CACHE = Path("/tmp/exp/cache")

def lof(tr, te, k, p, K=None):
    d, i = knn(tr, te, k); dr, _ = knn(tr, tr, k, exclude_self=True)
    r = dr.mean(1); eps = 1e-6 + 1e-3 * np.median(r)
    s_te = d.mean(1) / (r[i].mean(1) + eps) ** p
    # LOO train scores
    d2, i2 = knn(tr, tr, k, exclude_self=True)
    s_tr = d2.mean(1) / (r[i2].mean(1) + eps) ** p
    return s_tr, s_te

def norm(s_tr, s_te):
    med = np.median(s_tr); iqr = np.subtract(*np.percentile(s_tr, [90, 50]))
    return (s_te - med) / (iqr + 1e-12)

def variants(f, seed):
    E_tr, E_te = f["e_train"], f["e_test"]; nf = int(f["nf"])
    z_tr, z_te = zs(f["train"], f["test"])
    base = {}
    for k in (1, 2, 3, 5):
        base[f"E_mean{k}"] = lof(E_tr, E_te, k, 0.0)
        base[f"E_lof{k}^0.5"] = lof(E_tr, E_te, k, 0.5)
        base[f"E_lof{k}^0.25"] = lof(E_tr, E_te, k, 0.25)
    qt = QuantileTransformer(n_quantiles=min(1000, len(f["train"])), output_distribution="normal").fit(f["train"])
    q_tr, q_te = qt.transform(f["train"]), qt.transform(f["test"])
    base["Q_mean5"] = lof(q_tr.astype(np.float32), q_te.astype(np.float32), 5, 0.0)
    base["Q_lof5^0.5"] = lof(q_tr.astype(np.float32), q_te.astype(np.float32), 5, 0.5)
    forest = IsolationForest(random_state=seed).fit(z_tr)
    base["iforest"] = (-forest.score_samples(z_tr), -forest.score_samples(z_te))
    out = {k: v[1] for k, v in base.items()}
    d, _ = knn(z_tr, z_te, 5); out["raw_knn"] = d[:, -1]
    normed = {k: norm(*v) for k, v in base.items()}
    names = list(normed)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            out[f"{names[a]}+{names[b]}"] = normed[names[a]] + normed[names[b]]
    return out

rows = {}
files = sorted(CACHE.glob("*.npz"))
if len(sys.argv) > 1:
    files = [p for p in files if p.stem.rsplit("-", 1)[1] in sys.argv[1].split(",")]
for path in files:
    f = np.load(path)
    rows[path.stem] = {k: 100 * roc_auc_score(f["y"], v) for k, v in variants(f, int(path.stem.rsplit("-",1)[1])).items()}
    print(path.stem, flush=True, file=sys.stderr)
json.dump(rows, open(sys.argv[2] if len(sys.argv) > 2 else "/tmp/exp/variants2.json", "w"))
