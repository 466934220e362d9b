# ruff: noqa
# Experiment script of issue 10 (not part of the bench CLI); see README.md here.
import json, sys, numpy as np, collections
rows = json.load(open(sys.argv[1] if len(sys.argv) > 1 else "/tmp/exp/variants.json"))
keys = list(next(iter(rows.values())).keys())
# average over seeds per dataset
by = collections.defaultdict(list)
for stem, r in rows.items(): by[stem.rsplit("-", 1)[0]].append(r)
ds = {n: {k: np.mean([r[k] for r in rs]) for k in keys} for n, rs in by.items()}
print(len(ds), "datasets")
base = np.array([ds[n]["raw_knn"] for n in ds])
res = []
for k in keys:
    v = np.array([ds[n][k] for n in ds]); diff = v - base
    worst = min(ds, key=lambda n: ds[n][k] - ds[n]["raw_knn"])
    res.append((v.mean(), k, diff.mean(), diff.min(), worst, (diff < -2).sum()))
for m, k, dm, dmin, w, nbad in sorted(res, reverse=True)[:40]:
    print(f"{k:18s} mean {m:6.2f}  vs raw {dm:+5.2f}  worst {dmin:+6.2f} ({w})  n<-2: {nbad}")
