"""Config fields that carry their documentation: ``option(default, "help")``.

Every field of every config dataclass is declared with its help text, so the one declaration is
the default, the validation's subject and the documentation: ``spectral config --show`` prints
them, and the README's configuration table is generated from them (``spectral config --markdown``;
``tests/test_config_docs.py`` fails when the README differs).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

HELP = "help"  # the metadata key of a field's help text


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
           secret: bool = False) -> Any:
    """A dataclass field with ``default`` (or ``factory`` for mutable values) and its help text.

    ``secret`` leaves the value out of the dataclass's repr (credentials).
    """
    if not help:
        raise ValueError("every config field needs its help text")
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={HELP: help}, repr=not secret)
    return dataclasses.field(default=default, metadata={HELP: help}, repr=not secret)
