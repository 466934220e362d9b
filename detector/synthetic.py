"""Seeded synthetic service telemetry: the data of the demo, the tests and the service benchmark.

Each record is one request summary from one of several services. A service has its own normal
behaviour: a load level drives CPU, latency and bytes together (so fields are correlated, which a
learned metric can exploit), and categorical fields (region, method, status) have their own mix.
Injected anomalies are of two kinds:

- point anomalies: a value far outside every service's range (huge latency, a byte burst);
- contextual anomalies: every value is normal for *some* service, but not for this one
  (a cache node with database latencies, high CPU at idle load, an unusual method/status mix).

>>> records = generate_records(200, anomaly_rate=0.05, seed=1)
>>> len(records), sorted(records[0])[:4]
(200, ['bytes_in', 'bytes_out', 'cache_hit', 'client'])
>>> sum(r["is_anomaly"] for r in records)
10
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np

LABEL_FIELD = "is_anomaly"


@dataclass(frozen=True)
class ServiceProfile:
    """Normal behaviour of one service."""

    name: str
    latency_ms: float  # median latency at unit load
    bytes_out: float  # median response size
    cpu_per_load: float
    methods: tuple[str, ...]
    method_weights: tuple[float, ...]
    error_rate: float


SERVICES: tuple[ServiceProfile, ...] = (
    ServiceProfile("api", 40.0, 8_000.0, 18.0, ("GET", "POST", "PUT"), (0.7, 0.2, 0.1), 0.01),
    ServiceProfile("db", 12.0, 40_000.0, 30.0, ("QUERY", "WRITE"), (0.8, 0.2), 0.002),
    ServiceProfile("cache", 1.5, 2_000.0, 6.0, ("GET", "SET"), (0.9, 0.1), 0.0005),
    ServiceProfile("auth", 90.0, 600.0, 10.0, ("POST",), (1.0,), 0.03),
    ServiceProfile("batch", 2_500.0, 5_000_000.0, 60.0, ("RUN",), (1.0,), 0.02),
)
REGIONS = ("eu-west", "us-east", "ap-south")


def generate_records(
    n: int = 5_000,
    anomaly_rate: float = 0.02,
    seed: int = 0,
    n_extra_fields: int = 0,
    missing_rate: float = 0.01,
) -> list[dict[str, object]]:
    """Return ``n`` telemetry records, ``round(n * anomaly_rate)`` of them anomalous.

    ``n_extra_fields`` adds numeric sensor fields ``m00, m01, ...`` (each a noisy function of
    the service's load), to build wide records such as the 40-field benchmark records.
    ``missing_rate`` is the share of optional values set to ``None``.
    """
    if n < 0 or not 0.0 <= anomaly_rate <= 1.0:
        raise ValueError("n must be >= 0 and anomaly_rate in [0, 1]")
    rng = np.random.default_rng(seed)
    n_anomalies = int(round(n * anomaly_rate))
    anomalous = np.zeros(n, dtype=bool)
    anomalous[rng.choice(n, size=n_anomalies, replace=False)] = True
    extra_weights = rng.normal(size=(len(SERVICES), n_extra_fields))
    records = []
    for i in range(n):
        service_index = int(rng.integers(len(SERVICES)))
        record = _normal_record(rng, i, service_index, extra_weights[service_index])
        if anomalous[i]:
            _inject_anomaly(rng, record, service_index)
        for field in ("cache_hit", "retries", "client"):
            if rng.random() < missing_rate:
                record[field] = None
        record[LABEL_FIELD] = bool(anomalous[i])
        records.append(record)
    return records


def _normal_record(
    rng: np.random.Generator, i: int, service_index: int, extra_weights: np.ndarray
) -> dict[str, object]:
    profile = SERVICES[service_index]
    load = float(rng.gamma(4.0, 0.25))  # mean 1, right-skewed like real traffic
    latency = profile.latency_ms * (0.6 + 0.4 * load) * float(rng.lognormal(0.0, 0.25))
    bytes_out = profile.bytes_out * float(rng.lognormal(0.0, 0.5))
    record: dict[str, object] = {
        "id": f"r{i:07d}",
        "service": profile.name,
        "region": REGIONS[int(rng.integers(len(REGIONS)))],
        "method": str(rng.choice(profile.methods, p=profile.method_weights)),
        "status": "500" if rng.random() < profile.error_rate else "200",
        "latency_ms": round(latency, 3),
        "bytes_out": int(bytes_out),
        "bytes_in": int(bytes_out * 0.05 * float(rng.lognormal(0.0, 0.3))) + 40,
        "cpu_pct": round(min(100.0, profile.cpu_per_load * load + float(rng.normal(0, 2))), 2),
        "load": round(load, 4),
        "retries": int(rng.poisson(0.05)),
        "cache_hit": bool(rng.random() < 0.9) if profile.name == "cache" else False,
        # high-cardinality identifier: exercises feature hashing
        "client": f"client-{int(rng.integers(500))}",
    }
    for j, weight in enumerate(extra_weights):
        record[f"m{j:02d}"] = round(float(weight * load + rng.normal(0, 0.3)), 4)
    return record


def _inject_anomaly(
    rng: np.random.Generator, record: dict[str, object], service_index: int
) -> None:
    kind = int(rng.integers(4))
    profile = SERVICES[service_index]
    if kind == 0:  # point: latency far beyond any service at this load
        latency = cast(float, record["latency_ms"])  # set by _normal_record
        record["latency_ms"] = round(latency * float(rng.uniform(20, 60)), 3)
    elif kind == 1:  # point: byte burst (exfiltration-like)
        bytes_out = cast(int, record["bytes_out"])  # set by _normal_record
        record["bytes_out"] = int(bytes_out * float(rng.uniform(50, 200)))
    elif kind == 2:  # contextual: another service's latency/size profile under this name
        other = SERVICES[(service_index + 1 + int(rng.integers(len(SERVICES) - 1))) % len(SERVICES)]
        record["latency_ms"] = round(other.latency_ms * float(rng.lognormal(0.0, 0.25)), 3)
        record["bytes_out"] = int(other.bytes_out * float(rng.lognormal(0.0, 0.5)))
    else:  # contextual: CPU saturated while idle, with failing retries
        record["load"] = round(float(rng.uniform(0.05, 0.2)), 4)
        record["cpu_pct"] = round(float(rng.uniform(85, 100)), 2)
        record["retries"] = int(rng.integers(3, 8))
        record["status"] = "503"
        record["method"] = profile.methods[-1]


def repetitive_matrix(
    n: int, n_distinct: int = 1_000, dim: int = 6, repeat_rate: float = 0.95, seed: int = 0
) -> np.ndarray:
    """Normal rows that repeat like real monitoring data: most rows are exact copies.

    ``n_distinct`` prototype rows (a 3-cluster Gaussian mixture) are drawn with Zipf-like
    popularity, so a few values occur thousands of times; a share ``1 - repeat_rate`` of rows
    are fresh near-prototype values that occur once. Rows are i.i.d. for a fixed ``seed``'s
    prototypes, so a held-out sample is exchangeable with a training sample drawn alike.

    >>> rows = repetitive_matrix(2_000, n_distinct=100, seed=0)
    >>> rows.shape, len(np.unique(rows, axis=0)) < 250
    ((2000, 6), True)
    """
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(3, dim))
    prototypes = centers[rng.integers(0, 3, n_distinct)] + rng.normal(size=(n_distinct, dim))
    prototypes = np.round(prototypes, 2)  # recorded values have finite precision
    popularity = 1.0 / np.arange(1, n_distinct + 1) ** 1.1
    return sample_repetitive(prototypes, popularity / popularity.sum(), n, repeat_rate, rng)


def sample_repetitive(
    prototypes: np.ndarray, popularity: np.ndarray, n: int, repeat_rate: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """``n`` rows: copies of ``prototypes`` by ``popularity``, or once-only noisy variants."""
    chosen = prototypes[rng.choice(len(prototypes), size=n, p=popularity)]
    fresh = rng.random(n) >= repeat_rate
    chosen[fresh] = chosen[fresh] + rng.normal(scale=0.3, size=(int(fresh.sum()), chosen.shape[1]))
    return chosen.astype(np.float32)


def telemetry_matrix(
    n: int = 5_000, anomaly_rate: float = 0.02, seed: int = 0, n_extra_fields: int = 0
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The numeric fields of ``generate_records`` as a float64 matrix (no missing values):
    ``(matrix, field names, anomaly labels)``, for producers whose records are numbers.

    >>> matrix, fields, labels = telemetry_matrix(100, anomaly_rate=0.1, seed=1)
    >>> matrix.shape, fields[:3], int(labels.sum())
    ((100, 6), ['latency_ms', 'bytes_out', 'bytes_in'], 10)
    """
    records = generate_records(n, anomaly_rate, seed, n_extra_fields, missing_rate=0.0)
    fields = [name for name, value in records[0].items()
              if isinstance(value, int | float) and not isinstance(value, bool)]
    matrix = np.array([[record[name] for name in fields] for record in records],
                      dtype=np.float64)
    labels = np.array([bool(record[LABEL_FIELD]) for record in records])
    return matrix, fields, labels
