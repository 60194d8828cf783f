"""How the command-line entry points report a user's mistake: the message, one line per problem, no traceback.

Errors that carry a complete explanation (a wrong params.yaml value, a missing stage output, a diverged
run, a run locked by another trainer) derive from `ReportedError`. Every `python -m benchmark.<stage>`
runs its `main` through `run_cli`, which prints such an error to stderr and exits with status 1; any
other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from typing import Callable


class ReportedError(Exception):
    """An error whose message says everything the user needs: what is wrong, where, and what is allowed."""


class MissingOutputError(ReportedError, FileNotFoundError):
    """A stage's input that an earlier stage writes is absent; the message names the file and the stage."""


class DamagedOutputError(ReportedError, ValueError):
    """A stage's input that an earlier stage writes is there but unreadable or not what that stage writes (truncated,
    edited, another format); the message names the file and the command that rebuilds it."""


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run an entry point's `main`; a ReportedError becomes its message on stderr and exit status 1."""
    try:
        return int(main(argv) or 0)
    except ReportedError as error:
        print(str(error), file=sys.stderr)
        return 1
