"""The command-line convention every job follows, and its one table of exit codes.

A job that takes a configuration reads it with ``--config PRESET`` and changes any field with
``--set section.field=value`` (repeatable; values are YAML).  Every ``__main__.py`` validates its
input and the tracking server before the job's heavy imports (Ray, MLflow, the training code),
and :func:`run_main` turns the known failures into one ``error: ...`` line on stderr and an
:class:`ExitCode`; anything else keeps its traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from enum import IntEnum

from stable_snn.config import ConfigError
from stable_snn.data import DatasetNotFoundError

from .errors import NonFiniteLossError, RefusedError, TrackingUnavailableError
from .logs import setup_logging


class ExitCode(IntEnum):
    """How a job ended; the same table for every job (README: "Exit codes")."""

    DONE = 0
    FAILURES = 1  # finished, but with failures (e.g. errored Tune trials)
    BAD_INPUT = 2  # bad input or state, refused before any compute
    TRACKING_UNREACHABLE = 3  # the MLflow tracking server does not answer
    NONFINITE_LOSS = 4  # the loss became NaN or Inf


EXIT_CODES: tuple[tuple[tuple[type[BaseException], ...], ExitCode], ...] = (
    ((TrackingUnavailableError,), ExitCode.TRACKING_UNREACHABLE),
    ((NonFiniteLossError,), ExitCode.NONFINITE_LOSS),
    ((ConfigError, DatasetNotFoundError, RefusedError), ExitCode.BAD_INPUT),
)


def exit_code_of(error: BaseException) -> ExitCode | None:
    """The exit code of a known failure, None for anything else."""
    return next((code for kinds, code in EXIT_CODES if isinstance(error, kinds)), None)


def run_main(main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser,
             argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run ``main(args)`` and map a known failure to its exit code."""
    setup_logging()
    args = parser.parse_args(argv)
    try:
        return int(main(args))
    except Exception as e:
        code = exit_code_of(e)
        if code is None:
            raise
        print(f"error: {e}", file=sys.stderr)
        return int(code)


def job_parser(prog: str, doc: str | None, epilog: str | None = None) -> argparse.ArgumentParser:
    """An argument parser whose help is the job module's docstring."""
    return argparse.ArgumentParser(prog=f"python -m {prog}", description=doc, epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_config_arguments(parser: argparse.ArgumentParser, example: str = "jobs/configs/quick.yaml") -> None:
    """``--config PRESET`` and ``--set section.field=value``."""
    parser.add_argument("--config", required=True, help=f"YAML preset, e.g. {example}")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set objective.rho=0.5 (repeatable)")


def config_fields(cls) -> str:
    """``model.{arch,neuron,...}, data.{...}, ...``: every field of a config dataclass of sections."""
    return ", ".join(f"{f.name}.{{{','.join(g.name for g in dataclasses.fields(f.default_factory))}}}"
                     for f in dataclasses.fields(cls))


def percent(v) -> str:
    """An accuracy in [0, 1] as a percentage, ``n/a`` when there is none."""
    return "n/a" if v is None else f"{100 * float(v):.2f}%"
