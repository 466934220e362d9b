# ruff: noqa
# Experiment script of issue 10 (not part of the bench CLI); see README.md here.
# self-supervised objective with synthetic hard negatives (corrupted copies): experiment of issue 10
import sys, json, warnings, os
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/tmp/exp")
import numpy as np, torch
from pathlib import Path
from sklearn.metrics import roc_auc_score
from bench.protocol import load_dataset, split
import nearwatch.detector.embedding.objectives as obj
from nearwatch.detector.embedding.augment import MarginalCorruption
from nearwatch.detector import Detector
from nearwatch.detector.threads import configure_threads
configure_threads(1); warnings.filterwarnings("ignore")
import faiss
faiss.omp_set_num_threads(1)

def knn(ref, q, k, exclude_self=False):
    index = faiss.IndexFlatL2(ref.shape[1]); index.add(np.ascontiguousarray(ref, np.float32))
    d, i = index.search(np.ascontiguousarray(q, np.float32), k + int(exclude_self))
    d = np.sqrt(np.maximum(d, 0))
    if exclude_self: d, i = d[:, 1:], i[:, 1:]
    return d, i

def lof(tr, te, p=0.25, k=5):
    d, i = knn(tr, te, k); dr, _ = knn(tr, tr, k, exclude_self=True)
    r = dr.mean(1); eps = 1e-3 * r.mean() + 1e-12
    return d.mean(1) / (r[i].mean(1) + eps) ** p

VARIANT = sys.argv[1]  # base | B:<neg_rate> | C:<view_rate>:<neg_rate>:<lambda>
_orig_call = obj.Objective.__call__
if VARIANT != "base":
    parts = VARIANT.split(":")
    kind = parts[0]
    if kind == "B":
        neg_rate = float(parts[1]); view_rate = None; lam = 1.0
    else:
        view_rate, neg_rate, lam = float(parts[1]), float(parts[2]), float(parts[3])
    def patched(self, encoder, data, rows, batch_size, g):
        if data.anomalies is not None or self.mode != "self_supervised":
            return _orig_call(self, encoder, data, rows, batch_size, g)
        batch = rows[torch.randint(0, len(rows), (min(batch_size, len(rows)),), generator=g)]
        x = data.features[batch]
        neg_view = MarginalCorruption(neg_rate, self.view.groups, self.view.always)
        fake = neg_view(x, data.features, g, rows)
        loss = self.hard_negatives(encoder(x), encoder(fake))
        if kind == "C":
            v = MarginalCorruption(view_rate, self.view.groups, self.view.always)
            loss = lam * loss + self.nt_xent(encoder(v(x, data.features, g, rows)), encoder(v(x, data.features, g, rows)))
        return loss
    obj.Objective.__call__ = patched

MULTS = (0.0, 0.5, 1.0, 2.0, 4.0)
seed = int(sys.argv[2]); data_dir = Path(sys.argv[3]); out_path = sys.argv[4]
names = sys.argv[5].split(",") if len(sys.argv) > 5 else sorted(p.stem for p in data_dir.glob("*.npz"))
rows = {}
for name in names:
    x, y = load_dataset(data_dir / f"{name}.npz")
    s = split(x, y, seed)
    det = Detector(alpha=0.01, random_state=seed).fit(s.train)
    fe, emb = det.feature_encoder_, det.embedder_
    F_tr = fe.transform(s.train); F_te = fe.transform(s.test); nf = F_tr.shape[1]
    E_tr, E_te = emb.embed(F_tr), emb.embed(F_te)
    res = {"default": 100 * roc_auc_score(s.test_is_anomaly, det.score(s.test))}
    mean, std = s.train.mean(0), s.train.std(0); std[std == 0] = 1
    d, _ = knn((s.train - mean) / std, (s.test - mean) / std, 5); res["raw_knn"] = 100 * roc_auc_score(s.test_is_anomaly, d[:, -1])
    for mult in MULTS:
        def view(e):
            e = e.copy(); e[:, nf:] *= mult; return e
        res[f"x{mult}"] = 100 * roc_auc_score(s.test_is_anomaly, lof(view(E_tr), view(E_te)))
    rows[name] = res
    print(name, {k: round(v, 2) for k, v in res.items()}, flush=True)
    json.dump(rows, open(out_path, "w"))
