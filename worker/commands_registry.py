"""`nearwatch models`: the model registry, a directory or Redis (``NEARWATCH_MODEL_DIR``).

Every command goes through ``open_registry``: with ``NEARWATCH_MODEL_DIR=redis://...`` a
version is verified locally before it is uploaded, and downloaded and verified exactly like a
worker does before it is promoted or shown.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .command_settings import cli_settings

if TYPE_CHECKING:
    from nearwatch.detector import Detector
    from nearwatch.detector.store.registry import ModelRegistry


class _RegistryGroup(click.Group):
    """A registry in Redis that cannot be reached is one line naming it, for every command
    (each still says what failed where it knows more)."""

    def invoke(self, ctx: click.Context) -> Any:
        from redis.exceptions import RedisError

        try:
            return super().invoke(ctx)
        except RedisError as exc:
            store = cli_settings().model_store
            raise click.ClickException(f"cannot reach the model registry {store}: {exc} "
                                       "(NEARWATCH_MODEL_DIR)") from exc


@click.group("models", cls=_RegistryGroup)
def models_group() -> None:
    """The model registry: NEARWATCH_MODEL_DIR, a directory or redis://host:port/db."""


@models_group.command("add")
@click.argument("bundle_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--promote", is_flag=True, help="Make it the current model.")
def models_add(bundle_dir: Path, promote: bool) -> None:
    """Verify BUNDLE_DIR and copy it into the registry under a new version."""
    from redis.exceptions import RedisError

    from .remote_registry import location_of, registry_session

    with registry_session(cli_settings()) as registry:
        try:
            version = registry.add(bundle_dir, promote=promote)
        except ValueError as exc:  # BundleError: tampered, truncated, wrong format
            raise click.ClickException(f"refused {bundle_dir}: {exc}") from exc
        except RedisError as exc:
            raise click.ClickException(f"cannot reach {location_of(registry)}: {exc}") from exc
        except OSError as exc:  # e.g. NEARWATCH_MODEL_DIR under a file, or read-only
            raise click.ClickException(_unwritable(registry, exc)) from exc
        click.echo(f"added {version}{' (current)' if promote else ''} to "
                   f"{location_of(registry)}")
        listed = {v.version: v.model_version for v in registry.list()}
        same = [v for v, model in listed.items() if v != version and model is not None
                and model == listed.get(version)]
        if same:  # allowed (a re-add to promote it again), but worth knowing
            click.echo(f"note: {version} holds the same model as {', '.join(same)}", err=True)


@models_group.command("promote")
@click.argument("version")
def models_promote(version: str) -> None:
    """Make VERSION the current model (also to roll back); it is verified first."""
    from redis.exceptions import RedisError

    from .remote_registry import location_of, registry_session

    with registry_session(cli_settings()) as registry:
        try:
            registry.promote(version)
        except ValueError as exc:  # BundleError
            raise click.ClickException(f"refused {version}: {exc}") from exc
        except RedisError as exc:
            raise click.ClickException(f"cannot reach {location_of(registry)}: {exc}") from exc
        except OSError as exc:
            raise click.ClickException(_unwritable(registry, exc)) from exc
        click.echo(f"{version} is the current model of {location_of(registry)}")
        decision = registry.decision(version)
        if decision is not None and decision.get("outcome") == "rejected":  # by hand: allowed
            click.echo(f"warning: the retraining gate rejected {version}: "
                       f"{'; '.join(decision.get('reasons', []))}", err=True)


@models_group.command("rollback")
def models_rollback() -> None:
    """Go back to the version promoted before the current one (verified first)."""
    from redis.exceptions import RedisError

    from .remote_registry import location_of, registry_session

    with registry_session(cli_settings()) as registry:
        try:
            version = registry.rollback()
        except ValueError as exc:  # BundleError: nothing to roll back to, or it won't load
            raise click.ClickException(f"cannot roll back: {exc}") from exc
        except RedisError as exc:
            raise click.ClickException(f"cannot reach {location_of(registry)}: {exc}") from exc
        except OSError as exc:
            raise click.ClickException(_unwritable(registry, exc)) from exc
        click.echo(f"rolled back: {version} is the current model of {location_of(registry)}")


@models_group.command("prune")
@click.option("--keep", required=True, type=click.IntRange(min=1),
              help="Versions to keep (the current one and the last 5 promotions always stay).")
def models_prune(keep: int) -> None:
    """Remove the versions older than the newest --keep (retraining does this after each
    run); the current one and the last 5 promotions stay whatever their age."""
    from .remote_registry import location_of, registry_session

    with registry_session(cli_settings()) as registry:
        try:
            removed = registry.prune(keep)
        except OSError as exc:
            raise click.ClickException(_unwritable(registry, exc)) from exc
        kept = registry.versions()
        click.echo(f"removed {', '.join(removed) or 'nothing'} from {location_of(registry)}; "
                   f"kept {len(kept)} ({', '.join(kept)}: the newest {keep}, the current one "
                   "and the last 5 promotions)")


@models_group.command("history")
def models_history() -> None:
    """Promotions, oldest first (what `models rollback` goes back through)."""
    from datetime import UTC, datetime

    from .remote_registry import registry_session

    with registry_session(cli_settings()) as registry:
        for entry in registry.history():
            when = datetime.fromtimestamp(float(entry.get("time", 0)), UTC)
            click.echo(f"{when.isoformat(timespec='seconds')}  {entry['version']}  "
                       f"{entry.get('reason', '')}")


@models_group.command("list")
def models_list() -> None:
    """Registered versions; * marks the current one."""
    from .remote_registry import location_of, registry_session

    with registry_session(cli_settings()) as registry:
        try:
            listed = registry.list()
        except ValueError as exc:  # BundleError: a damaged pointer in Redis
            raise click.ClickException(str(exc)) from exc
        if not listed:
            click.echo(f"no models in {location_of(registry)}")
        elif not any(entry.current for entry in listed):
            _warn_if_pointer_damaged(registry)
        outcomes = {entry.version: (registry.decision(entry.version) or {}).get("outcome")
                    for entry in listed}
        refused = ""  # the current version verified as a worker loads it (with this key)
        for version in [entry.version for entry in listed if entry.current]:
            try:
                registry.load(version)
            except Exception as exc:  # BundleError: workers refuse it; Redis down: unknown
                refused = f"  FAILS VERIFICATION here: {exc}"
    for entry in listed:
        gate = f"  retrain: {outcomes[entry.version]}" if outcomes[entry.version] else ""
        click.echo(f"{'*' if entry.current else ' '} {entry.version}  "
                   f"model {entry.model_version or '?'}  created {entry.created_at or '?'}{gate}"
                   f"{refused if entry.current else ''}")


@models_group.command("sign")
@click.argument("bundle_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def models_sign(bundle_dir: Path) -> None:
    """Verify BUNDLE_DIR's checksums and sign it in place with NEARWATCH_BUNDLE_KEY."""
    from nearwatch.detector.store.bundle import read_bundle, write_bundle

    key = cli_settings().bundle_key
    if key is None:
        raise click.ClickException("set NEARWATCH_BUNDLE_KEY to the signing key")
    try:
        manifest, files = read_bundle(bundle_dir)
        write_bundle(bundle_dir, manifest, files, signing_key=key)
    except ValueError as exc:  # BundleError: corrupt bundles are not signed
        raise click.ClickException(f"refused {bundle_dir}: {exc}") from exc
    click.echo(f"signed {bundle_dir}")


@models_group.command("show")
@click.argument("version", required=False)
def models_show(version: str | None) -> None:
    """Facts of VERSION (default: the current one), verified like a worker loads it."""
    from .remote_registry import location_of, registry_session

    with registry_session(cli_settings()) as registry:
        try:
            version = registry.current_version() if version is None else version
        except ValueError as exc:  # BundleError: a damaged pointer
            raise click.ClickException(f"{exc} (`nearwatch models promote VERSION` repairs it)"
                                       ) from exc
        if version is None:
            raise click.ClickException(f"no current model in {location_of(registry)}")
        try:
            detector = registry.load(version)
        except (ValueError, KeyError) as exc:
            raise click.ClickException(f"cannot load {version}: {exc}") from exc
        facts = model_facts(version, detector)
        decision = registry.decision(version)
        if decision is not None:  # added by a retraining: the gate's decision and figures
            facts["retraining"] = decision
        click.echo(json.dumps(facts, indent=2, default=str))


def _unwritable(registry: ModelRegistry, exc: OSError) -> str:
    from .remote_registry import location_of

    return f"cannot write the model registry {location_of(registry)} (NEARWATCH_MODEL_DIR): {exc}"


def _warn_if_pointer_damaged(registry: ModelRegistry) -> None:
    """No version is current: say so when that is because the pointer is unreadable."""
    try:
        registry.current_version()
    except ValueError as exc:  # BundleError
        click.echo(f"warning: {exc}: no version is current (`nearwatch models promote "
                   "VERSION` repairs it)", err=True)


def model_facts(version: str, detector: Detector) -> dict[str, Any]:
    """What an operator needs to judge a model: its guarantee and what it was built from."""
    return {
        "version": version,
        "model_version": detector.model_version_,
        "training_mode": detector.training_mode_,
        "alpha": detector.alpha, "delta": detector.delta, "n_neighbors": detector.n_neighbors,
        "threshold": detector.threshold_, "fpr_bound": detector.fpr_bound_,
        "n_calibration": detector.n_calibration_,
        "calibration_index": detector.calibration_index_,
        "index_parts": detector.reference_index_.kinds_,
        "n_reference_records": detector.n_reference_,
        "n_distinct_references": detector.n_unique_reference_,
        "duplicate_factor": round(float(detector.duplicate_factor_), 4),
        "schema_version": detector.schema_version_,
        "fields": {spec["name"]: spec["kind"] for spec in detector.feature_encoder_.fields_},
        "id_field": detector.id_field,
    }
