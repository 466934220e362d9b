# ruff: noqa
"""Card transactions with injected fraud patterns, written by a helper trying nearwatch as a
fraud analyst (its own data, not `nearwatch generate`). Nested ``billing`` is flattened into
``billing_avs_match`` / ``billing_zip3``.

    python transactions.py 20000 10000 200 OUT_DIR   # train.jsonl (normals), test.jsonl
"""
import json, numpy as np, sys
rng = np.random.default_rng(42)
COUNTRIES = ["US","GB","DE","FR","NL","ES","IT","CA"]
CCY = {"US":"USD","GB":"GBP","DE":"EUR","FR":"EUR","NL":"EUR","ES":"EUR","IT":"EUR","CA":"CAD"}
CPROB = np.array([.40,.15,.12,.10,.06,.07,.05,.05])
CATS = ["grocery","fuel","restaurant","travel","electronics","apparel","digital_goods","pharmacy","utilities","entertainment"]
CAT_MU = dict(grocery=3.5,fuel=3.8,restaurant=3.4,travel=5.8,electronics=5.0,apparel=4.2,digital_goods=2.8,pharmacy=3.2,utilities=4.5,entertainment=3.6)
CAT_ONLINE = dict(grocery=.1,fuel=0.0,restaurant=.15,travel=.7,electronics=.5,apparel=.5,digital_goods=1.0,pharmacy=.1,utilities=.9,entertainment=.4)
NCARD, NMERCH = 4000, 3000
card_country = rng.choice(COUNTRIES, NCARD, p=CPROB)
merch_cat = rng.choice(CATS, NMERCH, p=[.22,.12,.18,.05,.05,.1,.08,.08,.05,.07])
merch_country = rng.choice(COUNTRIES, NMERCH, p=CPROB)
def hour():
    # daytime peaked
    return int(np.clip(np.round(rng.normal(14, 4)), 0, 23)) if rng.random() < .95 else int(rng.integers(0, 24))
def base(i, tag):
    c = int(rng.integers(NCARD))
    # merchant: mostly domestic to card
    for _ in range(50):
        m = int(rng.integers(NMERCH))
        if merch_country[m] == card_country[c] or rng.random() < .04:
            break
    cat = merch_cat[m]
    online = bool(rng.random() < CAT_ONLINE[cat])
    h = hour()
    if online and rng.random() < .2:
        h = int(rng.integers(0, 24))
    amt = float(np.round(np.exp(rng.normal(CAT_MU[cat], 0.9)), 2))
    r = {"id": f"{tag}{i:06d}", "amount": amt, "currency": CCY[merch_country[m]],
         "country": str(merch_country[m]), "issuer_country": str(card_country[c]),
         "merchant_category": cat, "merchant_id": f"M{m:05d}", "card_id": f"C{c:05d}",
         "hour": h, "is_online": online, "card_txn_1h": int(rng.poisson(0.6)),
         "billing": {"avs_match": bool(rng.random() < .9), "zip3": f"{rng.integers(100,999)}"}}
    if online:
        d = rng.choice(["mobile","desktop","tablet","null","absent"], p=[.5,.35,.08,.04,.03])
    else:
        d = rng.choice(["pos","null","absent"], p=[.6,.25,.15])
    if d == "null": r["device_type"] = None
    elif d != "absent": r["device_type"] = str(d)
    if rng.random() < .02:  # string amounts from a legacy feed
        r["amount"] = f"{amt:.2f}"
    return r, c, m

def fraud(kind, i):
    r, c, m = base(i, f"F{kind[:3]}")
    if kind == "huge_amount":
        r["amount"] = float(np.round(float(r["amount"] if not isinstance(r["amount"], str) else r["amount"]) * rng.uniform(40, 200), 2))
    elif kind == "foreign_country":
        others = [x for x in ["BR","NG","RU","ID","VN"]]
        k = str(rng.choice(others)); r["country"] = k
        r["currency"] = {"BR":"BRL","NG":"NGN","RU":"RUB","ID":"IDR","VN":"VND"}[k]
    elif kind == "cross_border":  # card domestic elsewhere, known country
        r["country"] = str(rng.choice([x for x in COUNTRIES if x != r["issuer_country"]]))
        r["currency"] = CCY[r["country"]]
        r["is_online"] = False; r["device_type"] = "pos"
    elif kind == "new_category":
        r["merchant_category"] = "crypto_exchange"
        r["merchant_id"] = f"MNEW{i:04d}"
    elif kind == "odd_hour_online":
        r["merchant_category"] = "electronics"; r["hour"] = int(rng.integers(2, 5)); r["is_online"] = True
        r["device_type"] = "desktop"; r["amount"] = float(np.round(np.exp(rng.normal(5.0, .5)), 2))
    elif kind == "rare_combo":  # fuel bought online, currency mismatching country
        r["merchant_category"] = "fuel"; r["is_online"] = True; r["device_type"] = "mobile"
        r["currency"] = "CAD" if r["country"] != "CA" else "GBP"
    elif kind == "burst_small":
        r["amount"] = float(np.round(rng.uniform(0.5, 2.0), 2)); r["merchant_category"] = "digital_goods"
        r["is_online"] = True; r["device_type"] = "mobile"; r["card_txn_1h"] = int(rng.integers(12, 40))
        r["card_id"] = f"C{int(rng.integers(5)):05d}"  # a few cards being tested
    r["is_fraud"] = 1; r["pattern"] = kind
    return r

KINDS = ["huge_amount","foreign_country","cross_border","new_category","odd_hour_online","rare_combo","burst_small"]
def flat(r):
    b = r.pop("billing", None)
    if isinstance(b, dict):
        for k, v in b.items():
            r[f"billing_{k}"] = v
    return r


if __name__ == "__main__":
    ntrain, ntest, nf, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    with open(f"{out}/train.jsonl", "w") as f:
        for i in range(ntrain):
            r = base(i, "T")[0]; r["is_fraud"] = 0; f.write(json.dumps(flat(r)) + "\n")
    with open(f"{out}/test.jsonl", "w") as f:
        for i in range(ntest):
            r = base(i, "N")[0]; r["is_fraud"] = 0; r["pattern"] = "normal"; f.write(json.dumps(flat(r)) + "\n")
        for k in KINDS:
            for i in range(nf):
                f.write(json.dumps(flat(fraud(k, i))) + "\n")
