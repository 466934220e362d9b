"""What a retraining may learn from: records on the champion's fields, readable by it.

The challenger infers its schema from its training records. One stray field (a feedback
record ``{"foo": 1}``, a golden file with other columns, a new field in the traffic) or one
value of another kind (``"latency_ms": "abc"``) changed it: every field gained a missing
indicator, the buffer (keyed by the schema) was orphaned, or every later retraining failed on
that record. So records are reduced to the champion's fields, and those it cannot read are
left out, counted, and named by verdict id.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from nearwatch.detector import Detector

    from .buffer import BufferEntry
    from .feedback import Verdict

log = logging.getLogger("nearwatch.retrain")
NAMED = 10  # unreadable verdict ids named in the figures
T = TypeVar("T")


def calibration_needed(champion: Detector) -> int:
    """Calibration records a challenger needs to be certified where the champion is (0: none)."""
    from nearwatch.detector.calibration import required_calibration_size

    alpha = champion.alpha if champion.certified_ else None
    return 0 if alpha is None else required_calibration_size(alpha, champion.delta)


def traffic_note(champion: Detector) -> str:
    """What a certificate from the traffic the champion accepted covers, and the remedy."""
    needed = calibration_needed(champion)
    pin = f"pin at least {8 * needed} golden records" if needed else "pin golden records"
    return ("calibrated on the traffic the champion did not flag: the bound covers that traffic "
            f"and can grow over promotions; {pin} (`nearwatch golden`) to anchor it")


def _project(champion: Detector, record: Any) -> Any:
    keep = {spec["name"] for spec in champion.feature_encoder_.fields_}
    keep |= {champion.id_field, *champion.label_fields}
    if not isinstance(record, dict):
        return record
    return {name: value for name, value in record.items() if name in keep}


def _readable(champion: Detector, items: Sequence[T], records: list[Any]) -> tuple[list[T],
                                                                                   list[T]]:
    results = champion.score_records(records, 0) if records else []
    good = [item for item, result in zip(items, results, strict=True) if "error" not in result]
    bad = [item for item, result in zip(items, results, strict=True) if "error" in result]
    return good, bad


def on_champion_fields(champion: Detector, entries: list[BufferEntry]) -> list[BufferEntry]:
    """Buffer entries reduced to the champion's fields (it scored them: all readable)."""
    return [dataclasses.replace(e, record=_project(champion, e.record)) for e in entries]


def readable_records(champion: Detector, records: list[Any], what: str,
                     figures: dict[str, Any]) -> list[Any]:
    """``records`` reduced to the champion's fields, less those it cannot read (counted in
    ``figures[what + "_unreadable"]``)."""
    projected = [_project(champion, record) for record in records]
    good, bad = _readable(champion, projected, projected)
    if bad:
        figures[f"{what}_unreadable"] = len(bad)
        log.warning("%d %s records the champion cannot read are left out", len(bad), what)
    return good


def readable_verdicts(champion: Detector, verdicts: list[Verdict],
                      figures: dict[str, Any]) -> list[Verdict]:
    """Verdicts whose record the champion can read, reduced to its fields; the others are
    left out and their ids named in ``figures["feedback_unreadable"]``."""
    projected = [dataclasses.replace(v, record=_project(champion, v.record)) for v in verdicts]
    good, bad = _readable(champion, projected, [v.record for v in projected])
    if bad:
        figures["feedback_unreadable"] = [v.record_id for v in bad[:NAMED]]
        figures["feedback_unreadable_count"] = len(bad)
        log.warning("feedback records the champion cannot read are left out (ids %s): "
                    "`nearwatch feedback` them again with a readable --record",
                    ", ".join(repr(v.record_id) for v in bad[:NAMED]))
    return good
