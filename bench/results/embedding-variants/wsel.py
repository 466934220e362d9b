# ruff: noqa
# Experiment script of issue 10 (not part of the bench CLI); see README.md here.
# label-free choice of the learned-embedding weight: corrupted-copies separation on held-out training normals
import sys, json, warnings
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/tmp/exp")
import numpy as np
from pathlib import Path
from sklearn.metrics import roc_auc_score
from bench.protocol import load_dataset, split
import nearwatch.detector.embedding.training as _tr
from nearwatch.detector import Detector
from nearwatch.detector.threads import configure_threads
from variants import knn, zs
configure_threads(1); warnings.filterwarnings("ignore")
HIST = {}
_orig = _tr.train_embedder
def _wrapped(*a, **kw):
    e = _orig(*a, **kw); HIST.clear(); HIST.update(e.history); return e
_tr.train_embedder = _wrapped

def lof(tr, te, p=0.25, k=5):
    d, i = knn(tr, te, k); dr, _ = knn(tr, tr, k, exclude_self=True)
    r = dr.mean(1); eps = 1e-3 * r.mean() + 1e-12
    return d.mean(1) / (r[i].mean(1) + eps) ** p

MULTS = (0.0, 0.5, 1.0, 2.0)
seed = int(sys.argv[1]); data_dir = Path(sys.argv[2]); out_path = sys.argv[3]
names = sys.argv[4].split(",") if len(sys.argv) > 4 else sorted(p.stem for p in data_dir.glob("*.npz"))
rows = {}
for name in names:
    x, y = load_dataset(data_dir / f"{name}.npz")
    s = split(x, y, seed)
    det = Detector(alpha=0.01, random_state=seed).fit(s.train)
    fe, emb = det.feature_encoder_, det.embedder_
    F_tr = fe.transform(s.train); F_te = fe.transform(s.test)
    nf = F_tr.shape[1]
    E_tr, E_te = emb.embed(F_tr), emb.embed(F_te)
    rng = np.random.default_rng(seed + 100)
    perm = rng.permutation(len(F_tr)); n_hold = max(20, len(F_tr) // 5)
    hold, ref = perm[:n_hold], perm[n_hold:]
    # corrupted copies: each held-out row gets ~15% of its columns (at least 1) from random other training rows
    F_c = F_tr[hold].copy()
    m = max(1, int(round(0.15 * nf)))
    for j in range(len(F_c)):
        cols = rng.choice(nf, m, replace=False)
        F_c[j, cols] = F_tr[rng.integers(len(F_tr), size=m), cols]
    E_c = emb.embed(F_c)
    res = {"nf": nf, "n": len(F_tr), "vloss": HIST.get("best_validation_loss"), "steps": HIST.get("steps"),
           "w": getattr(emb, "embedding_weight", None)}
    z_tr, z_te = zs(s.train, s.test); d, _ = knn(z_tr, z_te, 5); res["raw_knn"] = 100 * roc_auc_score(s.test_is_anomaly, d[:, -1])
    for mult in MULTS:
        def view(e):
            e = e.copy(); e[:, nf:] *= mult; return e
        res[f"test_{mult}"] = 100 * roc_auc_score(s.test_is_anomaly, lof(view(E_tr), view(E_te)))
        lab = np.r_[np.zeros(len(hold)), np.ones(len(hold))]
        sc = lof(view(E_tr[ref]), np.r_[view(E_tr[hold]), view(E_c)])
        res[f"crit_{mult}"] = 100 * roc_auc_score(lab, sc)
    rows[name] = res
    print(name, {k: (round(v, 2) if isinstance(v, float) else v) for k, v in res.items()}, flush=True)
    json.dump(rows, open(out_path, "w"))
