"""Errors that reach the user as one clear paragraph (no traceback): what, where, and the fix."""

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class UserFacingError(Exception):
    """Base class: entry points print the message and exit with status 2."""


class ConfigError(UserFacingError, ValueError):
    """A config value is invalid; the message names the key and the allowed values."""


class DataFileError(UserFacingError, RuntimeError):
    """A data file is missing, of another format version, truncated or inconsistent."""


def report_user_errors(run: Callable[[], T]) -> T:
    """Run an entry point; a UserFacingError (also one wrapped by hydra.utils.instantiate) is
    printed as its one paragraph and the process exits with status 2, without a traceback."""
    try:
        return run()
    except Exception as error:
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, UserFacingError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        print(f"\nerror: {cause}", file=sys.stderr)
        sys.exit(2)
