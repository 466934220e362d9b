"""Service commands fail with one `Error: ...` line naming what to change, not a traceback.

No test here needs Redis: NEARWATCH_REDIS_URL points at a closed port, so a command that
reached Redis before its own check would fail with a different message.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from nearwatch.detector.errors import BundleError
from nearwatch.detector.store.registry import POINTER, ModelRegistry
from nearwatch.scheduler.feedback import FeedbackStore
from nearwatch.worker.settings import Settings, SettingsError

from nearwatch.cli import main

NO_REDIS = "redis://127.0.0.1:1/15"  # nothing listens there


def _run(*args: str, **env: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"NEARWATCH_REDIS_URL": NO_REDIS, **env})


def _one_line_error(result: Result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not a traceback
    assert "Traceback" not in result.output
    return result.output


def _command(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``nearwatch ARGS`` in a fresh process (the worker changes process-wide state)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NEARWATCH_")}
    environ.update({"NEARWATCH_REDIS_URL": NO_REDIS, "NEARWATCH_METRICS_PORT": "0", **env})
    return subprocess.run([sys.executable, "-m", "nearwatch.cli", *args], env=environ,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture()
def busy_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_alerts_on_a_busy_metrics_port(busy_port: int) -> None:
    out = _one_line_error(_run("alerts", "--jsonl", "-", "--stop-when-idle",
                               NEARWATCH_METRICS_HOST="127.0.0.1",
                               NEARWATCH_ALERT_METRICS_PORT=str(busy_port)))
    assert f"cannot serve metrics on 127.0.0.1:{busy_port}" in out
    assert "(NEARWATCH_ALERT_METRICS_PORT)" in out


@pytest.mark.parametrize(("env", "expected"), [
    ({"NEARWATCH_BROKER_URL": "http://127.0.0.1:6379"},
     "NEARWATCH_BROKER_URL='http://127.0.0.1:6379': unknown broker transport 'http'"),
    ({"NEARWATCH_LOG_LEVEL": "verbose"},
     "NEARWATCH_LOG_LEVEL='verbose': expected one of DEBUG, INFO, WARNING"),
    ({"NEARWATCH_METRICS_HOST": "192.0.2.1"},  # TEST-NET-1: no machine's own address
     "cannot serve metrics on 192.0.2.1:0: [Errno 99] Cannot assign requested address "
     "(NEARWATCH_METRICS_HOST)"),
])
def test_worker_settings_errors_name_the_variable(tmp_path: Path, env: dict[str, str],
                                                  expected: str) -> None:
    result = _command("worker", NEARWATCH_MODEL_DIR=str(tmp_path / "models"), **env)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "--loglevel" not in result.stderr
    assert expected in result.stderr


def test_broker_url_schemes() -> None:
    for url in ("memory://", "redis://a:6379/0;redis://b:6379/0", "sqla+sqlite:///x.db"):
        assert Settings.from_env({"NEARWATCH_BROKER_URL": url,
                                  "NEARWATCH_REDIS_URL": NO_REDIS}).broker_url == url
    with pytest.raises(SettingsError, match="NEARWATCH_BROKER_URL=.*transport 'htp'"):
        Settings.from_env({"NEARWATCH_BROKER_URL": "redis://a:6379/0;htp://b"})
    assert Settings.from_env({"NEARWATCH_LOG_LEVEL": "debug"}).log_level == "DEBUG"


def test_models_add_into_a_path_under_a_file(tmp_path: Path,
                                             bundles: tuple[Path, Path]) -> None:
    (tmp_path / "afile").write_text("a file, not a folder")
    registry_dir = tmp_path / "afile" / "reg"
    out = _one_line_error(_run("models", "add", str(bundles[0]), "--promote",
                               NEARWATCH_MODEL_DIR=str(registry_dir)))
    assert f"cannot write the model registry {registry_dir} (NEARWATCH_MODEL_DIR)" in out
    assert "Not a directory" in out
    assert "no models in" in _run("models", "list", NEARWATCH_MODEL_DIR=str(registry_dir)).output


@pytest.mark.parametrize("pointer", ["", "../registry/v0001\n"])
def test_models_list_with_a_damaged_pointer(tmp_path: Path, bundles: tuple[Path, Path],
                                            pointer: str) -> None:
    registry = ModelRegistry(tmp_path)
    registry.add(bundles[0], promote=True)
    registry.add(bundles[1])
    (tmp_path / POINTER).write_text(pointer)
    assert [(m.version, m.current) for m in registry.list()] == [("v0001", False),
                                                                  ("v0002", False)]
    result = _run("models", "list", NEARWATCH_MODEL_DIR=str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "  v0001  model" in result.stdout and "  v0002  model" in result.stdout
    assert "CURRENT: not a version name" in result.stderr
    assert "`nearwatch models promote VERSION` repairs it" in result.stderr
    assert "not a version name" in _one_line_error(
        _run("models", "show", NEARWATCH_MODEL_DIR=str(tmp_path)))


def test_models_list_says_when_workers_refuse_the_current_version(
        tmp_path: Path, bundles: tuple[Path, Path]) -> None:
    registry = ModelRegistry(tmp_path)
    registry.add(bundles[0], promote=True)
    bad = registry.add(bundles[1], promote=True)
    listed = _run("models", "list", NEARWATCH_MODEL_DIR=str(tmp_path)).stdout
    assert "FAILS" not in listed
    index = registry.path(bad) / "reference_ids.json"
    index.write_text("[]")
    listed = _run("models", "list", NEARWATCH_MODEL_DIR=str(tmp_path)).stdout.splitlines()
    assert listed[1].startswith(f"* {bad}") and "FAILS VERIFICATION here: " in listed[1]
    assert "checksum" in listed[1] and "FAILS" not in listed[0]
    pruned = _run("models", "prune", "--keep", "1", NEARWATCH_MODEL_DIR=str(tmp_path)).stdout
    assert "removed nothing" in pruned and "kept 2 (v0001, v0002: the newest 1, the" in pruned
    shown = json.loads(_run("models", "show", "v0001", NEARWATCH_MODEL_DIR=str(tmp_path)).stdout)
    assert shown["fields"]["latency_ms"] == "numeric" and shown["id_field"] == "id"


@pytest.mark.parametrize(("level", "traceback"), [("INFO", False), ("DEBUG", True)])
def test_retrain_failure_is_logged_without_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        level: str, traceback: bool) -> None:
    from nearwatch.scheduler import retrain

    def failing_retrain(client: Any, registry: ModelRegistry, settings: Settings,
                        trigger: str) -> retrain.RetrainResult:
        try:  # what retrain_once does with an empty registry, without Redis
            registry.load_current()
        except BundleError as exc:
            retrain.log.exception("retraining failed")
            return retrain.RetrainResult("failed", trigger, reasons=[str(exc)])
        raise AssertionError("the registry is empty")

    monkeypatch.setattr("nearwatch.scheduler.commands._redis", lambda settings: object())
    monkeypatch.setattr(retrain, "retrain_once", failing_retrain)
    with caplog.at_level(logging.WARNING, "nearwatch.retrain"):
        result = _run("retrain", NEARWATCH_MODEL_DIR=str(tmp_path),
                      NEARWATCH_LOG_LEVEL=level)
    assert result.exit_code == 1 and json.loads(result.stdout)["outcome"] == "failed"
    [logged] = [r for r in caplog.records if r.name == "nearwatch.retrain"]
    assert logged.getMessage() == "retraining failed"
    assert (logged.exc_info is not None) == traceback
    assert retrain.log.filters == []  # the command leaves the logger as it found it


def test_a_hand_retrain_takes_the_beats_config_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`retrain --config` applies the same [retrain] table as `beat --config`, so a hand run
    judges with the gate margins and minimum the scheduled runs use."""
    from nearwatch.scheduler import retrain

    seen: list[Settings] = []

    def recording_retrain(client: Any, registry: ModelRegistry, settings: Settings,
                          trigger: str) -> retrain.RetrainResult:
        seen.append(settings)
        return retrain.RetrainResult("skipped", trigger, reasons=["recorded"])

    monkeypatch.setattr("nearwatch.scheduler.commands._redis", lambda settings: object())
    monkeypatch.setattr(retrain, "retrain_once", recording_retrain)
    config = tmp_path / "retrain.toml"
    config.write_text("[retrain]\nmin_records = 123\nauroc_margin = 0.02\n")
    for args in ((), ("--config", str(config))):
        result = _run("retrain", *args, NEARWATCH_MODEL_DIR=str(tmp_path))
        assert result.exit_code == 0, result.output
    assert [(s.retrain.min_records, s.retrain.auroc_margin) for s in seen] == [
        (2000, 0.01), (123, 0.02)]
    config.write_text("[retrain]\nmin_record = 5\n")
    out = _one_line_error(_run("retrain", "--config", str(config),
                               NEARWATCH_MODEL_DIR=str(tmp_path)))
    assert "unknown [retrain] keys ['min_record']" in out and len(seen) == 2


def test_feedback_refuses_nan_before_reaching_redis() -> None:
    out = _one_line_error(_run("feedback", "--id", "1", "--label", "normal",
                               "--record", '{"latency_ms": NaN}'))
    assert "--record field 'latency_ms': nan is not a finite number" in out
    out = _one_line_error(_run("feedback", "--id", "1", "--label", "normal",
                               "--record", '{"x": [1, 1e999]}'))
    assert "--record field 'x'[1]: inf is not a finite number" in out


def test_feedback_refuses_a_record_the_current_model_cannot_read(
        tmp_path: Path, bundles: tuple[Path, Path]) -> None:
    """Checked before Redis is reached (it is unreachable here): the verdict would be left
    out of every retraining."""
    registry = ModelRegistry(tmp_path / "models")
    registry.add(bundles[0], promote=True)
    out = _one_line_error(_run("feedback", "--id", "r1", "--label", "normal", "--record",
                               '{"id": "r1", "latency_ms": "bad"}',
                               NEARWATCH_MODEL_DIR=str(registry.root)))
    assert "--record: " in out and "field 'latency_ms'" in out
    assert "the current model v0001 cannot read it" in out
    # a readable record (an unknown field is ignored) gets past the check, to Redis
    out = _one_line_error(_run("feedback", "--id", "r1", "--label", "normal", "--record",
                               '{"id": "r1", "latency_ms": 12.5, "new": 1}',
                               NEARWATCH_MODEL_DIR=str(registry.root)))
    assert "cannot read it" not in out and "Redis" in out


def test_feedback_store_refuses_nan() -> None:
    stored: list[Any] = []

    class ScriptOnly:  # the one call FeedbackStore makes on Redis before a put
        def register_script(self, script: str) -> Any:
            return lambda keys, args: stored.append(args)

    store = FeedbackStore(ScriptOnly(), 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"the record field 'a': -inf is not a finite"):
        store.put(1, "normal", {"a": float("-inf")})
    with pytest.raises(ValueError, match=r"the id: nan is not a finite number"):
        store.put(float("nan"), "normal", {"a": 1})
    assert stored == []
    store.put(1, "normal", {"a": 1.5})
    assert len(stored) == 1


def _labelled(path: Path) -> Path:
    path.write_text("".join(json.dumps({"id": i, "latency_ms": 1.0 + i, "is_anomaly": i in {1, 3}})
                            + "\n" for i in range(5)))
    return path


def test_golden_pins_labelled_anomalies_apart(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Labelled anomalies never join the normal golden records: they are pinned under their
    own key (known anomalies for retraining), which a file without labels empties."""
    from nearwatch.scheduler.buffer import GOLDEN_ANOMALIES_KEY, GOLDEN_KEY

    pinned: dict[str, list[dict[str, Any]]] = {}

    def pin_golden(client: Any, records: list[dict[str, Any]], capacity: int,
                   seed: int = 0, key: str = GOLDEN_KEY) -> int:
        pinned[key] = list(records)
        return len(records)

    monkeypatch.setattr("nearwatch.scheduler.commands._redis", lambda settings: object())
    monkeypatch.setattr("nearwatch.scheduler.buffer.pin_golden", pin_golden)
    data = _labelled(tmp_path / "train.jsonl")
    result = _run("golden", "--data", str(data), "--label-field", "is_anomaly")
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in pinned[GOLDEN_KEY]] == [0, 2, 4]
    assert [r["id"] for r in pinned[GOLDEN_ANOMALIES_KEY]] == [1, 3]
    assert "pinned 3 golden records of 3" in result.output
    assert "and 2 labelled anomalies" in result.output
    result = _run("golden", "--data", str(data))
    assert result.exit_code == 0 and pinned[GOLDEN_ANOMALIES_KEY] == [], result.output
    assert "pinned 5 golden records of 5" in result.output
    assert "labelled anomalies" not in result.output
    # a label field no record has would pin every anomaly: the option is refused
    out = _one_line_error(_run("golden", "--data", str(data), "--label-field", "nosuch"), 2)
    assert "no record in" in out and "has a field 'nosuch'" in out
    everything = tmp_path / "anomalies.jsonl"
    everything.write_text('{"id": 1, "is_anomaly": 1}\n')
    assert "nothing to pin" in _one_line_error(
        _run("golden", "--data", str(everything), "--label-field", "is_anomaly"))


@pytest.mark.parametrize("command", [("list",), ("show",), ("show", "v0001"), ("history",),
                                     ("prune", "--keep", "3"), ("rollback",)])
def test_models_commands_on_an_unreachable_registry(command: tuple[str, ...]) -> None:
    """A registry in Redis that cannot be reached: one line naming it, not a traceback, and
    not "no current model" (the last version a worker cached is no answer to a command)."""
    out = _one_line_error(_run("models", *command, NEARWATCH_MODEL_DIR=NO_REDIS))
    assert "redis://127.0.0.1:1/15" in out and "Connection refused" in out, out
    assert "no current model" not in out


def test_feedback_refuses_a_record_with_another_id() -> None:
    out = _one_line_error(_run("feedback", "--id", "x", "--label", "normal",
                               "--record", '{"id": "y", "latency_ms": 3}'))
    assert 'the record\'s id is "y", not "x"' in out
    out = _one_line_error(_run("feedback", "--id", "7", "--label", "normal",
                               "--record", '{"id": "7"}'))
    assert 'is "7", not 7' in out  # the integer 7 and the string "7" are two records


@pytest.mark.parametrize(("text", "expected"), [
    ('[retrain]\nmin_records = "abc"\n', "[retrain] min_records = 'abc': expected an integer"),
    ("retrain = 3\n", "retrain must be a table"),
    ("[other]\nx = 1\n", "no [retrain] table"),
    ("[retrain]\nholdout_fraction = 2.0\n", "[retrain]: NEARWATCH_RETRAIN_HOLDOUT"),
    ("[retrain]\nlock_ttl_s = true\n", "lock_ttl_s = True: expected a number"),
    ("[retrain]\nlock_ttl_s = inf\n", "lock_ttl_s = inf: expected a finite number"),
    ("[retrain]\ndrift_threshold = nan\n", "drift_threshold = nan: expected a finite"),
])
def test_beat_config_errors_name_the_file_and_key(tmp_path: Path, text: str,
                                                  expected: str) -> None:
    from nearwatch.scheduler.schedule import settings_from_file
    from nearwatch.worker.settings import RetrainSettings

    config = tmp_path / "beat.toml"
    config.write_text(text)
    with pytest.raises(SettingsError) as raised:
        settings_from_file(config, RetrainSettings())
    assert str(raised.value).startswith(str(config)) and expected in str(raised.value)
    config.write_bytes(b"\xff\xfe[retrain]")
    with pytest.raises(SettingsError, match="can't decode"):
        settings_from_file(config, RetrainSettings())
    config.write_text("[retrain]\nschedule = \"6h\"\nexpires_s = 60\n")
    assert settings_from_file(config, RetrainSettings()).expires_s == 60.0


def test_beat_schedule_and_redis_url_errors() -> None:
    from nearwatch.scheduler.schedule import parse_schedule

    with pytest.raises(SettingsError, match="at most 366d"):
        parse_schedule("999999999999999999999d")  # OverflowError in Celery's timer before
    out = _one_line_error(_run("retrain", NEARWATCH_REDIS_URL="http://x"))
    assert "NEARWATCH_REDIS_URL='http://x': expected redis://" in out
    # redis-py read "/15x" as no database, so every command used database 0 in silence
    out = _one_line_error(_run("retrain", NEARWATCH_REDIS_URL="redis://127.0.0.1:6379/15x"))
    assert "NEARWATCH_REDIS_URL='redis://127.0.0.1:6379/15x': the database must be a" in out
    with pytest.raises(SettingsError, match="NEARWATCH_BROKER_URL=.*must be a number"):
        Settings.from_env({"NEARWATCH_BROKER_URL": "redis://127.0.0.1:6379/15x",
                           "NEARWATCH_REDIS_URL": NO_REDIS})
    with pytest.raises(SettingsError, match="NEARWATCH_REDIS_URL=.*not a URL"):
        Settings.from_env({"NEARWATCH_REDIS_URL": "redis://127.0.0.1:port/1"})
    with pytest.raises(SettingsError) as refused:  # the refusal shows no password
        Settings.from_env({"NEARWATCH_REDIS_URL": "redis://:hunter2@h:6379/a/b"})
    assert "hunter2" not in str(refused.value) and ":***@h" in str(refused.value)
    socket = "redis+socket:///tmp/redis.sock"  # kombu's socket transport: a path, no database
    assert Settings.from_env({"NEARWATCH_BROKER_URL": socket,
                              "NEARWATCH_REDIS_URL": NO_REDIS}).broker_url == socket


def test_a_label_that_is_no_flag_is_an_error(tmp_path: Path) -> None:
    data = tmp_path / "labelled.jsonl"
    data.write_text('{"id": 1, "latency_ms": 3, "is_anomaly": false}\n'
                    '{"id": 2, "latency_ms": 4, "is_anomaly": "maybe"}\n')
    for command in (("train", "--data", str(data), "--label-field", "is_anomaly", "--out",
                     str(tmp_path / "model")),
                    ("golden", "--data", str(data), "--label-field", "is_anomaly")):
        out = _one_line_error(_run(*command))
        assert "record 2: is_anomaly='maybe' is not a label" in out, out


def test_models_add_of_a_directory_that_is_no_bundle(tmp_path: Path) -> None:
    """`models add /tmp` named a symbolic link deep inside /tmp, not the missing manifest."""
    folder = tmp_path / "not-a-bundle"
    (folder / "deep").mkdir(parents=True)
    (folder / "deep" / "link").symlink_to(tmp_path)
    out = _one_line_error(_run("models", "add", str(folder),
                               NEARWATCH_MODEL_DIR=str(tmp_path / "models")))
    assert "not a nearwatch bundle: manifest.json is missing" in out, out


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("ALERT_WINDOW_S", "inf", "finite number"),  # OverflowError at startup before
    ("ALERT_RESOLVE_S", "1e300", "finite number"),  # crashed the consumer at its first delivery
    ("ALERT_TIMEOUT_S", "nan", "finite number"),
    ("ALERT_BACKOFF_S", "nan", "finite number"),  # accepted before
    ("ALERT_WEBHOOK_URL", "http://127.0.0.1:notaport/x", "not a URL"),
    ("ALERT_WEBHOOK_URL", "http://", "expected http(s)://host"),
    ("ALERTMANAGER_URL", "ftp://am:9093", "expected http(s)://host"),
    ("ALERT_KEY", ",,,", "comma-separated record field names"),  # an empty key before
])
def test_settings_refuse_numbers_and_urls_no_setting_can_mean(variable: str, value: str,
                                                              expected: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({f"NEARWATCH_{variable}": value})
    assert str(raised.value).startswith(f"NEARWATCH_{variable}={value!r}: ")
    assert expected in str(raised.value)
    assert Settings.from_env({"NEARWATCH_ALERT_WEBHOOK_URL": "https://hooks.example:8443/x"})


def test_alerts_jsonl_errors_name_their_source(tmp_path: Path) -> None:
    missing = str(tmp_path / "no" / "dir" / "alerts.jsonl")
    out = _one_line_error(_run("alerts", "--stop-when-idle", NEARWATCH_ALERT_JSONL=missing))
    assert f"cannot open {missing}" in out and "(NEARWATCH_ALERT_JSONL)" in out
    out = _one_line_error(_run("alerts", "--stop-when-idle", "--jsonl", missing))
    assert "(--jsonl)" in out


def test_models_add_says_when_a_model_is_already_registered(tmp_path: Path,
                                                            bundles: tuple[Path, Path]) -> None:
    first = _run("models", "add", str(bundles[0]), NEARWATCH_MODEL_DIR=str(tmp_path))
    assert first.exit_code == 0 and "note:" not in first.stderr
    again = _run("models", "add", str(bundles[0]), NEARWATCH_MODEL_DIR=str(tmp_path))
    assert again.exit_code == 0 and "added v0002" in again.stdout
    assert "note: v0002 holds the same model as v0001" in again.stderr
    other = _run("models", "add", str(bundles[1]), NEARWATCH_MODEL_DIR=str(tmp_path))
    assert other.exit_code == 0 and "note:" not in other.stderr


def test_train_refuses_to_overwrite_a_directory_that_is_no_bundle(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`train --out .` deleted the working directory's files, then crashed."""
    data = tmp_path / "records.jsonl"
    data.write_text("".join(f'{{"latency_ms": {i % 7}}}\n' for i in range(40)))
    monkeypatch.chdir(tmp_path)
    out = _one_line_error(_run("train", "--data", str(data), "--out", ".",
                               "--encoder", "identity"))
    assert "is not empty and not a nearwatch bundle" in out, out
    assert data.exists()


def test_train_on_an_empty_file_says_so(tmp_path: Path) -> None:
    """It said "alpha=0.01 ... needs at least 299 calibration records ... got 0 ... pass
    alpha=None ... or strict=False", library parameters that are no flags of the command."""
    data = tmp_path / "empty.jsonl"
    data.write_text("\n")
    out = _one_line_error(_run("train", "--data", str(data), "--out", str(tmp_path / "m")))
    assert "no normal records to train on" in out, out


def test_a_worker_that_cannot_start_exits_non_zero(tmp_path: Path) -> None:
    """Celery's worker_main drops the exit code: a node that stopped on "Unrecoverable
    error" exited 0, which systemd's Restart=on-failure takes for a clean stop. The bad
    backend URL bypasses the settings check on purpose (it refuses it now)."""
    script = tmp_path / "crash.py"
    script.write_text(
        "import dataclasses\n"
        "from nearwatch.worker.app import create_app, start_worker\n"
        "from nearwatch.worker.settings import Settings\n"
        "settings = Settings.from_env({'NEARWATCH_BROKER_URL': 'memory://'})\n"
        "settings = dataclasses.replace(settings, result_backend='redis://127.0.0.1:1/9x')\n"
        "start_worker(create_app(settings), ['worker', '--pool', 'solo'])\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "Unrecoverable error" in result.stderr
    with pytest.raises(SettingsError, match="NEARWATCH_RESULT_BACKEND=.*must be a number"):
        Settings.from_env({"NEARWATCH_RESULT_BACKEND": "redis://127.0.0.1:6379/9x"})


def test_alerts_on_a_database_redis_refuses_is_one_line(tmp_path: Path) -> None:
    """"DB index is out of range" from the consumer group's creation was a traceback."""
    out = _one_line_error(_run("alerts", "--stop-when-idle", "--jsonl", str(tmp_path / "a"),
                               NEARWATCH_REDIS_URL="redis://127.0.0.1:6379/99",
                               NEARWATCH_ALERT_METRICS_PORT="0"))
    assert "refused the alert stream: DB index is out of range" in out, out


def test_stream_out_dash_writes_stdout(tmp_path: Path) -> None:
    """`stream --out -` wrote a file named `-`; `-` is stdout, as for `score --out -`. No
    worker answers (memory broker): every record gets its `unanswered` error, on stdout, and
    an error naming a record by its position names its input line too."""
    (tmp_path / "in.jsonl").write_text('{"id": 1}\n\n{"x": 2}\n')
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NEARWATCH_")}
    environ.update({"NEARWATCH_BROKER_URL": "memory://", "NEARWATCH_MAX_ATTEMPTS": "1"})
    done = subprocess.run([sys.executable, "-m", "nearwatch.cli", "stream", "--data", "in.jsonl",
                           "--out", "-", "--timeout", "0.2"], cwd=tmp_path, env=environ,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr  # records went unanswered
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [a["id"] for a in answers] == [1, "#2"]
    assert answers[1]["error"].startswith("record #2 (line 3): unanswered after 1 attempt(s)")
    assert "2 unanswered" in done.stderr and not (tmp_path / "-").exists()
    help_text = CliRunner().invoke(main, ["stream", "--help"]).output
    assert "- for stdout" in help_text


def test_unknown_nearwatch_variables_are_warned_of_with_the_closest_name(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """NEARWATCH_BATCH_MAX_ATTEMPTS=2 (the docs' table read so) was ignored without a word."""
    caplog.set_level(logging.WARNING, logger="nearwatch.settings")
    result = _run("score", "--model", str(tmp_path), "--data", __file__, "--out", "-",
                  NEARWATCH_BATCH_MAX_ATTEMPTS="2", NEARWATCH_XYZZY="1",
                  NEARWATCH_MAX_ATTEMPTS="2", NEARWATCH_BUFFER_BUCKETS="12")
    _one_line_error(result)  # no bundle there: the warnings come first, at startup
    warned = [r.getMessage() for r in caplog.records if r.name == "nearwatch.settings"]
    assert [r.levelname for r in caplog.records if r.name == "nearwatch.settings"] == \
        ["WARNING"] * len(warned)
    assert "NEARWATCH_BATCH_MAX_ATTEMPTS is not a nearwatch setting (did you mean " \
        "NEARWATCH_MAX_ATTEMPTS?); ignored" in warned
    assert "NEARWATCH_XYZZY is not a nearwatch setting; ignored" in warned
    assert not [m for m in warned if m.startswith(("NEARWATCH_MAX_ATTEMPTS ",
                                                    "NEARWATCH_BUFFER_BUCKETS ",
                                                    "NEARWATCH_REDIS_URL "))]


def test_every_nearwatch_variable_named_in_docs_or_code_is_a_setting() -> None:
    """The unknown-variable warning must never fire on a real setting: every NEARWATCH_* name
    the docs, the code or the deploy files mention is one ``Settings.from_env`` reads."""
    from nearwatch.worker.command_settings import setting_names, unknown_settings

    root = Path(__file__).resolve().parents[1]
    files = [root / "README.md", *(p for folder in ("docs", "worker", "scheduler", "detector",
                                                    "deploy", "nearwatch")
                                   for p in (root / folder).rglob("*") if p.is_file())]
    mentioned: dict[str, str] = {}
    for path in files:
        text = path.read_text(errors="ignore")
        for name in re.findall(r"NEARWATCH_[A-Z0-9_]*[A-Z0-9]", text):
            mentioned.setdefault(name, str(path.relative_to(root)))
    known = setting_names()
    typo = "NEARWATCH_BATCH_MAX_ATTEMPTS"  # docs/SERVICE.md's example of the warning
    assert typo in mentioned and typo not in known
    assert {n: where for n, where in mentioned.items() if n not in known | {typo}} == {}
    table = re.findall(r"^\| `(NEARWATCH_[^|]*)\|", (root / "docs" / "SERVICE.md").read_text(),
                       re.MULTILINE)
    assert len(table) > 40 and not [row for row in table if "`_" in row]  # full names only
    # and the recording of what from_env reads misses none of its reads
    settings_py = (root / "worker" / "settings.py").read_text()
    assert {f"NEARWATCH_{n}" for n in re.findall(r'\bget\("([A-Z0-9_]+)"', settings_py)} <= known
    assert unknown_settings({name: "1" for name in known}) == []
