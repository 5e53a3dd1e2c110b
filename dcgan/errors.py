"""Errors that end a run with one clear line instead of a traceback.

Entry scripts (``dcgan.cli.run_or_exit``) print ``<label>: <message>`` to stderr and exit with
the error's ``exit_code``; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class ReportedError(Exception):
    """An error whose message says all a user needs: what went wrong and what to do."""

    label = "error"
    exit_code = 1


class UserInputError(ReportedError, ValueError):
    """A problem with the user's input (bad setting, missing or unreadable file), with a
    message that says what was wrong and what is accepted. Exit status 2."""

    exit_code = 2


class OutputError(ReportedError, OSError):
    """A file could not be written (disk full, read-only or missing folder). The previous
    version of the file, if any, is intact."""


class TrainingDiverged(ReportedError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(ReportedError):
    """Ctrl-C or SIGTERM stopped training after it saved the current state. Exit status
    128 + the signal number, as a shell reports a process ended by that signal."""

    label = "interrupted"

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@contextmanager
def entry_point() -> Iterator[None]:
    """Wrap an entry script's imports and its Hydra ``main()``, the parts no run handles itself:

    - Ctrl-C there (importing torch takes seconds) ends with one line and exit 130, not a
      ``KeyboardInterrupt`` traceback; once training starts, its own handler saves the state.
    - A config Hydra cannot compose (``dataset=cifar10``, a mistyped key, a malformed override)
      is an input mistake like any other: one ``error:`` line that says what is accepted
      (``dcgan.cli.describe_config_error``), exit 2. Hydra would print its own report, which
      sends a mistyped key to ``+key=...``, and exit 1; with HYDRA_FULL_ERROR set, it raises
      the error instead, for us to report. A user who sets HYDRA_FULL_ERROR gets Hydra's.

    This module imports nothing heavy, so a script can enter this before importing the rest.
    """
    ours = "HYDRA_FULL_ERROR" not in os.environ
    if ours:
        os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    except KeyboardInterrupt:
        print("interrupted: Ctrl-C before training began; nothing to save", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as e:
        if not (ours and _is_config_error(e)):
            raise
        from dcgan.cli import describe_config_error  # loaded by now: Hydra was composing

        print(f"{UserInputError.label}: {describe_config_error(e)}", file=sys.stderr)
        raise SystemExit(UserInputError.exit_code) from None
    finally:
        if ours:
            os.environ.pop("HYDRA_FULL_ERROR", None)


def _is_config_error(error: BaseException) -> bool:
    """Hydra's errors about the config (not the run's), and an interpolation that does not
    resolve (``--cfg hydra --resolve`` reaches one)."""
    if "hydra" not in sys.modules:
        return False
    from hydra.errors import CompactHydraException
    from omegaconf.errors import InterpolationResolutionError

    return isinstance(error, CompactHydraException | InterpolationResolutionError)


# --------------------------------------------------------------------------------------------
# checks of single settings, with one wording: "<key>=<value> <what is accepted>"


def require(ok: bool, key: str, value: object, requirement: str) -> None:
    """Raise ``UserInputError("<key>=<value> <requirement>")`` unless ``ok``."""
    if not ok:
        raise UserInputError(f"{key}={value!r} {requirement}")


def integer(value: object, key: str, minimum: int = 1) -> int:
    """``value``, checked to be an integer >= ``minimum`` (not a bool)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    require(ok, key, value, f"must be an integer >= {minimum}")
    return value  # type: ignore[return-value]


def positive_number(value: object, key: str) -> float:
    """``value``, checked to be a number > 0 (not a bool)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    require(ok, key, value, "must be a number > 0")
    return float(value)  # type: ignore[arg-type]


def choice(value: object, key: str, options: tuple[str, ...]) -> str:
    """``value``, checked to be one of ``options``."""
    require(value in options, key, value, f"is not known; choose one of {', '.join(options)}")
    return value  # type: ignore[return-value]
