"""The ``nearwatch`` command line: the edge where configuration is read and passed in."""

from __future__ import annotations

import click

from worker.commands_model import generate_command, score_command, train_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nearwatch")
def main() -> None:
    """nearwatch: anomaly detection by learned distance to normal reference records."""


main.add_command(generate_command)
main.add_command(train_command)
main.add_command(score_command)


def _register_optional() -> None:
    # Service and benchmark commands live with their subsystems.
    from bench.quality import bench_command
    from worker.commands_service import service_commands

    main.add_command(bench_command)
    for command in service_commands:
        main.add_command(command)


_register_optional()
