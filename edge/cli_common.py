"""What every command line of the project shares: ``--version`` and the ``-v``/``-q`` logging flags.

``emotion-edge`` (:mod:`edge.cli`), ``python -m edge.modelctl`` and ``emotion-train`` (:mod:`train_export.cli`)
build their parsers with :func:`top_parser` and give each sub-command :func:`log_flags` as a parent, so
``emotion-edge -v run`` and ``emotion-edge run -v`` mean the same, with one definition of the flags.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any


class VersionAction(argparse.Action):
    """``--version``: print ``PROG VERSION`` and exit. The version is looked up only when asked for: reading
    the package metadata imports modules a plain start does not need."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str = "Print the installed version and exit.") -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        """Print the version on stdout (as argparse's own ``version`` action does) and exit with status 0."""
        from edge.version import package_version

        sys.stdout.write(f"{parser.prog} {package_version()}\n")
        parser.exit()


def log_flags(top: bool = False) -> argparse.ArgumentParser:
    """The parent parser with ``-v/--verbose`` and ``-q/--quiet``.

    Args:
        top: For the top-level parser, where the flags default to False. A sub-command's copy leaves them unset
            unless given (argparse copies every sub-command default over the top level's values, so a False there
            would undo ``emotion-edge -v run``).
    """
    default: Any = False if top else argparse.SUPPRESS
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="More logging: debug messages (the tools: progress).")
    group.add_argument("-q", "--quiet", action="store_true", default=default, help="Log errors only.")
    return parent


def top_parser(prog: str, description: str | None) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The top-level parser of a command (with ``--version`` and the logging flags), and the parent parser to
    give each of its sub-commands."""
    parser = argparse.ArgumentParser(prog=prog, description=description, parents=[log_flags(top=True)])
    parser.add_argument("--version", action=VersionAction)
    return parser, log_flags()


def log_level(args: argparse.Namespace, default: int, verbose: int = logging.DEBUG) -> int:
    """The logging level the flags ask for: ``verbose`` with ``-v``, ERROR with ``-q``, else ``default``."""
    if args.verbose:
        return verbose
    return logging.ERROR if args.quiet else default
