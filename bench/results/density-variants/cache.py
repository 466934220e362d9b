# ruff: noqa
# Experiment script of issue 10 (not part of the bench CLI); see README.md here.
"""Cache default-detector embeddings per (dataset, seed): train (all), test, R mask."""
from __future__ import annotations
import sys, warnings, time
from pathlib import Path
import numpy as np
sys.path.insert(0, "/work/main")
from bench.protocol import load_dataset, split
from nearwatch.detector import Detector
from nearwatch.detector.threads import configure_threads
configure_threads(1)
warnings.filterwarnings("ignore")
DATA = Path("/work/shared/data/adbench")
OUT = Path("/tmp/exp/cache"); OUT.mkdir(exist_ok=True)
seeds = [int(s) for s in sys.argv[1].split(",")]
names = sys.argv[2].split(",") if len(sys.argv) > 2 else sorted(p.stem for p in DATA.glob("*.npz"))
for seed in seeds:
    for name in names:
        path = OUT / f"{name}-{seed}.npz"
        if path.exists():
            continue
        x, y = load_dataset(DATA / f"{name}.npz")
        s = split(x, y, seed)
        t = time.time()
        det = Detector(alpha=0.01, random_state=seed).fit(s.train)
        e_train = det._embed(s.train); e_test = det._embed(s.test)
        nf = det.n_features_
        np.savez(path, e_train=e_train.astype(np.float32), e_test=e_test.astype(np.float32),
                 nf=nf, y=s.test_is_anomaly, train=s.train, test=s.test,
                 n_cal=det.n_calibration_)
        print(name, seed, e_train.shape, nf, round(time.time() - t, 1), flush=True)
