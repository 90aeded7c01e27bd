"""One root for every failure a user can cause or fix: bad input, a missing file, an unusable checkpoint.

Every command catches :class:`PQCADError` once (``pqcad_deploy.cli.common.run_cli``) and prints its message on
one line; anything else is a bug and keeps its traceback. Each subclass also derives from the builtin type
callers used to catch before the hierarchy existed (``RuntimeError``, ``ValueError``, ``ImportError``).
"""

from __future__ import annotations


class PQCADError(Exception):
    """An expected failure whose message names the problem and the fix."""


class UsageError(PQCADError, ValueError):
    """A flag or argument value that cannot work (caught before any work starts)."""


class OutputPathError(PQCADError, ValueError):
    """An output location that is unwritable, a directory, or one of the command's own inputs."""


class Interrupted(PQCADError):
    """Ctrl-C or SIGTERM: the command stopped and cleaned up its temporary files."""

    def __init__(self, signal_name: str = "SIGINT"):
        super().__init__(f"interrupted by {signal_name}; nothing half-written was left behind")
        self.signal_name = signal_name
