# ruff: noqa
# Experiment script of issue 10 (not part of the bench CLI); see README.md here.
import sys, time, warnings
sys.path.insert(0, "/work/main")
import numpy as np
from pathlib import Path
from sklearn.metrics import roc_auc_score
from bench.protocol import load_dataset, split
import nearwatch.detector.density as dens
from nearwatch.detector import Detector
from nearwatch.detector.threads import configure_threads
configure_threads(1); warnings.filterwarnings("ignore")
path = Path(sys.argv[1]); fracs = [float(f) for f in sys.argv[2].split(",")]
x, y = load_dataset(path)
s = split(x, y, 0)
for f in fracs:
    dens.FLOOR_FRACTION = f
    det = Detector(alpha=0.01, random_state=0).fit(s.train)
    sc = det.score(s.test)
    r = det.reference_index_.density_.radii
    print(path.stem, f, round(100*roc_auc_score(s.test_is_anomaly, sc), 2), "zero radii", round(float((r==0).mean()),3), flush=True)
