# ruff: noqa
# Experiment script of issue 10 (not part of the bench CLI); see README.md here.
import sys, time, warnings
sys.path.insert(0, "/work/main")
import numpy as np, faiss
from pathlib import Path
from sklearn.metrics import roc_auc_score
from bench.protocol import load_dataset, split
from nearwatch.detector import Detector
from nearwatch.detector.threads import configure_threads
configure_threads(1); warnings.filterwarnings("ignore")
path = Path(sys.argv[1])
x, y = load_dataset(path); s = split(x, y, 0)
det = Detector(alpha=0.01, random_state=0).fit(s.train)
ri = det.reference_index_
feats = det.feature_encoder_.transform(s.test[:40000]); emb = det.embedder_.embed(feats)
part0 = ri.parts_[0]
flat = faiss.IndexFlatL2(part0.dim_); flat.add(np.ascontiguousarray(part0._refs))
q = np.ascontiguousarray(emb - part0.center_, dtype=np.float32)[:5000]
dexact, _ = flat.search(q, 5)
for ef in (8, 16, 24, 32, 48, 96):
    for p in ri.parts_:
        if hasattr(p._index, "hnsw"): p._index.hnsw.efSearch = ef
    t = time.perf_counter(); sc = det.score(s.test); st = time.perf_counter() - t
    dapprox, _ = part0._index.search(q, 5)
    recall = float(np.mean(np.isclose(dapprox, dexact, rtol=1e-4, atol=1e-6).all(1)))
    print(path.stem, "ef", ef, "auroc", round(100 * roc_auc_score(s.test_is_anomaly, sc), 3), "rec/s", round(len(s.test) / st), "exact-5 rate", round(recall, 4), [p.kind_ for p in ri.parts_], flush=True)
