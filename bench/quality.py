"""One-class quality benchmark: filled in by the metric-learning work."""

from __future__ import annotations

import click


@click.command("bench")
def bench_command() -> None:
    """Run the one-class quality benchmark."""
    raise click.ClickException("not implemented yet")
