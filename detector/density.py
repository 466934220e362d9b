"""Local density normalisation of the kNN score (LOF-style, damped).

A plain kNN distance treats every region alike: a record at distance 1 from a tight cluster and
one at distance 1 inside a diffuse one score the same. LOF divides by the neighbours' own
k-distance instead; on the 29 ADBench sets the full ratio is unstable (small or duplicated
neighbourhoods), so the score divides by a *power* of it::

    score(q) = mean distance to the k nearest records
               / (mean radius of q's k nearest references + floor) ** power

where a reference's radius is the mean distance to its k nearest *other* reference records
(copies counted), computed once at fit time over the references R (index part 0).

Why the guarantee still holds: the neighbours whose radii divide are q's k nearest distinct
references *in part 0*, found by part 0's own search, which is the same object with the same
parameters at calibration and when serving; adding calibration records later changes neither
part 0 nor the radii. So the denominator of every record is the same at calibration and at
serving, while the numerator can only fall (``detector.references``): served scores stay at
most the calibrated ones.

>>> import numpy as np
>>> density = LocalDensity(power=0.5, floor=0.0, radii=np.array([1.0, 4.0], dtype=np.float32))
>>> density.scale(np.array([[0], [1]]), k=1).tolist()
[1.0, 2.0]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import BundleError

if TYPE_CHECKING:
    from .references import ReferenceSet

FLOOR_FRACTION = 1e-3  # of the mean radius: references with k exact copies have radius 0


@dataclass(frozen=True)
class LocalDensity:
    """The denominator of the score: radii of part 0's distinct references, and the power."""

    power: float
    floor: float
    radii: np.ndarray  # float32, one per distinct reference of part 0

    def scale(self, part0_rows: np.ndarray, k: int) -> np.ndarray:
        """``(mean radius of the first k part-0 neighbours + floor) ** power`` per query."""
        rows = part0_rows[:, :k]
        local = self.radii[rows].astype(np.float64).mean(axis=1)
        return np.power(local + self.floor, self.power)

    def to_state(self) -> dict[str, Any]:
        return {"power": self.power, "floor": self.floor}

    @classmethod
    def from_state(cls, state: Any, radii: np.ndarray, n_part0: int) -> LocalDensity:
        try:
            power, floor = float(state["power"]), float(state["floor"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"invalid local density state: {exc}") from exc
        radii = np.asarray(radii)
        if (radii.shape != (n_part0,) or radii.dtype.kind != "f" or not power >= 0.0
                or not floor > 0.0 or not np.isfinite(radii).all() or (radii < 0).any()):
            raise BundleError("local density radii do not match the reference index")
        return cls(power=power, floor=floor, radii=radii)


def fit_local_density(references: ReferenceSet, vectors: np.ndarray, k: int, power: float
                      ) -> LocalDensity | None:
    """Radii of part 0's distinct ``vectors`` (as indexed), or None when there are too few
    records (fewer than k + 1) to give every reference k others."""
    if power <= 0.0 or references.n_records_ <= k:
        return None
    # k + 1 nearest records of a reference include itself at distance 0: their sum is the
    # sum over its k nearest others.
    distances, rows = references.search(vectors, k + 1)
    radii = references.mean_from_neighbours(distances, rows, k + 1) * (k + 1) / k
    radii = np.maximum(radii, 0.0).astype(np.float32)
    floor = FLOOR_FRACTION * float(radii.mean()) + 1e-12
    return LocalDensity(power=float(power), floor=floor, radii=radii)
