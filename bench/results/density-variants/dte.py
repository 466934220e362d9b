# ruff: noqa
# Experiment (issue 10): DTE's non-parametric score (Livernoche et al. 2024, vicliv/DTE
# diffusion/non_param_dte.py: argmax over T=300 diffusion steps of an inverse-gamma posterior
# whose scale is the mean squared distance to the K=5 nearest training records) vs raw kNN,
# the mean of 5 distances, and the default's local-density score, on z-scored features.
from __future__ import annotations
import sys, json
from pathlib import Path
import numpy as np, faiss
from scipy.stats import invgamma
from sklearn.metrics import roc_auc_score
faiss.omp_set_num_threads(1)
sys.path.insert(0, "/tmp/exp")
from variants import knn, zs
CACHE = Path("/tmp/exp/cache")

def dte_np(mean_sq, dim, T=300):
    betas = np.linspace(1e-4, 1e-2, T); var = 1 - np.cumprod(1 - betas)
    a = max(0.5 * dim - 1, 1e-3)
    logpdf = invgamma.logpdf(var[None, :], a=a, scale=mean_sq[:, None] / 2)
    return np.argmax(logpdf, axis=1).astype(float)

rows = {}
for path in sorted(CACHE.glob("*.npz")):
    f = np.load(path); y = f["y"]
    z_tr, z_te = zs(f["train"].astype(np.float64), f["test"].astype(np.float64))
    d, _ = knn(z_tr, z_te, 5)
    out = {"raw_knn": d[:, -1], "mean5": d.mean(1), "mean5_sq": (d ** 2).mean(1),
           "dte_np": dte_np((d ** 2).mean(1), z_tr.shape[1])}
    E_tr, E_te = f["e_train"], f["e_test"]
    de, ie = knn(E_tr, E_te, 5); dr, _ = knn(E_tr, E_tr, 5, exclude_self=True)
    r = dr.mean(1); eps = 1e-6 + 1e-3 * np.median(r)
    out["default_density"] = de.mean(1) / (r[ie].mean(1) + eps) ** 0.25
    out["dte_np_embedding"] = dte_np((de ** 2).mean(1), E_tr.shape[1])
    rows[path.stem] = {k: 100 * roc_auc_score(y, v) for k, v in out.items()}
    print(path.stem, {k: round(v, 2) for k, v in rows[path.stem].items()}, flush=True)
json.dump(rows, open("/tmp/exp/dte.json", "w"))
