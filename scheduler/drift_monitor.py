"""The drift test's Redis side: workers' flag counters in, ``FlagRateDrift`` per version.

``DriftMonitor.check`` (the ``nearwatch.drift_check`` task) takes the counters the workers
write (``worker/reference_buffer.py``), runs the serving version's ``FlagRateDrift``
(``scheduler/drift.py``) and keeps its state in Redis, so it survives restarts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .drift import DriftStep, FlagRateDrift

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger("nearwatch.drift")
DRIFT_ALARMS_KEY = "nearwatch:drift:alarms"  # count of drift alarms (scheduler/tasks.py)


@dataclass(frozen=True)
class DriftReport:
    """One ``DriftMonitor.check``: the serving version's statistic and the windows it closed."""

    version: str | None
    statistic: float
    steps: list[DriftStep]
    alarm: bool
    discarded: int  # records counted for other versions (or no bound to test them against)
    pending: int  # records of the current version waiting for their window to fill


# Reads and deletes each counter hash in one step: a worker's HINCRBY lands either before
# (and is read) or after (and starts a fresh hash for the next check), never in between.
_TAKE_COUNTS = """local taken = {}
for i, key in ipairs(KEYS) do taken[i] = redis.call('HGETALL', key); redis.call('DEL', key) end
return taken"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class DriftMonitor:
    """Takes the workers' flag counters from Redis and runs ``FlagRateDrift`` on the serving
    version's; the state (JSON in ``{prefix}:state``) survives restarts and belongs to one
    version: a new version starts from R = 0.

    Two monitors may run at once: each count is taken atomically by one, merged under WATCH.
    """

    def __init__(self, client: Redis, threshold: float, window: int,
                 prefix: str = "nearwatch:drift", baseline_windows: int = 0) -> None:
        self.client, self.threshold, self.window, self.prefix = client, threshold, window, prefix
        self.baseline_windows = baseline_windows
        self.state_key = f"{prefix}:state"
        self._counts_prefix = f"{prefix}:counts:"
        self._counts_match = "".join(  # the prefix literally, glob characters escaped
            "\\" + c if c in "*?[]\\" else c for c in self._counts_prefix) + "*"
        self._take_counts = client.register_script(_TAKE_COUNTS)

    def counts_key(self, version: str) -> str:
        return self._counts_prefix + version

    def check(self, current_version: str | None) -> DriftReport:
        """Close the windows that the counts since the last check fill; see ``DriftReport``.

        ``current_version`` None (no model serves): every count is discarded, the state kept.
        """
        keys = sorted({_text(k) for k in self.client.scan_iter(match=self._counts_match,
                                                                count=500)})
        taken = self._take_counts(keys=keys) if keys else []
        scored = flagged = discarded = 0
        bound: float | None = None
        for key, flat in zip(keys, taken, strict=True):
            fields = {_text(k): _text(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
            counts = int(fields.get("scored", 0)), int(fields.get("flagged", 0))
            if key[len(self._counts_prefix):] != current_version:
                discarded += counts[0]  # an old model's flags say nothing about the new one
                continue
            scored, flagged = counts
            bound = float(fields["bound"]) if "bound" in fields else None
        if current_version is None:
            return DriftReport(None, 0.0, [], False, discarded, 0)
        version = current_version

        reports: list[DriftReport] = []

        def merge(pipe: Any) -> None:  # redis-py re-runs it when the state key changed
            drift, lost = self._load(pipe, version), 0
            window_bound = drift.bound if bound is None else bound  # HSET may trail HINCRBY
            steps: list[DriftStep] = []
            pipe.multi()
            if window_bound is None:
                # nothing to test these against yet: hand them back (HINCRBY adds, so
                # concurrent increments stay exact) for the check after the bound arrives
                if scored or flagged:
                    pipe.hincrby(self.counts_key(version), "scored", scored)
                    pipe.hincrby(self.counts_key(version), "flagged", flagged)
            else:
                if drift.bound is not None and window_bound != drift.bound:
                    log.warning("drift: bound of %s changed: restarting", version)
                    lost, drift = drift.pending_scored, self._fresh()
                steps = drift.add(scored, flagged, window_bound)
            pipe.set(self.state_key, json.dumps({"version": version, "drift": drift.to_state()}))
            reports[:] = [DriftReport(
                version=version, statistic=drift.statistic, steps=steps,
                alarm=any(step.alarm for step in steps), discarded=discarded + lost,
                pending=drift.pending_scored)]

        self.client.transaction(merge, self.state_key)
        report = reports[0]
        if report.alarm:
            log.warning("drift alarm on %s: %s", version, [s for s in report.steps if s.alarm])
        return report

    def _load(self, client: Any, version: str | None) -> FlagRateDrift:
        raw = client.get(self.state_key)
        try:
            state = json.loads(raw) if raw is not None else None
            if state is None or state.get("version") != version:
                return self._fresh()
            drift = FlagRateDrift.from_state(state["drift"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # an unreadable state (corrupt, or from another release) must not stop every
            # later check: start this version's statistic again
            log.warning("drift state %s unreadable, starting afresh: %s", self.state_key, exc)
            return self._fresh()
        drift.threshold, drift.window = self.threshold, self.window  # the settings win
        return drift

    def _fresh(self) -> FlagRateDrift:
        return FlagRateDrift(self.threshold, self.window, self.baseline_windows)

    def statistic(self) -> float:
        """The persisted Shiryaev-Roberts statistic (0 before the first window)."""
        raw = self.client.get(self.state_key)
        try:
            return float(json.loads(raw)["drift"]["statistic"]) if raw is not None else 0.0
        except (ValueError, KeyError, TypeError):
            return 0.0  # unreadable: the next check starts afresh

    def reset(self) -> None:
        """Forget the statistic and pending counts (the counters in Redis are left alone)."""
        self.client.delete(self.state_key)

