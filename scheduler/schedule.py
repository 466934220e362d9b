"""The beat schedule, from configuration: retraining (cron or interval) and drift checks.

``NEARWATCH_RETRAIN_SCHEDULE`` (or ``nearwatch beat --schedule``, or ``schedule`` in the
``[retrain]`` table of ``nearwatch beat --config FILE.toml``) is an interval (``"3600"``
seconds, ``"30m"``, ``"6h"``, ``"1d"``) or a five-field cron line (``"0 3 * * *"``, UTC).
Every entry carries ``expires``: a run that no worker started in time is dropped, so runs
missed while the maintenance node was down do not pile up and train back to back.

>>> parse_schedule("6h").run_every.total_seconds()
21600.0
>>> parse_schedule("0 3 * * *")._orig_hour
'3'
>>> entries = beat_schedule(RetrainSettings(schedule="30m"))
>>> sorted(entries), entries["retrain"]["options"]["expires"]
(['drift-check', 'retrain'], 1800.0)
>>> round(beat_schedule(RetrainSettings(schedule="*/5 * * * *"))["retrain"]["options"]["expires"])
300
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from celery.schedules import crontab, schedule
from nearwatch.worker.names import DRIFT_CHECK, MAINTENANCE_QUEUE, RETRAIN
from nearwatch.worker.setting_values import bounded
from nearwatch.worker.settings import RetrainSettings, SettingsError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_INTERVAL = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$")
MAX_INTERVAL_S = 366 * 86400.0  # longer overflows Celery's timers (and means "never")
CRON_EXPIRES_S = 3600.0  # a cron run is dropped by its next run, and within an hour at most


def parse_schedule(spec: str) -> schedule:
    """An interval or a cron line (see the module docstring); ``SettingsError`` otherwise."""
    text = spec.strip()
    match = _INTERVAL.match(text)
    if match:
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
        if not 0 < seconds <= MAX_INTERVAL_S:
            raise SettingsError(f"retraining schedule {spec!r}: the interval must be positive "
                                f"and at most {MAX_INTERVAL_S // 86400:.0f}d")
        return schedule(run_every=timedelta(seconds=seconds))
    parts = text.split()
    if len(parts) != 5:
        raise SettingsError(
            f"retraining schedule {spec!r}: expected an interval (3600, 30m, 6h, 1d) or a "
            "cron line of five fields (minute hour day-of-month month day-of-week)")
    try:
        cron = crontab(minute=parts[0], hour=parts[1], day_of_month=parts[2],
                       month_of_year=parts[3], day_of_week=parts[4])
        cron.remaining_estimate(cron.now())  # parses every field now, not at the first tick
    except (ValueError, KeyError) as exc:
        raise SettingsError(f"retraining schedule {spec!r}: {exc}") from exc
    return cron


def beat_schedule(settings: RetrainSettings) -> dict[str, dict[str, Any]]:
    """Celery ``beat_schedule`` entries: the drift check always, retraining when scheduled."""
    entries: dict[str, dict[str, Any]] = {
        "drift-check": {
            "task": DRIFT_CHECK, "schedule": timedelta(seconds=settings.drift_check_s),
            "options": {"queue": MAINTENANCE_QUEUE, "expires": settings.drift_check_s},
        },
    }
    if settings.schedule:
        when = parse_schedule(settings.schedule)
        expires = settings.expires_s or (when.run_every.total_seconds()
                                         if not isinstance(when, crontab) else _period(when))
        entries["retrain"] = {"task": RETRAIN, "schedule": when, "args": ["schedule"],
                              "options": {"queue": MAINTENANCE_QUEUE, "expires": expires}}
    return entries


def _period(cron: crontab) -> float:
    """The shortest gap between two runs of a cron schedule over a week, at most an hour: a run
    not started by the next one is dropped, so a slow retraining leaves no queue of runs."""
    start = datetime(2024, 1, 1)  # a Monday; the pattern repeats within any week
    runs = [minute for minute in range(7 * 24 * 60)
            if _matches(cron, start + timedelta(minutes=minute))]
    gaps = [60.0 * (b - a) for a, b in zip(runs, runs[1:], strict=False)]
    return max(60.0, min([CRON_EXPIRES_S, *gaps]))


def _matches(cron: crontab, when: datetime) -> bool:
    return (when.minute in cron.minute and when.hour in cron.hour
            and when.day in cron.day_of_month and when.month in cron.month_of_year
            and when.isoweekday() % 7 in cron.day_of_week)  # celery: 0 is Sunday


def settings_from_file(path: Path, base: RetrainSettings) -> RetrainSettings:
    """``base`` with the keys of the ``[retrain]`` table of a TOML file (same names as the
    ``RetrainSettings`` fields); an unknown key is an error, not ignored."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"{path}: {exc}") from exc
    table = document.get("retrain")
    if not isinstance(table, dict):
        raise SettingsError(f"{path}: no [retrain] table" if table is None else
                            f"{path}: retrain must be a table ([retrain]), not a "
                            f"{type(table).__name__}")
    known = {f.name: f for f in fields(RetrainSettings)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise SettingsError(f"{path}: unknown [retrain] keys {unknown}; known: {sorted(known)}")
    values: dict[str, Any] = {}
    for key, value in table.items():  # TOML has types: "abc" for a number is the file's fault
        kind, wanted = _TOML_KINDS[str(known[key].type).split(" | ")[0]]
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            raise SettingsError(f"{path}: [retrain] {key} = {value!r}: expected {wanted}")
        try:  # TOML has inf and nan too (lock_ttl_s = inf broke every retraining)
            values[key] = bounded(float(value)) if kind == (int, float) else value
        except ValueError as exc:
            raise SettingsError(f"{path}: [retrain] {key} = {value!r}: {exc}") from exc
    updated = replace(base, **values)
    try:
        updated.validate()
    except SettingsError as exc:
        raise SettingsError(f"{path}: [retrain]: {exc}") from exc
    return updated


# a RetrainSettings field's annotation -> the TOML values it takes, and how to say so
_TOML_KINDS: dict[str, tuple[Any, str]] = {
    "bool": (bool, "true or false"), "int": (int, "an integer"),
    "float": ((int, float), "a number"), "str": (str, "a string")}
