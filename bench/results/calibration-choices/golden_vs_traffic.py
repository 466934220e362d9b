# ruff: noqa
# Retraining calibration (session 19): half of 5 000 golden records vs the held-out traffic the
# champion did not flag, one generation; usage: python golden_vs_traffic.py identity|auto
import warnings, numpy as np, sys
warnings.filterwarnings("ignore")
from nearwatch import Detector
from nearwatch.detector.synthetic import generate_records, LABEL_FIELD
enc = sys.argv[1]
train = generate_records(8000, anomaly_rate=0.0, seed=1)
champ = Detector(label_fields=(LABEL_FIELD,), encoder=enc).fit(train)
traffic = generate_records(10000, anomaly_rate=0.01, seed=2)
rng = np.random.default_rng(0)
golden = [train[i] for i in rng.permutation(8000)[:5000]]
gcal, gref = golden[:2500], golden[2500:]
pv = champ.p_value(traffic)
held, training = traffic[:2000], [r for r, p in zip(traffic[4000:], pv[4000:]) if p >= 0.1]
flags = champ.predict(held)
tcal = [r for r, f in zip(held, flags) if not f]
fresh = generate_records(30000, anomaly_rate=0.01, seed=3)
truth = np.array([bool(r[LABEL_FIELD]) for r in fresh])
n_g = int(len(training) * 0.3 / 0.7)
for name, cal in (("golden2500", gcal), ("traffic", tcal)):
    d = Detector(**champ.get_params()).fit(training + gref[:n_g], calibration=cal)
    f = d.predict(fresh)
    print(enc, name, len(cal), "recall", round(f[truth].mean(), 3), "fpr", round(f[~truth].mean(), 4), flush=True)
f = champ.predict(fresh); print(enc, "champion recall", round(f[truth].mean(), 3), "fpr", round(f[~truth].mean(), 4))
