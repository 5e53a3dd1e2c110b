"""Shared behaviour of the entry scripts: user errors end in one clear line, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from dcgan.errors import UserInputError

T = TypeVar("T")


def run_or_exit(fn: Callable[[], T]) -> T:
    """Run ``fn``; on ``UserInputError`` print ``error: <message>`` to stderr and exit 2."""
    try:
        return fn()
    except UserInputError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
