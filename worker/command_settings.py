"""The settings every command reads once at the edge, with a one-line error instead of a
traceback when an environment variable holds a value the service cannot use."""

from __future__ import annotations

import difflib
import errno
import functools
import logging
import os
import socket
from collections.abc import Iterator, Mapping

import click

from .settings import Settings, SettingsError

log = logging.getLogger("nearwatch.settings")
_warned: set[str] = set()  # each unknown variable once per process, however often read

# bind() errors that a metrics setting explains; others (a full disk, ...) stay tracebacks
_HOST_ERRNOS = (errno.EADDRNOTAVAIL,)  # an address that is not this machine's
_PORT_ERRNOS = (errno.EADDRINUSE, errno.EACCES)  # a busy or privileged port
_PREFIX = len("NEARWATCH_")


def cli_settings() -> Settings:
    """``Settings.from_env()``, or ``click.ClickException`` naming the bad variable; a
    ``NEARWATCH_*`` variable that is no setting is logged as a warning."""
    for message in unknown_settings():
        if message not in _warned:
            _warned.add(message)
            log.warning(message)
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


class _Recording(Mapping[str, str]):
    """An empty environment that notes every name looked up in it."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.names.add(name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@functools.cache
def setting_names() -> frozenset[str]:
    """Every ``NEARWATCH_*`` variable ``from_env`` reads, recorded from reading an empty
    environment: the list cannot fall behind the code (nothing else reads the environment)."""
    recording = _Recording()
    Settings.from_env(recording)
    return frozenset(recording.names)


def unknown_settings(environ: Mapping[str, str] | None = None) -> list[str]:
    """A message per ``NEARWATCH_*`` variable that is no setting (a typo would otherwise be
    ignored without a word), naming the closest setting there is one."""
    env = os.environ if environ is None else environ
    known = setting_names()
    messages = []
    for name in sorted(n for n in env if n.startswith("NEARWATCH_") and n not in known):
        # compared without the prefix every name shares, or anything would be "close"
        close = difflib.get_close_matches(name[_PREFIX:], [k[_PREFIX:] for k in known], n=1)
        hint = f" (did you mean NEARWATCH_{close[0]}?)" if close else ""
        messages.append(f"{name} is not a nearwatch setting{hint}; ignored")
    return messages


def is_bind_error(exc: OSError) -> bool:
    """Whether ``exc`` is a socket failing to listen because of its host or port setting."""
    return isinstance(exc, socket.gaierror) or exc.errno in _HOST_ERRNOS + _PORT_ERRNOS


def metrics_bind_error(exc: OSError, host: str, port: int, port_setting: str) -> str:
    """Why a /metrics endpoint cannot listen, naming the setting to change: an unknown or
    foreign address is NEARWATCH_METRICS_HOST's fault, anything else the port's."""
    host_at_fault = isinstance(exc, socket.gaierror) or exc.errno in _HOST_ERRNOS
    setting = "NEARWATCH_METRICS_HOST" if host_at_fault else port_setting
    return f"cannot serve metrics on {host}:{port}: {exc} ({setting})"
