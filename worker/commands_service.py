"""Service commands: worker, stream, ingest, alerts, demo (models: commands_registry.py).

Each command reads ``Settings.from_env()`` once (the edge) and passes it down.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .command_settings import cli_settings, is_bind_error, metrics_bind_error
from .commands_registry import models_group
from .demo import STREAM_RECORDS
from .names import RECORDS_STREAM
from .setting_values import redacted
from .settings import DEFAULTS, IngestOptions

if TYPE_CHECKING:
    from celery import Celery

_INGEST = IngestOptions()  # option defaults of `nearwatch ingest`


def _require_broker(app: Celery) -> None:
    """Fail fast, with the URL and a hint, when the broker is unreachable."""
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0.2, timeout=5)
    except Exception as exc:  # kombu wraps the transport's error types
        url = redacted(app.conf.broker_url)
        raise click.ClickException(
            f"cannot reach the broker {url}: {exc} (is it running? NEARWATCH_BROKER_URL "
            "selects the broker)") from exc


@click.command("worker")
@click.option("--concurrency", "-c", default=2, show_default=True, type=click.IntRange(min=1),
              help="Scoring processes (one torch/faiss thread each).")
@click.option("--pool", default="prefork", show_default=True,
              type=click.Choice(["prefork", "processes"]),
              help="prefork: Celery's prefork pool; processes: N single-process Celery "
              "workers under one supervisor (3-6 µs/record less CPU, but a process killed "
              "while receiving a batch leaves it to the producer's resubmission).")
@click.option("--loglevel", default=None, help="Celery log level (default NEARWATCH_LOG_LEVEL).")
def worker_command(concurrency: int, pool: str, loglevel: str | None) -> None:
    """One worker node serving the `scoring` queue, with its /metrics endpoint.

    SIGTERM: warm shutdown (batches in progress finish and are acknowledged).
    """
    from .app import run_worker_node

    try:
        run_worker_node(cli_settings(), concurrency, loglevel, pool)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command("stream")
@click.option("--data", "source", required=True,
              help="JSONL or CSV file, or - for stdin (JSONL or CSV, sniffed).")
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "jsonl", "csv"]),
              help="Input format; auto: the file extension, or for stdin CSV only when the "
              "first line does not start with { or [ and has a comma.")
@click.option("--linger-ms", default=None, type=click.FloatRange(min=0),
              help="Send a partial batch once its first record waited this long (stdin; "
              "default NEARWATCH_LINGER_MS).")
@click.option("--batch", "batch_size", default=None, type=click.IntRange(min=1),
              help=f"Records per task (default NEARWATCH_BATCH_SIZE, {DEFAULTS.batch_size}).")
@click.option("--out", "out_path", default="-", show_default=True,
              type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              help="Results as JSON lines, or - for stdout (the summary goes to stderr).")
@click.option("--max-in-flight", default=None, type=click.IntRange(min=1),
              help="Batches submitted and not yet answered (default NEARWATCH_MAX_IN_FLIGHT, "
              f"{DEFAULTS.max_in_flight}).")
@click.option("--timeout", "batch_timeout", default=None, type=click.FloatRange(min=0.1),
              help="Seconds before an unanswered batch is submitted again (default "
              f"NEARWATCH_BATCH_TIMEOUT, {DEFAULTS.batch_timeout:g}).")
def stream_command(source: str, fmt: str, linger_ms: float | None, batch_size: int | None,
                   out_path: Path, max_in_flight: int | None,
                   batch_timeout: float | None) -> None:
    """Score records through the workers: one result line per record, in input order.

    Records without an `id` get "#<n>" (n: 1-based position in the input). Exits 1 if any
    record went unanswered.
    """
    from tqdm import tqdm

    from .app import create_app
    from .client import ClientOptions, ScoringClient
    from .stream import LineNumbers, read_input, stream_records

    settings = cli_settings()
    options = ClientOptions.from_settings(settings, batch_size=batch_size,
                                          max_in_flight=max_in_flight,
                                          batch_timeout=batch_timeout,
                                          linger=None if linger_ms is None else linger_ms / 1000)
    app = create_app(settings)
    _require_broker(app)
    client = ScoringClient(app, options)
    to_file = str(out_path) != "-"  # "-": stdout, as for `score --out -`
    try:
        out = out_path.open("w") if to_file else sys.stdout
    except OSError as exc:
        raise click.ClickException(f"cannot write {out_path}: {exc.strerror or exc}") from exc
    line_numbers = LineNumbers()
    try:
        with tqdm(unit="rec", file=sys.stderr, disable=None, desc="streamed") as progress:
            lines = read_input(source, fmt, lambda text: click.echo(text, err=True),
                               line_numbers)
            summary = stream_records(client, lines, out, progress, live=source == "-",
                                     line_numbers=line_numbers)
    except OSError as exc:
        raise click.ClickException(f"--data {source}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # e.g. a CSV header that is not UTF-8
        raise click.ClickException(f"--data {source}: {exc}") from exc
    finally:
        if to_file:
            out.close()
    click.echo(summary.line(), err=True)
    if summary.unanswered:
        raise SystemExit(1)


@click.command("ingest")
@click.option("--batch", "batch_size", default=None, type=click.IntRange(min=1),
              help=f"Entries per task (default NEARWATCH_BATCH_SIZE, {DEFAULTS.batch_size}).")
@click.option("--consumer", default=_INGEST.consumer,
              help="Consumer name (default <hostname>-<pid>).")
@click.option("--claim-idle-ms", default=_INGEST.claim_idle_ms, show_default=True,
              type=click.IntRange(min=1),
              help="Take over entries pending this long at a stalled consumer.")
@click.option("--stop-when-idle", is_flag=True,
              help="Exit once nothing is new or pending (batch jobs, tests).")
def ingest_command(batch_size: int | None, consumer: str, claim_idle_ms: int,
                   stop_when_idle: bool) -> None:
    """Score the Redis stream nearwatch:records into nearwatch:scores (consumer group)."""
    import redis

    from .app import create_app
    from .client import ClientOptions, ScoringClient
    from .ingest import StreamIngest

    settings = cli_settings()
    if not settings.redis_url:
        raise click.ClickException("ingest needs Redis: set NEARWATCH_REDIS_URL")
    batch_size = batch_size or settings.batch_size
    app = create_app(settings)
    _require_broker(app)
    client = ScoringClient(app, ClientOptions.from_settings(settings, batch_size=batch_size))
    ingest = StreamIngest(
        redis.Redis.from_url(settings.redis_url), client.score_json_batches,
        IngestOptions(consumer=consumer, batch_size=batch_size, claim_idle_ms=claim_idle_ms,
                      stop_when_idle=stop_when_idle, outage_deadline=settings.outage_deadline,
                      limits=settings.limits),
    )

    def stop(*_: Any) -> None:  # finish the batches in flight, then exit
        ingest.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    click.echo(f"ingest: consumer {ingest.consumer} reading {RECORDS_STREAM}", err=True)
    from .flow import BrokerUnavailable

    try:
        stats = ingest.run()
    except BrokerUnavailable as exc:
        raise click.ClickException(f"ingest stopped: {exc}; unanswered entries stay pending "
                                   "and are taken over by the next consumer") from exc
    click.echo(f"ingest: {stats.entries} entries read, {stats.written} results written, "
               f"{stats.unanswered} left pending (no worker answered), "
               f"{stats.claimed} claimed from stalled consumers, {stats.errors} errors",
               err=True)


@click.command("alerts")
@click.option("--consumer", default="", help="Consumer name (default <hostname>-<pid>).")
@click.option("--claim-idle-ms", default=None, type=click.IntRange(min=1),
              help="Take over events pending this long at a stalled consumer (default: "
              "2 x NEARWATCH_ALERT_WINDOW_S + 30 s, at least 60 s).")
@click.option("--jsonl", default=None,
              help="Also write notifications as JSON lines to this file, - for stdout "
              "(default NEARWATCH_ALERT_JSONL).")
@click.option("--stop-when-idle", is_flag=True,
              help="Deliver what is there, then exit (batch jobs, tests).")
def alerts_command(consumer: str, claim_idle_ms: int | None, jsonl: str | None,
                   stop_when_idle: bool) -> None:
    """Deliver nearwatch:alerts events to the webhook / Alertmanager / JSONL sinks."""
    from .alert_cli import run_alerts

    settings = cli_settings()
    if not settings.redis_url:
        raise click.ClickException("alerts needs Redis: set NEARWATCH_REDIS_URL")
    import redis

    try:
        run_alerts(settings, consumer, claim_idle_ms, jsonl, stop_when_idle)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    except redis.RedisError as exc:  # e.g. "DB index is out of range": a traceback before
        raise click.ClickException(f"Redis at {redacted(settings.redis_url)} refused "
                                   f"the alert stream: {exc} (NEARWATCH_REDIS_URL, else "
                                   "NEARWATCH_BROKER_URL, names it)") from exc
    except OSError as exc:
        if exc.filename is not None:  # the --jsonl / NEARWATCH_ALERT_JSONL file
            source = "--jsonl" if jsonl is not None else "NEARWATCH_ALERT_JSONL"
            raise click.ClickException(f"cannot open {exc.filename}: {exc.strerror} "
                                       f"({source})") from exc
        if not is_bind_error(exc):
            raise
        raise click.ClickException(metrics_bind_error(
            exc, settings.metrics_host, settings.alerts.metrics_port,
            "NEARWATCH_ALERT_METRICS_PORT")) from exc


@click.command("demo")
@click.option("--records", "n_stream", default=STREAM_RECORDS, show_default=True,
              type=click.IntRange(min=20), help="Records to stream.")
def demo_command(n_stream: int) -> None:
    """Synthetic records → train → stream through Celery → flagged records → /metrics."""
    from .demo import run_demo

    try:
        status = run_demo(cli_settings(), click.echo, n_stream=n_stream)
    except RuntimeError as exc:  # no worker serves the model: a message, not a traceback
        raise click.ClickException(str(exc)) from exc
    if status:
        raise SystemExit(status)


service_commands: list[click.Command] = [
    worker_command, stream_command, ingest_command, alerts_command, models_group, demo_command,
]
