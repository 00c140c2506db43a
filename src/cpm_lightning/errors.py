"""Errors that reach the user as one clear paragraph (no traceback): what, where, and the fix."""


class UserFacingError(Exception):
    """Base class: entry points print the message and exit with status 2."""


class ConfigError(UserFacingError, ValueError):
    """A config value is invalid; the message names the key and the allowed values."""


class DataFileError(UserFacingError, RuntimeError):
    """A data file is missing, of another format version, truncated or inconsistent."""
