"""The settings every command reads once at the edge, with a one-line error instead of a
traceback when an environment variable holds a value the service cannot use."""

from __future__ import annotations

import click

from .settings import Settings, SettingsError


def cli_settings() -> Settings:
    """``Settings.from_env()``, or ``click.ClickException`` naming the bad variable."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc
