"""`nearwatch beat`, `retrain`, `feedback` and `golden`: the retraining loop's commands."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from nearwatch.worker.command_settings import cli_settings
from nearwatch.worker.setting_values import redacted
from nearwatch.worker.settings import Settings, SettingsError


def _redis(settings: Settings) -> Any:
    import redis

    if not settings.redis_url:
        raise click.ClickException("set NEARWATCH_REDIS_URL: the buffer, the feedback and the "
                                   "retraining lock live in Redis")
    client = redis.Redis.from_url(settings.redis_url)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise click.ClickException(f"cannot reach Redis at {redacted(settings.redis_url)} "
                                   f"({exc}): is it running? NEARWATCH_REDIS_URL, else "
                                   "NEARWATCH_BROKER_URL, names it") from exc
    return client


_CONFIG_HELP = "TOML file whose [retrain] table overrides the retraining settings."


MAX_GOLDEN_ANOMALIES = 1_000  # known anomalies pinned from a golden file (a sample beyond)


@click.command("beat")
@click.option("--schedule", default=None,
              help="Retraining schedule: 3600, 30m, 6h, 1d or a cron line (UTC); default "
                   "NEARWATCH_RETRAIN_SCHEDULE; none: by hand and on drift only.")
@click.option("--config", "config_path", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help=_CONFIG_HELP)
@click.option("--loglevel", default=None, help="Celery log level (default NEARWATCH_LOG_LEVEL).")
def beat_command(schedule: str | None, config_path: Path | None, loglevel: str | None) -> None:
    """The maintenance node (run exactly one): beat schedule, retraining, drift, feedback."""
    from .app import run_beat_node
    from .schedule import beat_schedule, settings_from_file

    settings = cli_settings()
    try:
        retrain = settings.retrain
        if config_path is not None:
            retrain = settings_from_file(config_path, retrain)
        if schedule is not None:
            retrain = dataclasses.replace(retrain, schedule=schedule)
        beat_schedule(retrain)  # a bad schedule fails here, before anything starts
        run_beat_node(dataclasses.replace(settings, retrain=retrain), loglevel)
    except (SettingsError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc


@click.command("retrain")
@click.option("--config", "config_path", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help=_CONFIG_HELP + " Give the beat's file, so that a hand run judges as the "
                   "scheduled ones do.")
@click.option("--trigger", default="manual", show_default=True, hidden=True)
def retrain_command(config_path: Path | None, trigger: str) -> None:
    """Run one retraining now and print its decision and figures (exit 1 if it failed)."""
    from nearwatch.worker.remote_registry import registry_session

    from .retrain import retrain_once
    from .schedule import settings_from_file

    settings = cli_settings()
    if config_path is not None:
        try:
            settings = dataclasses.replace(
                settings, retrain=settings_from_file(config_path, settings.retrain))
        except SettingsError as exc:
            raise click.ClickException(str(exc)) from exc
    client = _redis(settings)

    def stop(signum: int, _frame: Any) -> None:  # SIGTERM (a stopped job, kubectl exec)
        raise SystemExit(128 + signum)  # unwinds retrain_once, which frees the lock

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop) if main_thread else None
    try:
        with registry_session(settings) as registry, \
                _log_without_tracebacks(settings.log_level):
            result = retrain_once(client, registry, settings, trigger)
    finally:
        if previous is not None:  # None: not set from Python (nothing to put back)
            signal.signal(signal.SIGTERM, previous)
    click.echo(json.dumps(result.to_json(), indent=2, default=str))
    if result.outcome == "failed":
        raise SystemExit(1)


@contextmanager
def _log_without_tracebacks(level: str) -> Iterator[None]:
    """The retraining's log lines without tracebacks: a failure's reason is in the printed
    result, and a traceback reads like a crash (NEARWATCH_LOG_LEVEL=DEBUG keeps them)."""

    def drop_traceback(record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True

    logger = logging.getLogger("nearwatch.retrain")
    if level != "DEBUG":
        logger.addFilter(drop_traceback)
    try:
        yield
    finally:
        logger.removeFilter(drop_traceback)


def _parse_id(text: str) -> Any:
    """``--id 7`` is the integer 7, ``--id '"7"'`` the string "7", ``--id t12`` "t12"."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@click.command("feedback")
@click.option("--id", "record_id", required=True,
              help="The record's id (JSON: 7 is a number, '\"7\"' a string; else text).")
@click.option("--label", required=True, type=click.Choice(["normal", "anomaly"]))
@click.option("--record", "record_json", default=None,
              help="The record as JSON, when it is not in nearwatch:alerts, the buffer or "
                   "the dead letters.")
def feedback_command(record_id: str, label: str, record_json: str | None) -> None:
    """Tell the next retraining that a record is normal (a false alarm) or an anomaly."""
    from .feedback import check_inline_id, refuse_non_finite
    from .tasks import give_feedback

    record = None
    if record_json is not None:
        try:
            record = json.loads(record_json)
        except ValueError as exc:
            raise click.ClickException(f"--record is not JSON: {exc}") from exc
        try:  # before Redis is reached: NaN would be stored as null
            refuse_non_finite(record, "--record")
            check_inline_id(_parse_id(record_id), record)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
    settings = cli_settings()
    if record is not None:  # before it is stored: a retraining would leave it out, unsaid
        problem = _unreadable_by_current_model(settings, record)
        if problem:
            raise click.ClickException(problem)
    try:
        stored = give_feedback(_redis(settings), settings, _parse_id(record_id), label, record)
    except (LookupError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"recorded: id {json.dumps(stored['id'])} is {stored['label']} "
               f"(record from {stored['source']})")


def _unreadable_by_current_model(settings: Settings, record: Any) -> str | None:
    """Why the serving model cannot read ``record`` (None: it can, or there is no model to
    ask, which is said on stderr); fields it does not know are ignored, as retraining does."""
    from nearwatch.worker.remote_registry import registry_session

    try:
        with registry_session(settings) as registry:
            version, model = registry.load_current()
    except Exception as exc:  # no model (yet), or none reachable: retraining checks later
        click.echo(f"note: --record not checked against a model ({exc})", err=True)
        return None
    result = model.score_records([record], 0)[0]
    if "error" not in result:
        return None
    return (f"--record: {result['error']}: the current model {version} cannot read it, so "
            f"no retraining would learn from this verdict")


@click.command("golden")
@click.option("--data", "data_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The original normal training records (JSONL or CSV).")
@click.option("--records", "capacity", default=None, type=click.IntRange(min=1),
              help="Sample size (default NEARWATCH_GOLDEN_RECORDS).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--label-field", default=None,
              help="Ground-truth field (1/true = anomaly): labelled anomalies are pinned apart, "
                   "as known anomalies for every retraining (hard negatives and the gate).")
def golden_command(data_path: Path, capacity: int | None, seed: int,
                   label_field: str | None) -> None:
    """Pin a sample of the original training data beside the buffer (replaces the last)."""
    from nearwatch.detector.io import read_records

    from .buffer import GOLDEN_ANOMALIES_KEY, pin_golden

    settings = cli_settings()
    try:
        data = read_records(data_path, label_field=label_field)
        records = _golden_records(data.records, data_path)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    anomalies: list[dict[str, Any]] = []
    if label_field is not None:  # pinned records train every retraining as normal
        if not any(label_field in record for record in records):  # a typo pins them all
            raise click.BadParameter(f"no record in {data_path} has a field {label_field!r}",
                                     param_hint="--label-field")
        assert data.labels is not None  # read with label_field
        normal = [r for r, anomaly in zip(records, data.labels, strict=True) if not anomaly]
        if not normal:  # pinning nothing would delete the golden set
            raise click.ClickException(f"{data_path}: every record is labelled an anomaly "
                                       f"({label_field}): nothing to pin")
        anomalies = [r for r, anomaly in zip(records, data.labels, strict=True) if anomaly]
        records = normal
    client = _redis(settings)
    pinned = pin_golden(client, records, capacity or settings.buffer.golden_records, seed)
    # replaced too (emptied without labels): the anomalies belong to this golden file
    known = pin_golden(client, anomalies, MAX_GOLDEN_ANOMALIES, seed, GOLDEN_ANOMALIES_KEY)
    click.echo(f"pinned {pinned} golden records of {len(records)} from {data_path}"
               + (f" and {known} labelled anomalies (hard negatives and the retraining "
                  f"gate's labelled checks)" if known else ""))


def _golden_records(records: Any, data_path: Path) -> list[dict[str, Any]]:
    """Every record of the file, or an error naming the first bad one: a dropped line or a
    NaN stored as null would silently change the set every retraining mixes in."""
    from nearwatch.detector.io import UnreadableRecord

    if not isinstance(records, list) or not records:
        raise ValueError(f"{data_path}: no records (golden takes JSON lines or CSV)")
    for position, record in enumerate(records, start=1):
        if isinstance(record, UnreadableRecord):
            raise ValueError(f"{data_path}: {record.reason}")
        if not isinstance(record, dict):
            raise ValueError(f"{data_path}: record {position} is not a JSON object "
                             f"(got {type(record).__name__})")
        for field, value in record.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{data_path}: record {position} field {field!r}: {value!r} "
                                 "is not a finite number")
    return records


scheduler_commands = [beat_command, retrain_command, feedback_command, golden_command]
