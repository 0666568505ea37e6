"""The ``psma-stage`` command line.

Each subcommand lives in its own module under :mod:`staging.commands` and exposes
``register(subparsers)``; it adds its parser and sets ``func=handler`` where
``handler(args) -> int``. Further commands come from the ``psma_stage.commands`` entry-point
group (the development-only ``phantom`` command of ``fixtures/`` arrives that way, so the
shipped package never imports ``fixtures``).

Exit codes: 0 ok, 1 the input could not be processed (or some cases failed), 2 usage or
configuration error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from imaging import __version__
from imaging.errors import ConfigError, PipelineError

__all__ = ["main"]

logger = logging.getLogger(__name__)

_COMMAND_MODULES: dict[str, str] = {
    # command name -> module that registers it, in the order of --help
    "inspect": "staging.commands.inspect",
    "suv": "staging.commands.inspect",
    "stage": "staging.commands.stage",
    "anatomy": "staging.commands.anatomy",
    "run": "staging.commands.run",
    "export": "staging.commands.run",
    "import-clinical": "staging.commands.run",
    "bench": "staging.commands.bench",
    "cohort": "staging.commands.cohort",
}
"""Modules are imported only for the command being run (their imports are heavy);
``--help`` without a command imports them all to list them."""


class _UsageError(Exception):
    """argparse reported a usage error (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise _UsageError(f"{self.prog}: error: {message}")


def _requested_command(argv: Sequence[str] | None) -> str | None:
    """The subcommand named on the command line (the first non-option word), if any."""
    for word in sys.argv[1:] if argv is None else argv:
        if not word.startswith("-"):
            return word
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser, with ``command``'s subcommand only, or every one when None."""
    parser = _Parser(
        prog="psma-stage",
        description="Stage PSMA PET/CT scans reproducibly: DICOM or NIfTI in, SUV, anatomy, "
        "lesions, miTNM stage and study group out; cohort statistics and method benchmarks.",
    )
    parser.add_argument("--version", action="version", version=f"psma-stage {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    plugins = {ep.name: ep for ep in entry_points(group="psma_stage.commands")}
    everything = command not in _COMMAND_MODULES and command not in plugins
    for module in dict.fromkeys(_COMMAND_MODULES.values()):
        if everything or _COMMAND_MODULES.get(command or "") == module:
            importlib.import_module(module).register(subparsers)
    for name, ep in plugins.items():
        if not (everything or name == command):
            continue
        try:
            register = ep.load()
        except ImportError as err:  # e.g. fixtures/ is not part of a wheel install
            logger.debug("command %s unavailable: %s", ep.name, err)
            continue
        register(subparsers)
    return parser


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    root = logging.getLogger()
    if not any(getattr(h, "_psma_stage", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._psma_stage = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``psma-stage``; return the exit code (0 ok, 1 failed input, 2 usage)."""
    parser = build_parser(_requested_command(argv))
    try:
        args = parser.parse_args(argv)
    except _UsageError as err:
        print(err, file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help / --version
        return int(exit_.code or 0)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    _configure_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args))
    except ConfigError as err:
        print(f"psma-stage {args.command}: configuration error: {err}", file=sys.stderr)
        return 2
    except PipelineError as err:
        print(f"psma-stage {args.command}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"psma-stage {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # the CLI boundary: one line, never a library traceback
        logger.debug("internal error", exc_info=True)
        print(
            f"psma-stage {args.command}: internal error {type(err).__name__}: {err} "
            "(rerun with -vv for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
