"""Every training record a schema cannot read, not only the first (``fit`` raises that one):
for a caller that drops them and trains on the rest (``nearwatch train --skip-bad-records``).

>>> rows = [{"bytes": 10 + i} for i in range(9)] + [{"bytes": "n/a"}, "not a record"]
>>> sorted(bad_records(FeatureEncoder(), rows))
[9, 10]
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

from ..errors import RecordError
from .schema import FeatureEncoder


def bad_records(encoder: FeatureEncoder, records: list[Any]) -> dict[int, RecordError]:
    """The records (by position) that ``encoder.fit`` then ``transform`` would refuse: not an
    object, a value a field cannot take, a value out of range. ``encoder`` is left unfitted."""
    errors = {index: RecordError(None, "record is not a JSON object (got "
                                 f"{type(record).__name__})", record_index=index)
              for index, record in enumerate(records) if not isinstance(record, dict)}
    kept = [index for index in range(len(records)) if index not in errors]
    if not kept:
        return errors
    probe = copy.deepcopy(encoder)
    with warnings.catch_warnings():  # the fit that follows warns about the same fields
        warnings.simplefilter("ignore")
        try:
            probe.fit([records[index] for index in kept])
        except RecordError:
            found = getattr(probe, "fit_errors_", {})
            errors.update({kept[index]: error for index, error in found.items()})
            kept = [index for index in kept if index not in errors]
            if not kept:
                return dict(sorted(errors.items()))
            probe = copy.deepcopy(encoder).fit([records[index] for index in kept])
    _, refused = probe.transform_records([records[index] for index in kept])
    errors.update({kept[index]: error for index, error in enumerate(refused) if error})
    return dict(sorted(errors.items()))
