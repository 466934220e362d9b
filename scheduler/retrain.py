"""One retraining: buffer + golden records → challenger → gate → promote or keep the champion.

``retrain_once`` is the body of the ``nearwatch.retrain`` task and of ``nearwatch retrain``:

1. single flight (``scheduler/lock.py``): a retraining that finds the lock held is *skipped*;
2. the champion (the registry's current version) and its recent traffic: the buffer of its
   schema version (``scheduler/buffer.py``), the pinned golden sample of the original training
   data, and the analyst verdicts (``scheduler/feedback.py``);
3. the buffer is shuffled and split: a held-out part (half calibrates the challenger, half is
   the gate window) and the training part, of which only records with
   ``p_value >= min_p`` become references. Half the golden records calibrate when that is
   enough (``scheduler/golden.py``), else the held-out records the champion did not flag (all of
   them would put the stream's anomalies among the calibration scores: recall at threshold
   0.74 -> 0.16). Records with an anomaly verdict are removed everywhere;
4. a challenger with the champion's parameters (α, δ, k, encoder, ...) is fitted on training
   + golden records (golden share ``golden_fraction``) + records labelled normal, with
   labelled anomalies (verdicts, the golden file's) as hard negatives, and a false positive's
   nearest normal references as positive pairs when the encoder learns;
5. the gate (``scheduler/gate.py``) compares challenger and champion; the challenger is
   added to the registry either way, with the decision and every figure beside it, and
   promoted (pointer swap; workers hot-reload) only when it passed and the lock is still ours.

Any failure leaves the champion serving and is counted (``failed``); an interrupted one is
``skipped``. Outcomes, durations and the last result are in Redis (``scheduler/metrics.py``).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from nearwatch.worker.reference_buffer import record_schema
from nearwatch.worker.settings import Settings

from . import fields as usable
from .buffer import BufferEntry, buffer_pace, golden_records, read_buffer
from .feedback import FeedbackStore, Verdict, canonical_id, split_labelled
from .gate import GateMargins, judge
from .golden import golden_anomalies, split_golden
from .lock import LockLost, SingleFlight

if TYPE_CHECKING:
    from nearwatch.detector import Detector
    from nearwatch.detector.store.registry import ModelRegistry
    from redis import Redis

log = logging.getLogger("nearwatch.retrain")
LOCK_KEY = "nearwatch:retrain:lock"
OUTCOMES_KEY = "nearwatch:retrain:outcomes"  # hash: outcome -> count
DURATION_KEY = "nearwatch:retrain:duration"  # hash: sum, count (seconds)
LAST_KEY = "nearwatch:retrain:last"  # JSON of the last RetrainResult
OUTCOMES = ("promoted", "rejected", "failed", "skipped")
PAIRS_PER_FALSE_POSITIVE = 3


@dataclass
class RetrainResult:
    outcome: str  # one of OUTCOMES
    trigger: str
    champion: str | None = None
    version: str | None = None  # the challenger's registry version, once added
    reasons: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0
    duration_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def retrain_once(client: Redis, registry: ModelRegistry, settings: Settings,
                 trigger: str = "manual") -> RetrainResult:
    """Run one retraining (see the module docstring); never raises, except to pass on an
    interruption (Ctrl-C, a stop signal) once the lock is freed and the outcome counted."""
    result = RetrainResult(outcome="failed", trigger=trigger, started_at=time.time())
    started = time.perf_counter()
    lock = SingleFlight(client, LOCK_KEY, settings.retrain.lock_ttl_s)
    try:
        if lock.acquire() is None:
            result.outcome = "skipped"
            result.reasons = [f"another retraining holds the lock (token {lock.holder()}, "
                              f"{max(int(client.pttl(LOCK_KEY)), 0) // 1000} s left; if none "
                              f"runs: DEL {LOCK_KEY})"]
        else:
            _retrain(client, registry, settings, lock, result)
    except Exception as exc:  # the champion keeps serving; the failure is counted
        log.exception("retraining failed")
        result.outcome = "failed"
        result.reasons.append(f"{type(exc).__name__}: {exc}")
    except (KeyboardInterrupt, SystemExit) as exc:  # Ctrl-C, a stop signal: not a failure
        if result.outcome not in ("promoted", "rejected"):  # a decision taken stays taken
            result.outcome = "skipped"
        result.reasons.append(f"interrupted ({type(exc).__name__}) before it finished")
        raise
    finally:
        try:
            lock.release()
        except Exception:  # Redis gone: the lock expires on its own
            log.exception("could not release the retraining lock")
        result.duration_s = time.perf_counter() - started
        _account(client, registry, result)
    log.warning("retraining (%s): %s", trigger, " ".join(filter(None, (
        result.outcome, result.version, "; ".join(result.reasons)))))
    return result


def _retrain(client: Redis, registry: ModelRegistry, settings: Settings, lock: SingleFlight,
             result: RetrainResult) -> None:
    result.champion, champion = registry.load_current()
    given = FeedbackStore(client, settings.retrain.feedback_max).all()
    verdicts = usable.readable_verdicts(champion, given, result.figures)  # ids: all verdicts
    anomaly_ids = {_id_key(v.record_id) for v in given if v.label == "anomaly"} - {None}
    entries = usable.on_champion_fields(champion, [
        e for e in read_buffer(client, record_schema(champion), settings.buffer)
        if _id_key(e.record_id) not in anomaly_ids])
    result.figures["buffer_records"] = len(entries)
    if len(entries) < settings.retrain.min_records:
        result.outcome = "skipped"
        result.reasons.append(f"{len(entries)} buffer records, fewer than "
                              f"NEARWATCH_RETRAIN_MIN_RECORDS={settings.retrain.min_records}"
                              f"{buffer_pace(settings.buffer, settings.retrain.min_records)}")
        return
    rng = np.random.default_rng(int(lock.token or 0))
    shuffled = [entries[i] for i in rng.permutation(len(entries)).tolist()]
    n_held = int(len(shuffled) * settings.retrain.holdout_fraction)
    held_out = [e.record for e in shuffled[: n_held // 2]]
    window = [e.record for e in shuffled[n_held // 2: n_held]]
    normal_ids = {_id_key(v.record_id) for v in given if v.label == "normal"} - {None}
    called_normal = [_id_key(e.record_id) in normal_ids for e in shuffled[n_held // 2: n_held]]
    training = [e for e in shuffled[n_held:] if e.p_value >= settings.buffer.min_p]
    golden_calibration, golden = split_golden(usable.readable_records(
        champion, golden_records(client), "golden", result.figures), champion, rng)
    if golden_calibration:  # clean normals the operator pinned: no champion in the loop
        calibration = golden_calibration
        result.figures.update(calibration_source="golden")
    else:
        held_flags = _flags(champion, held_out)
        calibration = [r for r, flagged in zip(held_out, held_flags, strict=True)
                       if not flagged]
        result.figures.update(calibration_source="traffic", calibration_flagged_left_out=len(
            held_out) - len(calibration), calibration_note=usable.traffic_note(champion))
    flag_rate = float(np.mean(_flags(champion, window))) if window else 0.0
    result.figures.update(champion_window_flag_rate=flag_rate, gate_records=len(window),
                          calibration_records=len(calibration))
    if flag_rate > settings.retrain.max_flag_rate:
        result.outcome = "skipped"
        result.reasons.append(f"the champion flags {flag_rate:.1%} of the recent window, above "
                              f"NEARWATCH_RETRAIN_MAX_FLAG_RATE="
                              f"{settings.retrain.max_flag_rate}: not learning from it")
        return
    needed = usable.calibration_needed(champion)
    if len(calibration) < needed:  # the gate would reject the uncertified challenger: no fit
        result.outcome = "skipped"
        result.reasons.append(
            f"{len(calibration)} held-out calibration records (half of NEARWATCH_RETRAIN_HOLDOUT="
            f"{settings.retrain.holdout_fraction} of {len(entries)}, less flagged ones), fewer "
            f"than the {needed} that certify alpha={champion.alpha}: wait for more traffic, or "
            f"pin {8 * needed} golden records (`nearwatch golden`)")
        return
    trained_on, judged_on = split_labelled([v for v in verdicts if v.label == "anomaly"])
    golden_trained, golden_judged = golden_anomalies(
        client, champion, result.figures,
        {key for v in given if (key := _id_key(v.record_id)) is not None})
    trained_on, judged_on = trained_on + golden_trained, judged_on + golden_judged
    kept = [v for v in verdicts if v.label == "normal"] + trained_on
    references, pairs, anomalies = _training_set(golden, champion, training, kept,
                                                 settings, result.figures)
    challenger = _fit_challenger(champion, references, calibration, pairs, anomalies,
                                 result.figures)
    result.figures["gate_labelled_held_out"] = len(judged_on)
    decision = judge(champion, challenger, window, [v.record for v in judged_on], called_normal,
                     GateMargins(settings.retrain.auroc_margin, settings.retrain.recall_margin))
    result.figures.update(decision.figures)
    result.reasons.extend(decision.reasons)
    with tempfile.TemporaryDirectory(prefix="nearwatch-challenger-") as directory:
        bundle = Path(directory) / "bundle"
        challenger.save(bundle, signing_key=settings.bundle_key)
        result.version = registry.add(bundle)
    # "passed" until the pointer has moved: a crash in between never reads as promoted
    result.outcome = "passed" if decision.passed else "rejected"
    registry.record_decision(result.version, _decision(result))
    if decision.passed:
        try:
            registry.promote(result.version, reason=f"retrain ({result.trigger})",
                             guard=lock.check)
            result.outcome = "promoted"
        except LockLost as exc:
            result.outcome = "failed"
            result.reasons.append(str(exc))
        finally:
            if result.outcome == "passed":  # promote raised something else
                result.outcome = "failed"
            registry.record_decision(result.version, _decision(result))
    try:  # bounded registry: the oldest versions beyond the setting go, never rollback targets
        result.figures["pruned"] = registry.prune(settings.retrain.keep_versions)
    except Exception:
        log.exception("could not prune the model registry")


def _training_set(golden: list[Any], champion: Detector, training: list[BufferEntry],
                  verdicts: list[Verdict], settings: Settings, figures: dict[str, Any]
                  ) -> tuple[list[Any], list[tuple[int, int, int]] | None, list[Any] | None]:
    """References (buffer + golden + records labelled normal), pairs, known anomalies."""
    records = [e.record for e in training]
    fraction = settings.buffer.golden_fraction
    wanted = int(round(len(records) * fraction / (1.0 - fraction))) if fraction else 0
    if golden and wanted:
        chosen = np.random.default_rng(len(records)).permutation(len(golden))[:wanted]
        golden = [golden[i] for i in chosen.tolist()]
    else:
        golden = []
    normals = [v.record for v in verdicts if v.label == "normal"]
    anomalies = [v.record for v in verdicts if v.label == "anomaly"]
    references = records + golden + normals
    pairs = None
    if normals and champion.encoder != "identity":
        pairs = _nearest_pairs(champion, records + golden, normals, len(records) + len(golden))
    figures.update(buffer_training_records=len(records), golden_records=len(golden),
                   feedback_normal=len(normals), feedback_anomaly=len(anomalies),
                   feedback_pairs=0 if pairs is None else len(pairs))
    return references, pairs, anomalies or None


def _nearest_pairs(champion: Detector, normal: list[Any], false_positives: list[Any],
                   offset: int) -> list[tuple[int, int, int]] | None:
    """(false positive, one of its nearest normal references, similar): the supervision that
    pulls a false positive's kind towards normal. Positions index the references list."""
    try:
        embed = champion.embedder_.embed
        reference = embed(champion.feature_encoder_.transform(normal))
        queries = embed(champion.feature_encoder_.transform(false_positives))
    except ValueError:
        log.warning("feedback records the champion cannot read: no pairs from them")
        return None
    pairs: list[tuple[int, int, int]] = []
    for i, query in enumerate(queries):
        distances = ((reference - query) ** 2).sum(axis=1)
        nearest = np.argsort(distances)[:PAIRS_PER_FALSE_POSITIVE]
        pairs.extend((offset + i, int(j), 1) for j in nearest.tolist())
    return pairs


def _fit_challenger(champion: Detector, references: list[Any], calibration: list[Any],
                    pairs: list[tuple[int, int, int]] | None, anomalies: list[Any] | None,
                    figures: dict[str, Any]) -> Detector:
    from nearwatch.detector import Detector

    started = time.perf_counter()
    challenger = Detector(**champion.get_params())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an uncertified threshold is judged by the gate
        challenger.fit(references, pairs=pairs, anomalies=anomalies, calibration=calibration)
    figures.update(training_records=len(references), fit_seconds=round(
        time.perf_counter() - started, 3), challenger_model=challenger.model_version_)
    return challenger


def _flags(detector: Detector, records: list[Any]) -> list[bool]:
    """Which records ``detector`` flags (or cannot read)."""
    if not records:
        return []
    results = detector.score_records(records, n_neighbours=0)
    return [r.get("is_anomaly") is True or "error" in r for r in results]


def _decision(result: RetrainResult) -> dict[str, Any]:
    return {"outcome": result.outcome, "champion": result.champion,
            "trigger": result.trigger, "time": result.started_at,
            "reasons": list(result.reasons), "figures": dict(result.figures)}


def _account(client: Redis, registry: ModelRegistry, result: RetrainResult) -> None:
    """Count the outcome in Redis (exported by scheduler/metrics.py); best effort."""
    try:
        with client.pipeline(transaction=True) as pipe:
            pipe.hincrby(OUTCOMES_KEY, result.outcome, 1)
            pipe.hincrbyfloat(DURATION_KEY, "sum", result.duration_s)
            pipe.hincrby(DURATION_KEY, "count", 1)
            pipe.set(LAST_KEY, json.dumps(result.to_json(), default=str))
            pipe.execute()
    except Exception:
        log.exception("could not record the retraining outcome in Redis")


def _id_key(record_id: Any) -> str | None:
    """Ids as the feedback store compares them; a record without an id matches none."""
    return None if record_id is None else canonical_id(record_id)

