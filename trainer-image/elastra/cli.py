"""The `elastra` console script.

Each subcommand is owned by the package that implements it and is imported only when invoked, so that
`elastra --help` stays fast and `elastra operator` never loads torch. A subcommand module exposes
`main(argv: list[str]) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Subcommand:
    """One `elastra <name>` entry."""

    name: str
    """What the user types."""
    module: str
    """Module whose `main(argv)` runs it."""
    help: str
    """One line for `elastra --help`."""


SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand(
        "local", "localcluster.cli", "run a single-machine Kubernetes stand-in (up, node, status, down)"
    ),
    Subcommand(
        "ckpt",
        "elastra.checkpoint.cli",
        "work with checkpoints: ls, inspect, verify, consolidate, merge, export (to Hugging Face)",
    ),
    Subcommand(
        "operator", "elastra_operator.cli", "run the TrainingJob operator against the current kubeconfig"
    ),
    Subcommand(
        "crds",
        "elastra_operator.crdgen",
        "generate the CRD manifests from the pydantic models in elastra.api",
    ),
    Subcommand("demo", "elastra.demo", "run the main job end to end on localcluster and write a report"),
    Subcommand(
        "hpo", "elastra.hpo.cli", "hyperparameter search whose trials are TrainingJobs (hpo run SPEC)"
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elastra",
        description="Elastra: checkpoint-aware elastic PyTorch training on Kubernetes.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in SUBCOMMANDS:
        p = sub.add_parser(command.name, help=command.help, add_help=False)
        p.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in {c.name for c in SUBCOMMANDS}:
        # argparse's REMAINDER drops a subcommand's leading `--flags`: hand them over verbatim.
        ns = argparse.Namespace(version=False, command=argv[0], args=argv[1:])
    else:
        ns = parser.parse_args(argv)
    if ns.version:
        from elastra import __version__

        print(__version__)
        return 0
    if ns.command is None:
        parser.print_help()
        return 2
    command = next(c for c in SUBCOMMANDS if c.name == ns.command)
    try:
        module = importlib.import_module(command.module)
    except ModuleNotFoundError as exc:
        print(
            f"elastra {command.name}: not available in this installation ({exc.name} is missing). "
            f"Install the extra that provides it, e.g. `pip install 'elastra[operator,trainer,local]'`.",
            file=sys.stderr,
        )
        return 3
    try:
        rc: int = module.main(list(ns.args))
    except BrokenPipeError:
        return _closed_pipe()
    return rc


EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: what a shell reports for a command whose reader went away (`elastra ... | head`)."""


def _closed_pipe() -> int:
    """The reader of stdout went away: stop quietly, without a traceback, as `cat` would. Python
    flushes stdout once more at exit, so it is pointed at /dev/null first."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
