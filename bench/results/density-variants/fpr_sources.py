# ruff: noqa
# Experiment (issue 10): where does the realised FPR fall below alpha? served (R+C) vs part 0 only.
import sys, json, warnings
from pathlib import Path
import numpy as np
sys.path.insert(0, "/work/main")
from bench.protocol import load_dataset, split
from nearwatch.detector import Detector
from nearwatch.detector.threads import configure_threads
configure_threads(1); warnings.filterwarnings("ignore")
DATA = Path("/work/shared/data/adbench")
seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
rows = {}
tot = np.zeros(3)
for p in sorted(DATA.glob("*.npz")):
    x, y = load_dataset(p); s = split(x, y, seed)
    try:
        d = Detector(alpha=0.01, random_state=seed, strict=True).fit(s.train)
    except Exception as e:
        continue
    normal = s.test[~s.test_is_anomaly]
    e = d._embed(normal); refs = d.reference_index_; k = d.n_neighbors
    served = refs.score(e, k)
    part0 = refs.parts_[0]
    dist, r = part0.search(e, min(k, part0.n_))
    m = refs.mean_from_neighbours(dist, r, k)
    p0 = m if refs.density_ is None else m / refs.density_.scale(r, k)
    f_served = float((served > d.threshold_).mean()); f_p0 = float((p0 > d.threshold_).mean())
    rows[p.stem] = dict(n_cal=d.n_calibration_, n_ref=d.n_reference_, n_test=len(normal),
                        served=f_served, part0=f_p0, bound=d.fpr_bound_)
    tot += [len(normal) * f_served, len(normal) * f_p0, len(normal)]
    print(f"{p.stem:18s} ncal {d.n_calibration_:6d} nref {d.n_reference_:6d} served {f_served:.4f} part0 {f_p0:.4f}", flush=True)
print("pooled served", tot[0] / tot[2], "part0", tot[1] / tot[2])
json.dump(rows, open(f"/tmp/exp/fpr_sources-{seed}.json", "w"))
