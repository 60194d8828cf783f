"""The suite's one command: `python -m benchmark <command> [options]` (installed as `mammo-bench` too).

Each command is the `main` of one module, imported only when asked for, so `--help` of one command does
not load the others. `python -m benchmark` alone lists the commands; `python -m benchmark <command> -h`
gives a command's options. The pipeline's stages (dvc.yaml) run the first five.
"""
from __future__ import annotations

import importlib
import sys

from benchmark.cli import run_cli

# command -> (module whose `main(argv)` runs it, what it is for)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("benchmark.data.prepare", "stage: render or read the data, split it, write data/prepared/"),
    "train": ("benchmark.training.train", "stage: train one run of params.yaml, every seed"),
    "evaluate": ("benchmark.evaluation.evaluate", "stage: score one run on both test sets, both protocols"),
    "performance": ("benchmark.tools.bench_performance", "stage: images/s of every method, projected time"),
    "report": ("benchmark.reporting.report", "stage: reports/tables.md and the figures"),
    "study": ("benchmark.tools.study", "a tuning study of methods' choices, on fresh held-out images"),
    "heldout": ("benchmark.tools.heldout", "score trained runs on fresh synthetic images (never the test split)"),
    "launch": ("benchmark.tools.launch", "train the stale runs as submitit jobs (local processes or SLURM)"),
    "bench-threads": ("benchmark.tools.bench_threads", "seeds side by side or serial: which is faster here"),
    "bench-film-crops": ("benchmark.tools.bench_film_crops", "the breast crop on the real sample films"),
    "bench-real-prepare": ("benchmark.tools.bench_real_prepare", "parallel DICOM decoding speed"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
    return ("usage: python -m benchmark <command> [options]   (<command> -h: its options)\n\ncommands:\n"
            + "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"python -m benchmark: unknown command {name!r}; the commands are {', '.join(COMMANDS)}.",
              file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    program = sys.argv[0]
    sys.argv[0] = f"python -m benchmark {name}"  # argparse's prog in usage lines and errors
    try:
        return run_cli(module.main, rest)
    finally:
        sys.argv[0] = program


if __name__ == "__main__":
    sys.exit(main())
