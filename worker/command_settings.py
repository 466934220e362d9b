"""The settings every command reads once at the edge, with a one-line error instead of a
traceback when an environment variable holds a value the service cannot use."""

from __future__ import annotations

import errno
import socket

import click

from .settings import Settings, SettingsError

# bind() errors that a metrics setting explains; others (a full disk, ...) stay tracebacks
_HOST_ERRNOS = (errno.EADDRNOTAVAIL,)  # an address that is not this machine's
_PORT_ERRNOS = (errno.EADDRINUSE, errno.EACCES)  # a busy or privileged port


def cli_settings() -> Settings:
    """``Settings.from_env()``, or ``click.ClickException`` naming the bad variable."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


def is_bind_error(exc: OSError) -> bool:
    """Whether ``exc`` is a socket failing to listen because of its host or port setting."""
    return isinstance(exc, socket.gaierror) or exc.errno in _HOST_ERRNOS + _PORT_ERRNOS


def metrics_bind_error(exc: OSError, host: str, port: int, port_setting: str) -> str:
    """Why a /metrics endpoint cannot listen, naming the setting to change: an unknown or
    foreign address is NEARWATCH_METRICS_HOST's fault, anything else the port's."""
    host_at_fault = isinstance(exc, socket.gaierror) or exc.errno in _HOST_ERRNOS
    setting = "NEARWATCH_METRICS_HOST" if host_at_fault else port_setting
    return f"cannot serve metrics on {host}:{port}: {exc} ({setting})"
