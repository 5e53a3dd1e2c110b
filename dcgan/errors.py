"""The one exception type for mistakes a user can fix (bad config, missing files)."""

from __future__ import annotations


class UserInputError(ValueError):
    """A problem with the user's input, with a message that says what was wrong and what is
    accepted. Entry scripts print it without a traceback and exit with status 2."""
