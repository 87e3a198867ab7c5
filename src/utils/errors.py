"""Bad input a user can fix, and the one way it ends a command.

Anything a user can get wrong (a path, an option, a config key, a checkpoint that does not fit) is raised
as :class:`UsageError` where it is first known. The command catches it and prints one line on stderr,
``<command>: error: <what is wrong and how to fix it>``, and exits with code 2 (:func:`report`,
:func:`fail`). ``src.weights.CheckpointError`` is a UsageError too.
"""
import argparse
import os
import sys
from typing import NoReturn, Optional

__all__ = ['UsageError', 'EXIT_USAGE', 'program_name', 'error_line', 'report', 'fail', 'OneLineParser']

EXIT_USAGE = 2  # argparse's exit code for a bad command line: ours for any bad input


class UsageError(Exception):
    """Bad input that the user can fix: reported as one line, exit code 2."""


def program_name() -> str:
    """The command as the user typed it: ``classification.py``, ``detection/train.py``, ``export.py``."""
    if not sys.argv or not sys.argv[0] or sys.argv[0] == '-c':
        return 'convmlp'
    path = os.path.normpath(sys.argv[0])
    parent = os.path.basename(os.path.dirname(path))
    name = os.path.basename(path)
    return f'{parent}/{name}' if parent in ('detection', 'segmentation') else name


def error_line(message: object, prog: Optional[str] = None) -> str:
    """``<prog>: error: <message>``, the message's first line only."""
    text = str(message).strip().splitlines()
    return f'{prog or program_name()}: error: {text[0] if text else type(message).__name__}'


def report(error: object, prog: Optional[str] = None, show: bool = True) -> int:
    """Print the error line (unless ``show`` is False, e.g. on every rank but the first) and return 2."""
    if show:
        print(error_line(error, prog), file=sys.stderr, flush=True)
    return EXIT_USAGE


def fail(message: object, prog: Optional[str] = None) -> NoReturn:
    """Print the error line and exit with code 2."""
    report(message, prog)
    raise SystemExit(EXIT_USAGE)


class OneLineParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose bad command line ends as every other bad input does: the one
    error line (no usage block), exit code 2."""

    def error(self, message: str) -> NoReturn:
        fail(message, self.prog)
