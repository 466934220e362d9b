# ruff: noqa
# Experiment script of issue 10 (not part of the bench CLI); see README.md here.
import sys, warnings
sys.path.insert(0, "/work/main")
import numpy as np, torch
from sklearn.metrics import roc_auc_score
import nearwatch.detector.embedding.objectives as obj
from nearwatch.detector.embedding.augment import MarginalCorruption
from nearwatch.detector import Detector
from nearwatch.detector.synthetic import LABEL_FIELD, generate_records
from nearwatch.detector.threads import configure_threads
configure_threads(1); warnings.filterwarnings("ignore")
_orig_call = obj.Objective.__call__
def make_patch(view_rate, neg_rate, lam):
    def patched(self, encoder, data, rows, batch_size, g):
        if data.anomalies is not None or self.mode != "self_supervised":
            return _orig_call(self, encoder, data, rows, batch_size, g)
        batch = rows[torch.randint(0, len(rows), (min(batch_size, len(rows)),), generator=g)]
        x = data.features[batch]
        fake = MarginalCorruption(neg_rate, self.view.groups, self.view.always)(x, data.features, g, rows)
        v = MarginalCorruption(view_rate, self.view.groups, self.view.always)
        return lam * self.hard_negatives(encoder(x), encoder(fake)) + self.nt_xent(
            encoder(v(x, data.features, g, rows)), encoder(v(x, data.features, g, rows)))
    return patched
n_refs = int(sys.argv[1])
train = generate_records(n_refs, anomaly_rate=0.0, seed=0)
test = generate_records(40000, anomaly_rate=0.02, seed=1)
truth = np.array([bool(r[LABEL_FIELD]) for r in test])
for seed in (0, 1):
    for name in ("base", "identity", "C"):
        obj.Objective.__call__ = make_patch(0.1, 0.4, 1.0) if name == "C" else _orig_call
        det = Detector(label_fields=(LABEL_FIELD,), random_state=seed,
                       encoder="identity" if name == "identity" else "auto").fit(train)
        print(seed, name, round(100 * roc_auc_score(truth, det.score(test)), 3), flush=True)
