# ruff: noqa
# Experiment script of issue 10 (not part of the bench CLI); see README.md here.
import json, sys, numpy as np
base = json.load(open('/tmp/exp/wsel0.json'))
for path in sys.argv[1:]:
    r = json.load(open(path))
    keys = [k for k in next(iter(r.values())) if k.startswith("x")]
    out = []
    for k in keys:
        diffs = {n: v[k] - v['raw_knn'] for n, v in r.items()}
        out.append(f"{k}: {np.mean(list(diffs.values())):+.2f} (worst {min(diffs.values()):+.2f}, n={len(diffs)})")
    dflt = np.mean([v['default'] - v['raw_knn'] for v in r.values()])
    b = np.mean([base[n]['test_1.0'] - base[n]['raw_knn'] for n in r])
    print(path, f"default {dflt:+.2f}  base-x1 {b:+.2f} |", "  ".join(out))
