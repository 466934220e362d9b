# ruff: noqa
# Experiment script of issue 10 (not part of the bench CLI); see README.md here.
import sys, time, warnings
sys.path.insert(0, "/work/main")
import numpy as np
from pathlib import Path
from sklearn.metrics import roc_auc_score
from bench.protocol import load_dataset, split
from nearwatch.detector import Detector
from nearwatch.detector.threads import configure_threads
configure_threads(1); warnings.filterwarnings("ignore")
name = sys.argv[1]
variants = {
 "default": {},
 "flat": {"index": "flat"},
 "identity": {"encoder": "identity"},
 "p0": {"density_power": 0.0},
 "identity_flat_p0": {"encoder": "identity", "index": "flat", "density_power": 0.0},
}
sel = sys.argv[2].split(",") if len(sys.argv) > 2 else list(variants)
x, y = load_dataset(Path(f"/work/shared/data/adbench-large/{name}.npz"))
s = split(x, y, 0)
for v in sel:
    t = time.time()
    det = Detector(alpha=0.01, random_state=0, **variants[v]).fit(s.train)
    ft = time.time() - t; t = time.time()
    sc = det.score(s.test); st = time.time() - t
    print(v, round(100*roc_auc_score(s.test_is_anomaly, sc), 2), "fit", round(ft,1), "score", round(st,1), det.reference_index_.__class__.__name__, flush=True)
