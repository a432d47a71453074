"""One family of errors: everything freelabel raises about bad input is a :class:`FreelabelError`,
which the command line prints as one line (exit status 2). The message names the fix."""

from __future__ import annotations


class FreelabelError(Exception):
    """Bad input or a state freelabel cannot go on from; the message says what to do."""


class ConfigError(FreelabelError, ValueError):
    """A recipe, override or flag that cannot be used."""


class DataError(FreelabelError, ValueError):
    """Bad or missing data."""


class BackboneError(FreelabelError, ValueError):
    """A backbone that cannot be built as asked."""


class RunError(FreelabelError, ValueError):
    """A run directory that cannot be used as asked."""


class PretrainedError(FreelabelError, ValueError):
    """A model that cannot be found, loaded, or used the way it was asked."""


class SearchError(FreelabelError, ValueError):
    """An index or query that cannot be used as asked."""


class DiskFullError(FreelabelError):
    """No room on the device for a file; what was there before is intact."""


class TrainingError(FreelabelError, RuntimeError):
    """Training cannot go on (a NaN loss, say)."""
