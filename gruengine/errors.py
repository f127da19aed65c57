"""Exceptions with one-line messages; the CLI prints them without a traceback."""
import signal


class GruengineError(Exception):
    """Base class of the engine's own errors."""


class DataError(GruengineError, ValueError):
    """A data file is missing, unreadable or malformed (message names file and line)."""


class CheckpointError(GruengineError, ValueError):
    """A checkpoint is corrupt, truncated, of another format version, or does not fit."""


class TrainingDivergedError(GruengineError, RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal: ``signum`` is SIGINT (Ctrl-C) or SIGTERM (``kill``, a job
    scheduler); the CLI exits 128 + signum."""

    def __init__(self, signum=signal.SIGINT, message=""):
        super().__init__(message)
        self.signum = signum
