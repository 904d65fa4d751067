"""A run keeps its configuration: ``<run>/config.yaml``, the resolved config, every key, secrets removed.

``keep_config`` writes it (``api.split``, ``api.train``, ``api.evaluate``: the last configuration each step ran
with); ``resume_config`` reads it back for ``spectral resume`` (and ``spectral run --storage URI`` without
``--config`` on an existing run) with the command line's ``--set`` on top, refusing an override that would change
the stored split. ``config_yaml`` is the commented YAML both write and ``spectral config --config F`` prints:
each key under its help text, so the file documents itself and loads back to the same config.
"""

from __future__ import annotations

import dataclasses
import textwrap
import typing
from typing import Any

import yaml

from data_split import layout
from data_split.errors import ConfigError
from data_split.fields import HELP
from data_split.storage import RunStorage
from orchestrator.config import SpectralConfig, load_config

SPLIT_SECTIONS = ("source", "extra_sources", "split")  # keys that make another split (the manifest's config hash)
COMMENT_WIDTH = 100


def _value(value: Any) -> str:
    """One YAML value on one line (flow style): ``3``, ``null``, ``[28, 28]``, ``'a: b'``."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _comment(text: str, indent: str) -> list[str]:
    return [f"{indent}# {line}" for line in textwrap.wrap(" ".join(text.split()), COMMENT_WIDTH)]


def _section_lines(section: Any, data: dict, depth: int) -> list[str]:
    indent = "  " * depth
    lines = []
    for f in dataclasses.fields(section):
        if not f.init:
            continue
        value = data[f.name]
        help_text = f.metadata.get(HELP, "")
        child = getattr(section, f.name)
        if dataclasses.is_dataclass(child) and isinstance(value, dict):
            lines += ([""] if depth == 0 else []) + _comment(help_text, indent) + [f"{indent}{f.name}:"]
            lines += _section_lines(child, value, depth + 1)
        else:
            lines += _comment(help_text, indent) + [f"{indent}{f.name}: {_value(value)}"]
    return lines


def config_yaml(cfg: SpectralConfig, *, header: str | None = None) -> str:
    """``cfg`` as commented YAML: every key (secrets as null) under its meaning; ``load_config`` reads it back."""
    lines = _comment(header, "") if header else []
    lines += _section_lines(cfg, cfg.public_dict(), 0)
    return "\n".join(lines).lstrip("\n") + "\n"


def keep_config(cfg: SpectralConfig, storage: RunStorage | None = None) -> None:
    """Write ``<run>/config.yaml`` (atomically, like every output): what the run ran with last."""
    storage = storage or RunStorage.from_config(cfg.storage)
    header = (
        "The configuration this run ran with last (secrets removed), written by spectral; "
        "`spectral resume --storage <run>` continues with it."
    )
    storage.write_bytes(layout.RUN_CONFIG, config_yaml(cfg, header=header).encode())


def stored_config_uri(storage_uri: str) -> str:
    return f"{storage_uri.rstrip('/')}/{layout.RUN_CONFIG}"


def _get(data: dict, dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def split_conflicts(stored: SpectralConfig, wanted: SpectralConfig, keys: typing.Iterable[str]) -> list[str]:
    """The dotted ``keys`` (the command line's ``--set``) of a split section whose value differs between the two."""
    old, new = stored.public_dict(), wanted.public_dict()
    return [
        key for key in keys if key.split(".")[0].split("[")[0] in SPLIT_SECTIONS and _get(old, key) != _get(new, key)
    ]


def resume_config(storage_uri: str, overrides: dict[str, Any], *, allow_split_change: bool = False) -> SpectralConfig:
    """The run's stored config with ``overrides`` on top; a ``ConfigError`` when there is none, or when an
    override changes the split (that is another run: another ``--storage``, or ``--overwrite``)."""
    uri = stored_config_uri(storage_uri)
    reach = {key: v for key, v in overrides.items() if key.startswith("storage.")}  # how to read the file
    try:
        stored = load_config(uri, {**reach, "storage.uri": storage_uri})
    except ConfigError as e:
        if "does not exist" in str(e):
            raise ConfigError(
                f"{uri} does not exist: nothing to resume at {storage_uri} (start it with "
                f"`spectral run --config FILE --storage {storage_uri}`)"
            ) from None
        raise
    wanted = load_config(uri, {**overrides, "storage.uri": storage_uri})
    conflicts = [] if allow_split_change else split_conflicts(stored, wanted, overrides)
    if conflicts:
        old = stored.public_dict()
        named = ", ".join(
            f"--set {key}={_value(overrides[key])} (stored: {_value(_get(old, key))})" for key in conflicts
        )
        raise ConfigError(
            f"{named} conflicts with the split stored at {storage_uri} ({uri}); a different split is a "
            "new run: use another --storage, or --overwrite"
        )
    return wanted


def has_stored_config(storage_uri: str, overrides: dict[str, Any]) -> bool:
    """Whether ``storage_uri`` holds a run's ``config.yaml`` (read with the storage keys of ``overrides``)."""
    from data_split.config import StorageConfig
    from orchestrator.config import CONFIG_READ_KEYS

    settings = {key: overrides[f"storage.{key}"] for key in CONFIG_READ_KEYS if f"storage.{key}" in overrides}
    try:
        return RunStorage.from_config(StorageConfig(uri=storage_uri, **settings)).exists(layout.RUN_CONFIG)
    except ValueError as e:
        raise ConfigError(str(e)) from e
