# ruff: noqa
# Experiment script of issue 10 (not part of the bench CLI); see README.md here.
from __future__ import annotations
import sys, json
from pathlib import Path
import numpy as np, faiss
from sklearn.metrics import roc_auc_score
from sklearn.ensemble import IsolationForest
from scipy import stats
faiss.omp_set_num_threads(1)
sys.path.insert(0, "/tmp/exp")
from variants import knn, zs
CACHE = Path("/tmp/exp/cache")

def lof(tr, te, p, k=5):
    d, i = knn(tr, te, k); dr, ir = knn(tr, tr, k, exclude_self=True)
    r = dr.mean(1); eps = 1e-3 * r.mean() + 1e-12
    return dr.mean(1) / (r[ir].mean(1) + eps) ** p, d.mean(1) / (r[i].mean(1) + eps) ** p

def ecod(tr, te):
    # per-feature two-sided empirical tail: -log of min(left, right) tail prob, summed (ECOD-like)
    n = len(tr); s_tr = np.zeros(len(tr)); s_te = np.zeros(len(te))
    for j in range(tr.shape[1]):
        col = np.sort(tr[:, j])
        def tails(x):
            left = (np.searchsorted(col, x, side="right") + 1) / (n + 2)
            right = (n - np.searchsorted(col, x, side="left") + 1) / (n + 2)
            return -np.log(np.minimum(left, right))
        s_tr += tails(tr[:, j]); s_te += tails(te[:, j])
    return s_tr, s_te

def norm(s_tr, s_te):
    med = np.median(s_tr); spread = np.percentile(s_tr, 90) - med
    return (s_te - med) / (spread + 1e-12)

if __name__ == "__main__":
  rows = {}
  for path in sorted(CACHE.glob("*.npz")):
      f = np.load(path); seed = int(path.stem.rsplit("-", 1)[1])
      out = {}
      z_tr, z_te = zs(f["train"], f["test"]); d, _ = knn(z_tr, z_te, 5); out["raw_knn"] = d[:, -1]
      L = lof(f["e_train"], f["e_test"], 0.25)
      out["lof"] = L[1]
      E = ecod(f["train"], f["test"]); out["ecod"] = E[1]
      forest = IsolationForest(random_state=seed).fit(z_tr)
      F = (-forest.score_samples(z_tr), -forest.score_samples(z_te)); out["iforest"] = F[1]
      for w in (0.25, 0.5, 1.0):
          out[f"lof+{w}ecod"] = norm(*L) + w * norm(*E)
          out[f"lof+{w}if"] = norm(*L) + w * norm(*F)
      rows[path.stem] = {k: 100 * roc_auc_score(f["y"], v) for k, v in out.items()}
  json.dump(rows, open("/tmp/exp/v5.json", "w"))
