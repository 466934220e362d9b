# ruff: noqa
# Experiment script of issue 10 (not part of the bench CLI); see README.md here.
import json, sys, numpy as np, collections
rows = json.load(open(sys.argv[1])); cols = sys.argv[2].split(",")
by = collections.defaultdict(list)
for stem, r in rows.items(): by[stem.rsplit("-", 1)[0]].append(r)
print(f"{'dataset':18s}" + "".join(f"{c[:16]:>17s}" for c in cols))
for n, rs in sorted(by.items()):
    print(f"{n:18s}" + "".join(f"{np.mean([r[c] for r in rs]):17.2f}" for c in cols))
