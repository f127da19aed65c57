"""Exceptions with one-line messages; the CLI prints them without a traceback."""


class GruengineError(Exception):
    """Base class of the engine's own errors."""


class DataError(GruengineError, ValueError):
    """A data file is missing, unreadable or malformed (message names file and line)."""


class CheckpointError(GruengineError, ValueError):
    """A checkpoint is corrupt, truncated, of another format version, or does not fit."""


class TrainingDivergedError(GruengineError, RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""
