"""One error hierarchy for the whole project (docs/design.md, "Errors").

``SpectralError`` is the base of every error a *user* can act on: a bad config key, a missing or
malformed source file, a run URI that holds another experiment, unreachable storage, a failed
branch. The CLI prints these as one line (with ``-v``, also their traceback); any other
exception is a bug and the CLI prints its traceback.

Each subclass also derives from the builtin it always was (``ValueError``, ``RuntimeError``), so
``except ValueError`` keeps working. Every error may cross a process boundary (a Ray task, a Ray
Client connection): one that keeps state beyond its message defines ``__reduce__`` so that it
pickles (``tests/test_errors.py`` round-trips each).
"""

from __future__ import annotations


class SpectralError(Exception):
    """An error the user can act on; its message names the key, file or URI to fix."""


class ConfigError(SpectralError, ValueError):
    """A config file or override is invalid; the message names the key."""


def user_error(error: BaseException | None) -> SpectralError | None:
    """The first ``SpectralError`` in ``error``'s cause chain, unwrapped from Ray's wrappers; else None.

    Ray re-raises a remote exception ``X`` as ``RayTaskError(X)`` (an instance of ``X`` whose
    message is the remote traceback) and keeps the original in ``.cause``; Python chains keep
    theirs in ``__cause__``. We follow both, so the user sees the original one-line message.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        cause = getattr(error, "cause", None)
        if isinstance(error, SpectralError):
            return cause if isinstance(cause, SpectralError) else error  # RayTaskError(X): X itself
        error = cause if isinstance(cause, BaseException) else error.__cause__
    return None
