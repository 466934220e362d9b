"""Issue 7: one retraining, in-process, against a real Redis and a real registry directory.

The buffer is filled the way workers fill it (``BufferWriter`` after scoring a batch), the
retraining is the code the ``nearwatch.retrain`` task runs. The service end to end (beat,
workers, hot reload, rollback on every worker) is in tests/test_retrain_service.py.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from nearwatch.detector import Detector
from nearwatch.detector.held_out import held_out_for_judging
from nearwatch.detector.store.registry import ModelRegistry
from nearwatch.detector.synthetic import LABEL_FIELD, generate_records
from nearwatch.scheduler.buffer import GOLDEN_ANOMALIES_KEY, pin_golden
from nearwatch.scheduler.feedback import FeedbackStore
from nearwatch.scheduler.lock import SingleFlight
from nearwatch.scheduler.retrain import LOCK_KEY, OUTCOMES_KEY, retrain_once
from nearwatch.worker.reference_buffer import BufferWriter
from nearwatch.worker.settings import Settings

from tests.service_fixtures import flushed_redis

REDIS_URL = "redis://127.0.0.1:6379/8"


@pytest.fixture
def redis_client() -> Iterator[Any]:
    yield from flushed_redis(REDIS_URL)


def make_settings(model_dir: Path, **extra: str) -> Settings:
    env = {"NEARWATCH_MODEL_DIR": str(model_dir), "NEARWATCH_REDIS_URL": REDIS_URL,
           "NEARWATCH_BROKER_URL": REDIS_URL, "NEARWATCH_BUFFER_BUCKETS": "1",
           "NEARWATCH_BUFFER_RECORDS": "20000", "NEARWATCH_RETRAIN_MIN_RECORDS": "1000"}
    env.update(extra)
    return Settings.from_env(env)


def champion_registry(tmp_path: Path, seed: int = 1, n: int = 3000, encoder: str = "identity",
                      **params: Any) -> tuple[ModelRegistry, Detector, list[dict[str, Any]]]:
    train = generate_records(n, anomaly_rate=0.0, seed=seed)
    champion = Detector(label_fields=(LABEL_FIELD,), encoder=encoder, **params).fit(train)
    champion.save(tmp_path / "champion")
    registry = ModelRegistry(tmp_path / "models")
    registry.add(tmp_path / "champion", promote=True)
    return registry, champion, train


def serve(client: Any, settings: Settings, detector: Detector, version: str,
          records: list[dict[str, Any]], batch: int = 500,
          p_value: float | None = None) -> None:
    """Score and buffer ``records`` like a worker; ``p_value`` overrides the scores' p-values
    (a champion that wrongly found them normal)."""
    writer = BufferWriter(client, settings.buffer)
    for start in range(0, len(records), batch):
        chunk = records[start:start + batch]
        results = detector.score_records(chunk, 3)
        for result in results:
            result.pop("index", None)
            if p_value is not None and "error" not in result:
                result.update(p_value=p_value, is_anomaly=False)
        assert writer.write(detector, version, chunk, results) > 0


def test_normal_traffic_promotes_and_records_the_decision(tmp_path: Path,
                                                           redis_client: Any) -> None:
    registry, champion, train = champion_registry(tmp_path)
    settings = make_settings(registry.root)
    pin_golden(redis_client, train, 1000)
    serve(redis_client, settings, champion, "v0001",
          generate_records(6000, anomaly_rate=0.02, seed=7))

    result = retrain_once(redis_client, registry, settings, "manual")

    assert result.outcome == "promoted", result.reasons
    assert registry.current_version() == result.version == "v0002"
    assert [h["version"] for h in registry.history()] == ["v0001", "v0002"]
    figures = result.figures
    assert figures["golden_records"] == 1000 and figures["buffer_records"] == 6000
    # the challenger calibrated on held-out traffic and its guarantee held on the gate window
    # calibration: the held-out records the champion did not flag
    assert figures["challenger_certified"]
    assert figures["calibration_records"] + figures["calibration_flagged_left_out"] == 1200
    assert 0 < figures["calibration_flagged_left_out"] < 60
    # 1000 golden records are too few to anchor the bound: the decision says what would
    assert "pin at least 2392 golden records" in figures["calibration_note"]
    assert figures["challenger_fpr_lower95"] <= figures["challenger_fpr_bound"] <= 0.01
    decision = registry.decision("v0002")
    assert decision is not None and decision["outcome"] == "promoted"
    assert int(redis_client.hget(OUTCOMES_KEY, "promoted")) == 1
    shown = CliRunner().invoke(_cli(), ["models", "show", "v0002"], env=_env(settings))
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["retraining"]["outcome"] == "promoted"


@pytest.mark.parametrize(("encoder", "labels"), [("identity", "feedback"), ("auto", "feedback"),
                                                 ("identity", "golden")])
def test_a_poisoned_challenger_is_rejected_and_the_champion_keeps_serving(
        tmp_path: Path, redis_client: Any, encoder: str, labels: str) -> None:
    """With the learned encoder ("auto") the confirmed anomalies also train the challenger:
    the gate judges it on the ones it did not train on (it would pass on the others). The
    labelled anomalies of a golden file (``golden --label-field``) judge it the same way."""
    registry, champion, _ = champion_registry(tmp_path, encoder=encoder)
    settings = make_settings(registry.root)
    normal = generate_records(5000, anomaly_rate=0.0, seed=8)
    # 10 % of the traffic: below the contamination limit (20 %), which would skip outright
    attack = saturated_while_idle(generate_records(600, anomaly_rate=0.0, seed=9))
    # the champion catches this kind: the analyst confirmed twenty of them
    labelled, poison = attack[:20], attack[20:]
    assert champion.predict(labelled).mean() > 0.5
    if labels == "golden":  # half train the challenger, half judge it
        pin_golden(redis_client, labelled, 1000, key=GOLDEN_ANOMALIES_KEY)
        # also given as a verdict: counted once, as the verdict (fewer than 4 verdicts train)
        FeedbackStore(redis_client, 1000).put(labelled[0]["id"], "anomaly", labelled[0])
    else:
        store = FeedbackStore(redis_client, 1000)
        for record in labelled:
            store.put(record["id"], "anomaly", record)
    # ... but the buffer was poisoned: the same kind of records, passed off as normal
    serve(redis_client, settings, champion, "v0001", normal)
    serve(redis_client, settings, champion, "v0001", poison, p_value=0.9)

    result = retrain_once(redis_client, registry, settings, "schedule")

    assert result.outcome == "rejected", result.figures
    assert any("labelled anomalies fell" in reason for reason in result.reasons)
    if labels == "golden":
        judged = [r for r in labelled[1:] if held_out_for_judging(r)]
        assert 0 < len(judged) < len(labelled) - 1
        assert result.figures["golden_anomalies_judged"] == len(judged)
        assert result.figures["golden_anomalies_trained"] == len(labelled) - 1 - len(judged)
        assert result.figures["gate_labelled_held_out"] == len(judged)
    assert result.figures["challenger_recall"] < result.figures["champion_recall"]
    assert registry.current_version() == "v0001"  # the champion serves
    assert registry.versions() == ["v0001", "v0002"]  # the challenger is kept, for inspection
    decision = registry.decision("v0002")
    assert decision is not None and decision["outcome"] == "rejected"
    assert decision["reasons"] == result.reasons
    listed = CliRunner().invoke(_cli(), ["models", "list"], env=_env(settings))
    assert "v0002" in listed.output and "retrain: rejected" in listed.output
    shown = CliRunner().invoke(_cli(), ["models", "show", "v0002"], env=_env(settings))
    assert "labelled anomalies fell" in shown.output
    # an operator may still promote it by hand, told what the gate found
    promoted = CliRunner().invoke(_cli(), ["models", "promote", "v0002"], env=_env(settings))
    assert promoted.exit_code == 0 and "warning: the retraining gate rejected v0002" in \
        promoted.stderr and "labelled anomalies fell" in promoted.stderr, promoted.output


def test_too_little_traffic_or_a_contaminated_window_skips(tmp_path: Path,
                                                          redis_client: Any) -> None:
    registry, champion, _ = champion_registry(tmp_path)
    settings = make_settings(registry.root)
    serve(redis_client, settings, champion, "v0001", generate_records(500, seed=3))
    skipped = retrain_once(redis_client, registry, settings)
    assert skipped.outcome == "skipped" and "fewer than" in skipped.reasons[0]
    # 1200 records hold out 480: 240 calibrate, too few to certify alpha = 0.01 (299)
    serve(redis_client, settings, champion, "v0001", generate_records(700, seed=5))
    uncertifiable = retrain_once(redis_client, registry, settings)
    assert champion.certified_ and uncertifiable.outcome == "skipped", uncertifiable
    assert "that certify alpha=0.01" in uncertifiable.reasons[0], uncertifiable.reasons
    assert "training_records" not in uncertifiable.figures  # skipped before any fit
    storm = [r for r in generate_records(8000, anomaly_rate=0.5, seed=4) if r[LABEL_FIELD]]
    serve(redis_client, settings, champion, "v0001", storm)
    contaminated = retrain_once(redis_client, registry, settings)
    assert contaminated.outcome == "skipped" and "not learning from it" in \
        contaminated.reasons[0]
    assert registry.versions() == ["v0001"]


def test_a_held_lock_skips_and_concurrent_triggers_train_once(tmp_path: Path,
                                                              redis_client: Any) -> None:
    registry, champion, _ = champion_registry(tmp_path)
    settings = make_settings(registry.root)
    serve(redis_client, settings, champion, "v0001", generate_records(6000, seed=7))
    with SingleFlight(redis_client, LOCK_KEY, 60) as held:
        assert held.token is not None
        blocked = retrain_once(redis_client, registry, settings)
    assert blocked.outcome == "skipped" and "holds the lock" in blocked.reasons[0]

    start = threading.Barrier(4)
    outcomes: list[str] = []

    def trigger() -> None:
        start.wait()
        outcomes.append(retrain_once(redis_client, registry, settings, "schedule").outcome)

    threads = [threading.Thread(target=trigger) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    trained = [o for o in outcomes if o != "skipped"]
    assert len(trained) == 1 and outcomes.count("skipped") == 3, outcomes
    assert registry.versions() == ["v0001", "v0002"]
    assert redis_client.get(LOCK_KEY) is None  # released


def test_a_stopped_retraining_frees_the_lock_and_is_no_failure(tmp_path: Path,
                                                               redis_client: Any) -> None:
    """`nearwatch retrain` stopped with SIGTERM kept the lock for its hour-long TTL (every
    retraining meanwhile: "skipped"); Ctrl-C was counted as a failure without a reason."""
    import signal
    import subprocess
    import sys
    import time

    registry, _, _ = champion_registry(tmp_path)
    settings = make_settings(registry.root)
    script = (  # a retraining that holds the lock for a while, as fitting does
        "import time\n"
        "from nearwatch.detector.store.registry import ModelRegistry\n"
        "ModelRegistry.load_current = lambda self: time.sleep(60)\n"
        "from nearwatch.cli import main\n"
        "main(['retrain'])\n")
    process = subprocess.Popen([sys.executable, "-c", script], env={
        **os.environ, **_env(settings)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while redis_client.get(LOCK_KEY) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert redis_client.get(LOCK_KEY) is not None, process.communicate(timeout=5)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 128 + signal.SIGTERM
    assert redis_client.get(LOCK_KEY) is None
    last = json.loads(redis_client.get("nearwatch:retrain:last"))
    assert last["outcome"] == "skipped" and "interrupted (SystemExit)" in last["reasons"][0]
    assert int(redis_client.hget("nearwatch:retrain:outcomes", "skipped")) == 1
    assert redis_client.hget("nearwatch:retrain:outcomes", "failed") is None


def test_an_expired_lock_taken_by_another_retraining_stops_the_promotion(
        tmp_path: Path, redis_client: Any) -> None:
    registry, champion, _ = champion_registry(tmp_path)
    settings = make_settings(registry.root)
    serve(redis_client, settings, champion, "v0001", generate_records(6000, seed=7))
    original_promote = registry.promote

    def promote_after_lock_expiry(version: str, reason: str = "manual", guard: Any = None
                                  ) -> None:
        redis_client.set(LOCK_KEY, "999999")  # our lock expired; another run took it
        original_promote(version, reason, guard)

    registry.promote = promote_after_lock_expiry  # type: ignore[method-assign]
    result = retrain_once(redis_client, registry, settings)
    assert result.outcome == "failed" and "expired" in result.reasons[-1]
    assert registry.current_version() == "v0001"
    assert redis_client.get(LOCK_KEY) == b"999999"  # not released: not ours


def test_rollback_goes_back_through_the_promotions(tmp_path: Path, redis_client: Any) -> None:
    registry, champion, _ = champion_registry(tmp_path)
    settings = make_settings(registry.root)
    serve(redis_client, settings, champion, "v0001", generate_records(6000, seed=7))
    assert retrain_once(redis_client, registry, settings).outcome == "promoted"
    runner = CliRunner()
    rolled = runner.invoke(_cli(), ["models", "rollback"], env=_env(settings))
    assert rolled.exit_code == 0 and "v0001 is the current model" in rolled.output
    assert registry.current_version() == "v0001"
    again = runner.invoke(_cli(), ["models", "rollback"], env=_env(settings))
    assert again.exit_code != 0 and "no earlier promotion" in again.output
    history = runner.invoke(_cli(), ["models", "history"], env=_env(settings))
    assert "v0001" in history.output and "v0002" not in history.output


def saturated_while_idle(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One kind of anomaly (as detector/synthetic.py injects it): CPU saturated at idle
    load, with failing retries."""
    return [{**r, "id": f"x{r['id']}", "load": 0.1, "cpu_pct": 95.0, "retries": 5,
             "status": "503"} for r in records]


def _cli() -> Any:
    from nearwatch.cli import main

    return main


def _env(settings: Settings) -> dict[str, str]:
    return {"NEARWATCH_MODEL_DIR": str(settings.model_dir), "NEARWATCH_REDIS_URL": REDIS_URL,
            "NEARWATCH_BROKER_URL": REDIS_URL}


def test_feedback_moves_the_next_model_in_the_direction_given(tmp_path: Path,
                                                              redis_client: Any) -> None:
    """20 verdicts of each kind, a learned encoder (the default): the false alarms of the
    kind called normal mostly stop (tolerance: at most 20 % still flagged, from >= 90 %)
    and recall on the kind called anomalous rises by at least 0.3 over the champion and
    over the same retraining without the verdicts. Measured on fresh records of each kind
    (seeded; measured: false alarms 1.0 -> 0.02, recall 0.01 -> 0.98, and 0.03 without
    the verdicts)."""
    train = generate_records(3000, anomaly_rate=0.0, seed=1)
    champion = Detector(label_fields=(LABEL_FIELD,)).fit(train)  # encoder "auto": learned
    champion.save(tmp_path / "champion")
    registry = ModelRegistry(tmp_path / "models")
    registry.add(tmp_path / "champion", promote=True)
    settings = make_settings(registry.root)
    serve(redis_client, settings, champion, "v0001",
          generate_records(6000, anomaly_rate=0.0, seed=7))

    def new_retry_policy(records: list[dict[str, Any]], tag: str) -> list[dict[str, Any]]:
        return [{**r, "id": f"{tag}{r['id']}", "retries": 3} for r in records
                if r["service"] == "cache"]  # a legitimate change: flagged by the champion

    def slow_path(records: list[dict[str, Any]], tag: str) -> list[dict[str, Any]]:
        return [{**r, "id": f"{tag}{r['id']}", "latency_ms": r["latency_ms"] * 10}
                for r in records]  # an anomaly the champion mostly misses

    fresh_normal_kind = new_retry_policy(generate_records(3000, seed=13), "g")[:400]
    fresh_anomaly_kind = slow_path(generate_records(400, seed=14), "b")
    champion_fp = champion.predict(fresh_normal_kind).mean()
    champion_recall = champion.predict(fresh_anomaly_kind).mean()
    assert champion_fp >= 0.9 and champion_recall <= 0.5

    without = retrain_once(redis_client, registry, settings)
    assert without.outcome == "promoted", without.reasons
    baseline = registry.load(str(without.version))
    registry.rollback()
    store = FeedbackStore(redis_client, 1000)
    for record in new_retry_policy(generate_records(400, seed=11), "f")[:20]:
        store.put(record["id"], "normal", record)
    confirmed = slow_path(generate_records(20, seed=12), "a")
    for record in confirmed:
        store.put(record["id"], "anomaly", record)
    judged = sum(held_out_for_judging(record) for record in confirmed)  # by a hash of the id
    assert 5 <= judged <= 15

    result = retrain_once(redis_client, registry, settings)

    assert result.outcome == "promoted", result.reasons
    # the anomaly verdicts: about half train the challenger, the others judge it at the gate
    assert result.figures["feedback_normal"] == 20
    assert result.figures["feedback_anomaly"] == 20 - judged
    assert result.figures["gate_labelled_held_out"] == judged
    challenger = registry.load(str(result.version))
    assert challenger.predict(fresh_normal_kind).mean() <= 0.2
    assert baseline.predict(fresh_normal_kind).mean() >= 0.9
    recall = challenger.predict(fresh_anomaly_kind).mean()
    assert recall >= champion_recall + 0.3
    assert recall >= baseline.predict(fresh_anomaly_kind).mean() + 0.3
    # and the guarantee still holds on normal traffic
    assert challenger.predict(generate_records(3000, anomaly_rate=0.0, seed=21)).mean() <= 0.02


def test_feedback_command_finds_the_record_or_takes_it_inline(tmp_path: Path,
                                                              redis_client: Any) -> None:
    registry, champion, _ = champion_registry(tmp_path)
    settings = make_settings(registry.root)
    records = generate_records(600, anomaly_rate=0.0, seed=7)
    serve(redis_client, settings, champion, "v0001", records)
    runner = CliRunner()
    found = runner.invoke(_cli(), ["feedback", "--id", str(records[42]["id"]), "--label",
                                   "normal"], env=_env(settings))
    assert found.exit_code == 0, found.output
    assert "is normal (record from buffer)" in found.output
    inline = runner.invoke(_cli(), ["feedback", "--id", "7", "--label", "anomaly", "--record",
                                    json.dumps({"id": 7, "latency_ms": 1e9})], env=_env(settings))
    assert inline.exit_code == 0 and "(record from inline)" in inline.output
    missing = runner.invoke(_cli(), ["feedback", "--id", "nope", "--label", "anomaly"],
                            env=_env(settings))
    assert missing.exit_code != 0 and "give the record inline" in missing.output
    bad = runner.invoke(_cli(), ["feedback", "--id", "7", "--label", "maybe"], env=_env(settings))
    assert bad.exit_code != 0
    verdicts = {v.record_id: v for v in FeedbackStore(redis_client, 100).all()}
    assert verdicts[records[42]["id"]].label == "normal"
    assert verdicts[records[42]["id"]].record == records[42]
    assert verdicts[7].label == "anomaly"
    assert redis_client.hgetall("nearwatch:feedback:total") == {b"normal": b"1", b"anomaly": b"1"}


@pytest.mark.parametrize(("golden", "source"), [(1000, "traffic"), (3000, "golden")])
def test_anomalies_in_the_traffic_do_not_drag_the_threshold_up(
        tmp_path: Path, redis_client: Any, golden: int, source: str) -> None:
    """Traffic with 1 % anomalies (as many as alpha allows false alarms): calibrating on every
    held-out record put the threshold among the anomalies (recall at threshold 0.74 -> 0.16
    with the learned encoder); on the records the champion did not flag, the challenger keeps
    the champion's recall and its false-positive rate stays within alpha on fresh traffic."""
    from nearwatch.scheduler.gate import clopper_pearson_lower

    registry, champion, train = champion_registry(tmp_path, n=6000)
    settings = make_settings(registry.root)
    pin_golden(redis_client, train, golden)
    serve(redis_client, settings, champion, "v0001",
          generate_records(8000, anomaly_rate=0.01, seed=2))
    result = retrain_once(redis_client, registry, settings)
    assert result.outcome == "promoted", result.reasons
    assert result.figures["calibration_source"] == source  # golden: 1500 >= 4 x 299
    challenger = registry.load(str(result.version))
    fresh = generate_records(30000, anomaly_rate=0.01, seed=3)
    truth = [bool(r[LABEL_FIELD]) for r in fresh]
    recall = {}
    for name, model in (("champion", champion), ("challenger", challenger)):
        flags = model.predict(fresh)
        recall[name] = sum(f for f, t in zip(flags, truth, strict=True) if t) / sum(truth)
        false_alarms = sum(f for f, t in zip(flags, truth, strict=True) if not t)
        assert clopper_pearson_lower(false_alarms, len(truth) - sum(truth)) <= 0.01, name
    assert recall["challenger"] >= recall["champion"] - 0.1, recall


def test_prune_keeps_the_current_version_and_the_rollback_targets(tmp_path: Path,
                                                                  redis_client: Any) -> None:
    from nearwatch.worker.remote_registry import MirroredRegistry
    from nearwatch.worker.remote_store import RedisModelStore

    registry, _, _ = champion_registry(tmp_path)
    bundle = tmp_path / "champion"
    stores = [registry, MirroredRegistry(RedisModelStore(redis_client), tmp_path / "cache")]
    for store in stores:
        if store is not registry:
            store.add(bundle, promote=True)
        for number in range(2, 9):  # v0002..v0008; promoted: 3, 5, 6, 8
            version = store.add(bundle, promote=number in (3, 5, 6, 8))
            assert version == f"v{number:04d}"
        removed = store.prune(keep=4, protect_recent=3)
        # 8 versions, keep 4: the oldest four not current nor among the last 3 promotions
        assert removed == ["v0001", "v0002", "v0003", "v0004"], store
        assert store.versions() == ["v0005", "v0006", "v0007", "v0008"]
        assert store.current_version() == "v0008"
        assert store.rollback() == "v0006" and store.rollback() == "v0005"
        # the newest version stays, though rolled back from: only older ones go
        assert store.prune(keep=1, protect_recent=3) == ["v0006", "v0007"]
        assert store.versions() == ["v0005", "v0008"] and store.current_version() == "v0005"
    assert not [k for k in redis_client.scan_iter("nearwatch:models:v0001*")]
    assert not (registry.root / "v0001").exists()
    assert not [p for p in registry.root.iterdir() if p.name.startswith(".removing")]


def test_false_positive_rate_does_not_compound_across_retrainings(tmp_path: Path,
                                                                  redis_client: Any) -> None:
    """Calibrated on the traffic its champion did not flag, each challenger lost the normal
    tail its champion flags: false alarms grew with every promotion (0.0036 -> 0.0179 over
    eight at alpha = 0.01, each "certified"). With golden records pinned, half of them
    calibrate: two generations later the false-positive rate on fresh normals still keeps
    the certified bound (alpha = 0.05 here so that one generation's cut is measurable)."""
    from nearwatch.scheduler.gate import clopper_pearson_lower

    registry, champion, train = champion_registry(tmp_path, n=4000, alpha=0.05)
    settings = make_settings(registry.root, NEARWATCH_RETRAIN_MIN_RECORDS="1000")
    pin_golden(redis_client, train, 2000)
    fresh = generate_records(20000, anomaly_rate=0.0, seed=11)
    model, version = champion, "v0001"
    for generation in range(2):
        serve(redis_client, settings, model, version,
              generate_records(5000, anomaly_rate=0.0, seed=20 + generation))
        result = retrain_once(redis_client, registry, settings)
        assert result.outcome == "promoted", result.reasons
        assert result.figures["calibration_source"] == "golden"
        assert result.figures["calibration_records"] == 1000
        model, version = registry.load(str(result.version)), str(result.version)
        false_alarms = int(model.predict(fresh).sum())
        assert clopper_pearson_lower(false_alarms, len(fresh)) <= model.fpr_bound_ <= 0.05, (
            generation, false_alarms / len(fresh))


def test_the_gate_keeps_the_champions_unexplained_flags() -> None:
    """A window 15 % anomalous (under the 20 % flag-rate cap, no verdicts): a challenger that
    learned those anomalies as normal flagged 9.7 % of it against the champion's 15.7 % and
    was promoted (recall 0.875 -> 0.517 in an operator's trial). The champion flags far more
    than its false-positive bound explains, so the gate wants most of those flags kept."""
    from nearwatch.scheduler.gate import GateMargins, judge

    params = {"label_fields": (LABEL_FIELD,), "encoder": "identity"}
    champion = Detector(**params).fit(generate_records(3000, anomaly_rate=0.0, seed=1))
    learned_them = Detector(**params).fit(generate_records(3000, anomaly_rate=0.15, seed=2))
    clean = Detector(**params).fit(generate_records(3000, anomaly_rate=0.0, seed=3))
    window = generate_records(1500, anomaly_rate=0.15, seed=4)
    margins = GateMargins()
    poisoned = judge(champion, learned_them, window, [], [False] * len(window), margins)
    assert poisoned.figures["window_excess_flags"] > 50, poisoned.figures
    assert not poisoned.passed
    assert any("it would learn them as normal" in r for r in poisoned.reasons), poisoned.reasons
    def kept(decision: Any) -> bool:
        return not any("learn them as normal" in r for r in decision.reasons)

    assert kept(judge(champion, clean, window, [], [False] * len(window), margins))
    # records an analyst called normal may be unflagged: they are not counted as anomalies
    called = [bool(f) for f in champion.predict(window)]
    assert kept(judge(champion, learned_them, window, [], called, margins))


def test_records_the_champion_cannot_read_neither_fail_nor_reshape_the_retraining(
        tmp_path: Path, redis_client: Any) -> None:
    """One feedback record with a string in a numeric field failed every later retraining;
    one with an unknown field, or a golden file with other columns, changed the promoted
    model's schema (its buffer orphaned: "0 buffer records" next time). Such records are left
    out and named; every record is reduced to the champion's fields."""
    from nearwatch.worker.reference_buffer import record_schema

    registry, champion, train = champion_registry(tmp_path)
    settings = make_settings(registry.root)
    pin_golden(redis_client, [*train[:900], {"a": 1, "b": 2}, {"a": 3, "b": 4}], 1000)
    store = FeedbackStore(redis_client, settings.retrain.feedback_max)
    store.put("bad-kind", "normal", {**train[1], "id": "bad-kind", "latency_ms": "abc"})
    store.put("foreign", "normal", {"id": "foreign", "foo": 1})
    store.put("extra", "normal", {**train[2], "id": "extra", "retries": 3})
    traffic = [{**r, "new_field": i % 7} for i, r in enumerate(
        generate_records(6000, anomaly_rate=0.0, seed=7))]
    # an anomaly verdict whose inline record is unreadable still removes the buffer's copy
    store.put(traffic[5]["id"], "anomaly", {**traffic[5], "latency_ms": "abc"})
    serve(redis_client, settings, champion, "v0001", traffic)
    result = retrain_once(redis_client, registry, settings)
    assert result.outcome == "promoted", result.reasons
    figures = result.figures
    assert figures["buffer_records"] == 5999
    assert sorted(figures["feedback_unreadable"]) == sorted(
        ["bad-kind", "foreign", traffic[5]["id"]]), figures
    assert figures["golden_unreadable"] == 2 and figures["feedback_normal"] == 1
    challenger = registry.load(str(result.version))
    assert record_schema(challenger) == record_schema(champion)
    assert challenger.n_features_ == champion.n_features_
    serve(redis_client, settings, challenger, str(result.version), traffic[:2000])
    again = retrain_once(redis_client, registry, settings)
    assert again.figures["buffer_records"] >= 5999, again.figures  # the same buffer


def test_beat_exports_an_empty_buffer_as_zero(tmp_path: Path, redis_client: Any) -> None:
    """Before any worker wrote to the buffer (or with NEARWATCH_BUFFER=0 on all of them) the
    series was absent, so NearwatchReferenceBufferEmpty (`max(...) == 0`) could never fire."""
    from nearwatch.scheduler.metrics import SchedulerCollector
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(SchedulerCollector(redis_client, make_settings(tmp_path / "models")))
    text = generate_latest(registry).decode()
    assert "\nnearwatch_reference_buffer_records 0.0\n" in text, text
