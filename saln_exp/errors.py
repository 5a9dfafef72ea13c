"""User-facing errors: each carries one line that says what is wrong and how to fix it.

The entry point prints them without a traceback and exits with status 2; anything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """A wrong value, missing file or impossible combination the user can fix."""


class ConfigError(UserError):
    """A configuration value is invalid."""


class DataMissingError(UserError):
    """A dataset or pretrained weights are not on disk and downloading is off."""


class NonFiniteLossError(UserError):
    """Training diverged: the loss became NaN or infinite."""


class DataCorruptError(UserError):
    """A dataset's files are on disk but cannot be read (truncated, garbage, failed checksum)."""


class DataReaderError(UserError):
    """A process decoding a streamed dataset died (most often killed for memory)."""
