"""argparse with the CLI's one-line errors, for every `scalelab` command's parser.

A bad flag ("--world-sizes abc", an unknown option, a missing required one) prints
``scalelab: error: <what> (see <command> --help)`` and exits 2, like every other user error,
instead of argparse's usage block followed by the message.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose errors are one line; subparsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        line = " ".join(message.split())  # argparse messages may wrap choices over lines
        self.exit(2, f"scalelab: error: {line} (see {self.prog} --help)\n")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        sys.exit(status)

    def parse_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        """As argparse, except that config overrides may stand on both sides of the flags
        (`train a.b=1 --config p c.d=2`): argparse takes only the first run of positionals of
        an nargs="*" argument, so later ones join `overrides` (any other leftover is an error)."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra and hasattr(parsed, "overrides") and not any(e.startswith("-") for e in extra):
            parsed.overrides = [*(parsed.overrides or []), *extra]
        elif extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed


def folder(text: str) -> str:
    """An argparse type for an output folder: an empty one (`--out "$DIR"` with DIR unset) would
    write into the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: give the folder to write into")
    return text
