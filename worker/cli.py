"""The ``nearwatch`` command line: the edge where configuration is read and passed in."""

from __future__ import annotations

import click

from .commands_model import generate_command, score_command, train_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nearwatch")
def main() -> None:
    """nearwatch: anomaly detection by learned distance to normal reference records."""


main.add_command(generate_command)
main.add_command(train_command)
main.add_command(score_command)


@main.command(
    "bench", add_help_option=False,
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.pass_context
def bench_command(context: click.Context) -> None:
    """Quality benchmark (developer tool; needs a source checkout and the bench extra)."""
    import sys
    from pathlib import Path

    # bench/ is not shipped in the wheel: it is imported from the source checkout, lazily, so
    # the production CLI never depends on it (nor on scikit-learn / matplotlib).
    if str(Path.cwd()) not in sys.path:
        sys.path.append(str(Path.cwd()))
    try:
        from bench.quality import bench_command as quality_command
    except ImportError as exc:
        raise click.ClickException(
            f"nearwatch bench is a developer tool ({exc}): run it from a source checkout of "
            "nearwatch after `pip install -e '.[bench]'`"
        ) from exc
    quality_command.main(list(context.args), prog_name="nearwatch bench")


def _register_service_commands() -> None:
    # Service commands live with their subsystem.
    from .commands_service import service_commands

    for command in service_commands:
        main.add_command(command)


_register_service_commands()
