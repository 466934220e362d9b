"""The ``nearwatch`` command: the service commands (``worker/cli.py``) and the retraining
loop's (``scheduler/commands.py``). It lives here because the worker never imports the
scheduler."""

from __future__ import annotations

from nearwatch.scheduler.commands import scheduler_commands
from nearwatch.worker.cli import main

for _command in scheduler_commands:
    main.add_command(_command)

__all__ = ["main"]

if __name__ == "__main__":
    main()
