"""User-facing errors: each carries a one-line message; the CLI prints it and exits non-zero."""

from __future__ import annotations


class TesseraError(Exception):
    """Base class for every error a user can cause (bad input, bad config, bad path)."""

    exit_code = 2


class ConfigError(TesseraError, ValueError):
    """A config is malformed: unknown key, wrong type, value out of range, unknown preset."""


class DataError(TesseraError):
    """A data source cannot be read at all (missing path, no examples, bad layout)."""


class TooManyBadSamplesError(DataError):
    """The share of skipped examples exceeded the configured limit."""


class CheckpointError(TesseraError):
    """A checkpoint directory or file is missing, truncated, corrupt or of the wrong kind."""


class UnsafeCheckpointError(CheckpointError):
    """Loading the file would unpickle untrusted data; refused unless explicitly allowed."""


class TokenizerError(TesseraError):
    """A tokenizer file is missing or invalid, or tokenizer training got no text."""


class TrainingError(TesseraError):
    """Training cannot start or continue (unwritable run directory, no disk space, ...)."""


class TrainingDivergedError(TrainingError):
    """Too many consecutive steps had a non-finite loss or gradients."""


class CompileError(TesseraError):
    """``torch.compile`` could not build a graph here (no C++ compiler, an unsupported Python
    or device); the eager path computes the same thing."""

    @classmethod
    def failed(cls, what: str, error: Exception, way_out: str) -> CompileError:
        """One line: what failed, the compiler's first line, and how to go on without it."""
        first = (str(error).strip().splitlines() or [""])[0][:200]
        return cls(f"{what} failed ({type(error).__name__}: {first}); {way_out}")
