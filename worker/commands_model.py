"""CLI commands around the detector library: generate, train, score."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import click
import numpy as np
from nearwatch.detector.io import (
    UnreadableRecord,
    read_records,
    take_rows,
)

from .command_settings import cli_settings
from .records import truncate
from .score_file import read_scored, score_chunk, screen_chunk


@click.command("generate")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--n", "n_records", default=5_000, show_default=True, type=click.IntRange(min=0))
@click.option("--anomaly-rate", default=0.02, show_default=True, type=click.FloatRange(0, 1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--extra-fields", default=0, show_default=True, type=click.IntRange(min=0),
              help="Extra numeric sensor fields (m00, m01, ...) for wide records.")
def generate_command(
    out_path: Path, n_records: int, anomaly_rate: float, seed: int, extra_fields: int
) -> None:
    """Write synthetic service-telemetry records (JSON lines, `is_anomaly` ground truth)."""
    from nearwatch.detector.synthetic import generate_records

    records = generate_records(n_records, anomaly_rate, seed, n_extra_fields=extra_fields)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w") as stream:
        for record in records:
            stream.write(json.dumps(record) + "\n")
    n_anomalies = sum(bool(r["is_anomaly"]) for r in records)
    click.echo(f"wrote {len(records)} records ({n_anomalies} anomalies) to {out_path}")


@click.command("train")
@click.option("--data", "data_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--alpha", default=0.01, show_default=True, type=float,
              help="Target false-positive rate of the threshold.")
@click.option("--delta", default=0.05, show_default=True, type=float,
              help="Allowed probability that the realised FPR exceeds alpha.")
@click.option("--label-field", default=None,
              help="Ground-truth field (1/true = anomaly): trains on the normal records only.")
@click.option("--class-field", default=None,
              help="Class of each normal record (e.g. service): supervised metric learning.")
@click.option("--known-anomalies", default=0, show_default=True, type=click.IntRange(min=0),
              help="Use up to N labelled anomalies as hard negatives (needs --label-field); "
                   "taken from the half that retraining trains on, never from the half its "
                   "gate judges on (detector/held_out.py).")
@click.option("--id-field", default="id", show_default=True)
@click.option("--encoder", default="auto", show_default=True,
              type=click.Choice(["auto", "identity", "metric"]))
@click.option("--n-neighbors", "--k", "n_neighbors", default=5, show_default=True,
              type=click.IntRange(min=1),
              help="Nearest normal references a score is computed from (--k: old name).")
@click.option("--random-state", "--seed", "random_state", default=0, show_default=True,
              type=int, help="Seed of the training run (--seed: old name).")
@click.option("--strict/--allow-uncertified", default=False, show_default=True,
              help="Refuse too few normal records to certify --alpha/--delta, or (default) "
                   "train anyway with the tightest threshold they allow, warn, and report "
                   "certified_=False with the bound achieved.")
@click.option("--schema", "schema_path", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Declared schema (JSON) instead of inferring it.")
@click.option("--skip-bad-records", is_flag=True,
              help="Train on the records the schema can read, saying how many were skipped "
                   "and why, instead of stopping at the first bad one.")
def train_command(
    data_path: Path, out_dir: Path, alpha: float, delta: float, label_field: str | None,
    class_field: str | None, known_anomalies: int, id_field: str, encoder: str,
    n_neighbors: int, random_state: int, strict: bool, schema_path: Path | None,
    skip_bad_records: bool,
) -> None:
    """Train a detector on normal records and save it as a verified bundle."""
    from nearwatch.detector import Detector
    from nearwatch.detector.errors import CalibrationWarning, RecordError
    from nearwatch.detector.held_out import held_out_for_judging
    from nearwatch.detector.store.bundle import check_bundle_target
    from nearwatch.detector.threads import configure_threads

    configure_threads(1)
    if known_anomalies and label_field is None:
        raise click.UsageError("--known-anomalies needs --label-field (which records are "
                               "anomalies)")
    try:
        schema = json.loads(schema_path.read_text()) if schema_path else None
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"{schema_path}: not a JSON schema file ({exc})") from exc
    data = _read(data_path, label_field)
    records = data.records
    unreadable = [r for r in records if isinstance(r, UnreadableRecord)]
    if unreadable:
        raise click.ClickException(f"{data_path}: {unreadable[0].reason}")
    _check_named_fields(records, data_path, {"--label-field": label_field,
                                             "--class-field": class_field,
                                             "--id-field": None if id_field == "id" else id_field})
    is_anomaly = data.labels if data.labels is not None else np.zeros(len(records), dtype=bool)
    normal_rows = np.flatnonzero(~is_anomaly)
    if len(normal_rows) == 0:
        raise click.ClickException(f"{data_path}: no normal records to train on" + (
            f" (all {len(records)} are labelled anomalies)" if len(records) else ""))
    labelled_rows = np.flatnonzero(is_anomaly)
    # the other half judges challengers (`golden --label-field`): no model may train on it
    # (rows of an array file are never pinned by `golden`: none is held out)
    trainable = [i for i in labelled_rows.tolist() if not isinstance(records[i], dict)
                 or not held_out_for_judging(records[i], id_field)]
    anomaly_rows = np.array(trainable[:known_anomalies], dtype=np.int64)
    held_out = f", {len(labelled_rows) - len(trainable)} held out for the retraining gate" \
        if known_anomalies and len(trainable) < len(labelled_rows) else ""
    # normals and the known anomalies in file order, as X and y: a bad record's error then
    # names its place in the file (`score`'s numbering), whether normal or anomaly
    rows = np.sort(np.concatenate([normal_rows, anomaly_rows]))
    training = take_rows(records, rows)
    if skip_bad_records and not isinstance(training, np.ndarray):
        try:
            rows, training = _readable(training, rows, id_field, (label_field, class_field),
                                       schema)
        except ValueError as exc:  # a declared schema the records cannot fit at all
            raise click.ClickException(str(exc)) from exc
        normal_rows = rows[~is_anomaly[rows]]
        anomaly_rows = rows[is_anomaly[rows]]
    labels = None if class_field is None else [r.get(class_field) for r in training]
    detector = Detector(
        n_neighbors=n_neighbors, alpha=alpha, delta=delta, id_field=id_field, encoder=encoder,
        random_state=random_state, strict=strict,
        label_fields=tuple(f for f in (label_field, class_field) if f),
        schema=schema, progress=True,
    )
    try:
        check_bundle_target(out_dir)  # before training: never destroy a user's directory
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CalibrationWarning)
            detector.fit(training, is_anomaly[rows] if len(anomaly_rows) else None,
                         labels=labels)
    except RecordError as exc:  # "record n" as `score` counts: the n-th record of the file
        raise click.ClickException(str(RecordError(
            exc.field, exc.reason, None if exc.record_index is None
            else int(rows[exc.record_index]) + 1, exc.record_id))
            + ("" if skip_bad_records else
               " (--skip-bad-records trains on the records it can read)")) from exc
    except ValueError as exc:  # every library error is a ValueError with a clear message
        raise click.ClickException(_cli_advice(str(exc))) from exc
    for warning in caught:
        if issubclass(warning.category, CalibrationWarning):
            click.echo(f"warning: {_cli_advice(str(warning.message))}", err=True)
        elif issubclass(warning.category, UserWarning):  # the library's, said as the CLI's
            click.echo(f"warning: {warning.message}", err=True)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)

    signing_key = cli_settings().bundle_key  # NEARWATCH_BUNDLE_KEY: sign the bundle
    try:
        detector.save(out_dir, signing_key=signing_key)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot write the model to {out_dir}: {exc}") from exc
    click.echo(
        f"trained on {len(normal_rows)} normal records ({detector.training_mode_}, "
        f"{len(anomaly_rows)} known anomalies{held_out}): {detector.n_reference_} references, "
        f"threshold {detector.threshold_:.4g} (target FPR {alpha}; certified_="
        f"{detector.certified_}: FPR <= {detector.fpr_bound_:.4g} with probability "
        f"{1 - delta:.2f}{'' if detector.certified_ else ', too few normal records'}); "
        f"saved to {out_dir}{' (signed)' if signing_key else ''}"
    )


@click.command("score")
@click.option("--model", "model_dir", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", "data_path", required=True,
              type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path),
              help="JSONL, CSV or .npz file, or - for JSON lines on stdin.")
@click.option("--out", "out_path", required=True,
              type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              help="Results as JSON lines, or - for stdout (the summary goes to stderr).")
@click.option("--batch", "batch_size", default=2_048, show_default=True,
              type=click.IntRange(min=1))
@click.option("--explain", "n_fields", default=0, show_default=True, type=click.IntRange(min=0),
              help="Flagged records also get the N fields deviating most from their nearest "
              "normal references (\"fields\": field, deviation, value, typical).")
def score_command(model_dir: Path, data_path: Path, out_path: Path, batch_size: int,
                  n_fields: int) -> None:
    """Score records: one JSON result per input record, in input order."""
    from nearwatch.detector import Detector
    from nearwatch.detector.threads import configure_threads
    from tqdm import tqdm

    from .records import dump_result

    configure_threads(1)
    try:
        settings = cli_settings()
        limits = settings.limits
        detector = Detector.load(model_dir, signing_key=settings.bundle_key)
        records = read_scored(data_path, limits.max_bytes)
    except (ValueError, OSError) as exc:  # SettingsError, BundleError, an unreadable header
        raise click.ClickException(str(exc)) from exc
    if isinstance(records, np.ndarray):
        fields = [field["name"] for field in detector.feature_encoder_.fields_]
        if fields != [f"f{j}" for j in range(len(fields))]:
            raise click.ClickException(f"{data_path}: an .npz has unnamed columns, but this "
                                       "model was trained on named fields: score JSON lines")
        if records.ndim != 2 or records.shape[1] != len(fields):
            raise click.ClickException(f"{data_path}: X has shape {records.shape}; the model "
                                       f"expects {len(fields)} columns (f0..f{len(fields) - 1})")
        records = [dict(zip(fields, row.tolist(), strict=True)) | {detector.id_field: i}
                   for i, row in enumerate(records)]
    counts = {"records": 0, "anomalies": 0, "errors": 0}
    to_stdout = str(out_path) == "-"
    try:
        if not to_stdout:
            out_path.parent.mkdir(parents=True, exist_ok=True)
        output = click.open_file(str(out_path), "w")
    except OSError as exc:
        raise click.ClickException(f"cannot write {out_path}: {exc}") from exc
    with output as stream, tqdm(total=len(records), unit="rec", disable=None) as progress:
        for start in range(0, len(records), batch_size):
            chunk = screen_chunk(records[start : start + batch_size], start, detector.id_field,
                            limits)
            for result in score_chunk(detector, chunk, start, n_fields):
                counts["records"] += 1
                counts["anomalies"] += bool(result.get("is_anomaly"))
                counts["errors"] += "error" in result
                if "error" in result:
                    result["error"] = truncate(result["error"], limits.max_error_chars)
                stream.write(dump_result(result) + "\n")
            progress.update(min(batch_size, len(records) - start))
    click.echo(
        f"scored {counts['records']} records: {counts['anomalies']} anomalies, "
        f"{counts['errors']} errors; results in {'stdout' if to_stdout else out_path}",
        err=to_stdout,
    )
    for field, n in detector.feature_encoder_.missing_fields_seen_.items():
        click.echo(f"warning: {n} of {counts['records']} records lack {field!r}, which every "
                   "training record had: they were scored as if it held a typical value", err=True)
    if counts["records"] and counts["errors"] == counts["records"]:
        # nothing could be scored (a wrong file, another model's records): not a success
        where = "the output above" if to_stdout else out_path
        raise click.ClickException(f"every record of {data_path} is an error (see {where})")


def _readable(training: list[Any], rows: np.ndarray, id_field: str,
              labels: tuple[str | None, ...], schema: dict | None) -> tuple[np.ndarray, list[Any]]:
    """The training records the schema can read (and their rows in the file); the others are
    reported, by their place in the file, and left out."""
    from nearwatch.detector.errors import RecordError
    from nearwatch.detector.features.schema import FeatureEncoder
    from nearwatch.detector.features.screening import bad_records

    bad = bad_records(FeatureEncoder(id_field=id_field, declared_schema=schema,
                                     label_fields=tuple(f for f in labels if f)), training)
    if bad:
        first, error = next(iter(bad.items()))  # named as `score` names it: its place in the file
        named = RecordError(error.field, error.reason, int(rows[first]) + 1, error.record_id)
        if len(bad) == len(training):
            raise click.ClickException(f"none of the {len(training)} training records can be "
                                       f"read; the first: {named}")
        click.echo(f"warning: skipped {len(bad)} of {len(training)} training records the model "
                   f"cannot read; the first: {named}", err=True)
    kept = [i for i in range(len(training)) if i not in bad]
    return rows[kept], [training[i] for i in kept]


def _cli_advice(message: str) -> str:
    """A library message that advises Python arguments, advising the flags of `train` instead
    (the CLI cannot train without a threshold, as ``alpha=None`` does)."""
    from nearwatch.detector.errors import STRICT_ADVICE, UNCERTIFIED_ADVICE

    return message.replace(STRICT_ADVICE, "raise --alpha or --delta, or train without --strict "
                           "(--allow-uncertified, the default) for an uncertified threshold."
                           ).replace(
        UNCERTIFIED_ADVICE, "Pass --strict to refuse instead.")


def _read(data_path: Path, label_field: str | None) -> Any:
    try:
        return read_records(data_path, label_field=label_field)
    except (ValueError, OSError) as exc:  # a bad .npz (no X, pickled), an unreadable file
        message = str(exc)
        raise click.ClickException(
            message if message.startswith(str(data_path)) else f"{data_path}: {message}"
        ) from exc


def _check_named_fields(records: Any, data_path: Path, options: dict[str, str | None]) -> None:
    """A field an option names must be in the records: a typo would silently train on the
    anomalies (--label-field), without classes, or without ids."""
    if isinstance(records, np.ndarray):
        return
    for option, field in options.items():
        if field is not None and not any(isinstance(r, dict) and field in r for r in records):
            raise click.BadParameter(f"no record in {data_path} has a field {field!r}",
                                     param_hint=option)
