"""Config fields that carry their documentation and their constraints: ``option(1, "help", ge=1)``.

Every field of every config dataclass is declared with its help text and what it accepts: its type
(the annotation), ``choices`` and the bounds ``ge``/``gt``/``le``/``lt``. The one declaration is the
default, the validation and the documentation: ``spectral config --show`` prints them, and the
configuration table of docs/cli.md is generated from them (``spectral config --markdown``;
``tests/test_config_docs.py`` fails when the page differs).

Config dataclasses derive from ``Section``. Constructing one converts and checks every field against
its declaration, then runs the class's cross-field ``RULES`` (small named functions); an error is a
one-line ``ConfigError`` naming the dotted key: the key the section was built at by ``build`` (the
YAML loader: ``extra_sources[1].limit``), else the class's own ``SECTION`` (``TrainConfig(epochs=0)``:
``train.epochs``).
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import InitVar
from typing import Any

from data_split.errors import ConfigError

HELP, CHOICES, BOUNDS = "help", "choices", "bounds"  # metadata keys of a field's declaration
Key = Callable[[str], str]  # a field's name -> its dotted key, as a rule's error names it
_COMPARE = {"ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt}


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    factory: Callable[[], Any] | None = None,
    secret: bool = False,
    choices: typing.Iterable | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A dataclass field with ``default`` (or ``factory`` for mutable values), its help text and constraints.

    ``choices``: the values allowed; ``ge``/``gt``/``le``/``lt``: bounds of a number (None, where the
    type allows it, is always accepted). ``secret`` leaves the value out of the dataclass's repr.
    """
    if not help:
        raise ValueError("every config field needs its help text")
    bounds = {name: v for name, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    metadata = {HELP: help, CHOICES: tuple(choices) if choices is not None else None, BOUNDS: bounds}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata, repr=not secret)
    return dataclasses.field(default=default, metadata=metadata, repr=not secret)


def bounds_text(bounds: dict[str, float]) -> str:
    """``{"ge": 0, "lt": 1}`` -> ``in [0, 1)``; ``{"ge": 1}`` -> ``>= 1``."""
    low = next(((name, v) for name, v in bounds.items() if name in ("ge", "gt")), None)
    high = next(((name, v) for name, v in bounds.items() if name in ("le", "lt")), None)
    if low and high:
        return f"in {'[' if low[0] == 'ge' else '('}{low[1]}, {high[1]}{']' if high[0] == 'le' else ')'}"
    symbol = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return " and ".join(f"{symbol[name]} {v}" for name, v in bounds.items())


def type_name(tp: Any) -> str:
    """How the docs name an annotation: ``int``, ``list of str``, ``int or list of int`` (None left out)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is list:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    if typing.get_origin(tp) is dict or dataclasses.is_dataclass(tp):
        return "mapping"
    return "any" if tp is Any else tp.__name__


def allowed(f: dataclasses.Field, tp: Any) -> str:
    """What field ``f`` (annotated ``tp``) accepts, for the docs: `` `dct`, `dft` ``, ``float in [0, 1)``."""
    if f.metadata.get(CHOICES):
        return ", ".join(f"`{c}`" for c in f.metadata[CHOICES])
    bounds = f.metadata.get(BOUNDS)
    return f"{type_name(tp)} {bounds_text(bounds)}" if bounds else type_name(tp)


def coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` as the annotation ``tp`` says: an int becomes a float where one is declared, a tuple a list, a
    mapping a ``Section``; anything else is a ``ConfigError`` naming ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key}: expected a mapping, got {value!r}")
        return build(tp, value, key)
    if origin is dict:  # e.g. sweep.space: {dotted key: {distribution: args}}
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key}: expected a mapping, got {value!r}")
        return {coerce(k, args[0], f"{key}.{k}"): coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key}: expected a list, got {value!r}")
        return [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, bool) and tp is not bool:  # YAML's true is not a number
        raise ConfigError(f"config key {key}: expected {type_name(tp)}, got {value!r}")
    if tp is float and isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, tp):
        return value
    raise ConfigError(f"config key {key}: expected {type_name(tp)}, got {value!r}")


def check_declared(f: dataclasses.Field, value: Any, key: str) -> None:
    """Raise a ``ConfigError`` naming ``key`` when ``value`` breaks the choices or bounds declared on ``f``."""
    if value is None:
        return
    choices = f.metadata.get(CHOICES)
    if choices is not None and value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}, got {value!r}")
    bounds = f.metadata.get(BOUNDS)
    if bounds and not all(_COMPARE[name](value, v) for name, v in bounds.items()):
        raise ConfigError(f"{key} must be {bounds_text(bounds)}, got {value}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@dataclasses.dataclass(kw_only=True, frozen=True)
class Section:
    """Base of every config dataclass: construction converts and checks each field, then runs ``RULES``.

    ``SECTION``: the dotted key a directly constructed one is named by in errors. ``RULES``: cross-field
    checks ``rule(section, key)``, where ``key(field_name)`` is the field's dotted key.
    ``at`` (set by ``build``): the dotted key this one is built at, which errors name instead.
    """

    SECTION = ""  # class attributes without annotations: not fields
    RULES = ()
    at: InitVar[str | None] = None

    def __post_init__(self, at: str | None) -> None:
        where = self.SECTION if at is None else at
        key = (lambda name: f"{where}.{name}") if where else (lambda name: name)
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            checked = coerce(value, hints[f.name], key(f.name))
            check_declared(f, checked, key(f.name))
            if checked is not value:
                object.__setattr__(self, f.name, checked)  # frozen: the converted value replaces the given one
        for rule in self.RULES:
            rule(self, key)


def build(cls: type, data: Mapping, at: str = "") -> Any:
    """The section ``cls`` from a mapping (YAML), built at the dotted key ``at``; an unknown key is an error."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(str(name) for name in set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(f'{at}.{u}' if at else u for u in unknown)}; "
            f"known: {', '.join(sorted(names))}"
        )
    return cls(**data, at=at)
