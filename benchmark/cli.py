"""How the command-line entry points report a user's mistake: the message, one line per problem, no traceback.

Errors that carry a complete explanation (a wrong params.yaml value, a missing stage output, a diverged
run, a run locked by another trainer) derive from `ReportedError`. Every `python -m benchmark.<stage>`
runs its `main` through `run_cli`, which prints such an error to stderr and exits with status 1; any
other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

DVC_STAGE = "DVC_STAGE"  # DVC sets it to the address of the stage it runs, e.g. train@ours_10


class ReportedError(Exception):
    """An error whose message says everything the user needs: what is wrong, where, and what is allowed."""


class MissingOutputError(ReportedError, FileNotFoundError):
    """A stage's input that an earlier stage writes is absent; the message names the file and the stage."""


class DamagedOutputError(ReportedError, ValueError):
    """A stage's input that an earlier stage writes is there but unreadable or not what that stage writes (truncated,
    edited, another format); the message names the file and the command that rebuilds it."""


class UnwritableOutputError(ReportedError):
    """An output could not be written or replaced (a full disk, a read-only folder); nothing was left half-written."""


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run an entry point's `main`; a ReportedError becomes its message on stderr and exit status 1."""
    try:
        return int(main(argv) or 0)
    except ReportedError as error:
        print(str(error), file=sys.stderr)
        return 1


def add_run_argument(parser: argparse.ArgumentParser) -> None:
    """The run a per-run stage works on: named on the command line, or read from the DVC stage that runs it.

    dvc.yaml passes no run name through the shell (`--from-dvc-stage`): DVC interpolates a `runs` key into the
    command before any schema sees it, so a name with a quote or a `;` would run as shell code."""
    parser.add_argument("run", nargs="?", help="a key of `runs` in params.yaml")
    parser.add_argument("--from-dvc-stage", action="store_true",
                        help=f"take the run from ${DVC_STAGE}, the <stage>@<run> DVC runs (what dvc.yaml uses)")


def chosen_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """The run of `add_run_argument`'s arguments; one of the two ways, not both, not neither."""
    if args.from_dvc_stage == (args.run is not None):
        parser.error("name one run, or pass --from-dvc-stage under `dvc repro` (not both)")
    if args.run is not None:
        return args.run
    address = os.environ.get(DVC_STAGE, "")
    stage = address.rsplit(":", 1)[-1] if ":" in address.split("@", 1)[0] else address  # dvc.yaml:train@x
    if "@" not in stage:
        raise ReportedError(f"--from-dvc-stage: ${DVC_STAGE} is {address!r}, not a <stage>@<run> address; the flag is "
                            "for dvc.yaml (by hand, name the run: python -m benchmark <command> <run>)")
    return stage.split("@", 1)[1]
