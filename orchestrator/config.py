"""The whole job's configuration: YAML -> nested keyword-only dataclasses.

Each component owns its dataclass (``data_split.config``, ``branches.config``, ``tune.config``
and the run-level ones here); this module only assembles them, applies ``--set key.sub=value``
overrides and rejects unknown keys or wrongly typed values with an error naming the dotted key.

One set of defaults: the dataclass defaults are the embedded default run
(``configs/fashion_mnist.yaml`` spells them out; ``tests/test_config_docs.py`` checks they agree),
so ``spectral run`` without ``--config`` runs it. Every field carries its help text
(``data_split.fields.option``); ``config_reference`` lists them for ``spectral config --show`` and
the README's table (``spectral config --markdown``).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from branches.config import ModelConfig, TrainConfig
from data_split.config import ExtraSourceConfig, SourceConfig, SplitConfig, StorageConfig
from data_split.errors import ConfigError
from data_split.fields import HELP, option
from data_split.storage import RunStorage
from inference.config import PredictConfig, ServeConfig
from tune.config import SweepConfig, TuneConfig
from tune.scoring import GEOMETRIC_P, WEIGHT_RULES

BASELINE_ENGINES = ("single", "ddp")
SECRET_KEYS = ("storage.access_key_id", "storage.secret_access_key")  # never written anywhere (public_dict)


@dataclass(kw_only=True, frozen=True)
class ResourcesConfig:
    gpus_per_branch: float | None = option(None, 'GPUs per branch actor; unset: 1 when the cluster has GPUs, else 0 (CPU); a fraction packs branches on one GPU')
    cpus_per_branch: float = option(1.0, 'CPUs per branch actor')
    max_restarts: int = option(3, 'times Ray restarts a branch whose process died; it resumes from its newest checkpoint')

    def __post_init__(self) -> None:
        if self.gpus_per_branch is not None and self.gpus_per_branch < 0:
            raise ValueError(f"resources.gpus_per_branch must be >= 0, got {self.gpus_per_branch}")
        if self.cpus_per_branch <= 0:
            raise ValueError(f"resources.cpus_per_branch must be > 0, got {self.cpus_per_branch}")
        if self.max_restarts < 0:
            raise ValueError(f"resources.max_restarts must be >= 0, got {self.max_restarts}")


@dataclass(kw_only=True, frozen=True)
class EnsembleConfig:
    weights: str = option("tuned", 'ensemble weights: `uniform`, `geometric` (rank by training loss, w = p (1-p)^rank) or `tuned` (searched by Ray Tune on the validation split)')
    p: float = option(GEOMETRIC_P, '`geometric` rule: p, in (0, 1)')

    def __post_init__(self) -> None:
        if self.weights not in WEIGHT_RULES:
            raise ValueError(f"ensemble.weights: unknown rule {self.weights!r}; expected one of {', '.join(WEIGHT_RULES)}")
        if not 0.0 < self.p < 1.0:
            raise ValueError(f"ensemble.p must be in (0, 1), got {self.p}")


@dataclass(kw_only=True, frozen=True)
class BaselineConfig:
    """How `spectral baseline` trains the full-resolution network (the comparison the method is measured against)."""

    engine: str = option("single", "`single` (one actor, trained like a branch) or `ddp` (Ray Train DDP)")
    workers: int = option(2, "`ddp`: Ray Train workers; `train.batch_size` is the global batch, split evenly over them")
    cpus_per_worker: float = option(1.0, "`ddp`: CPUs per worker (each trains with `train.threads` torch threads)")
    max_failures: int = option(3, "`ddp`: worker-group restarts after a dead worker; each resumes from the newest checkpoint")

    def __post_init__(self) -> None:
        if self.engine not in BASELINE_ENGINES:
            raise ValueError(f"baseline.engine: unknown engine {self.engine!r}; expected one of {', '.join(BASELINE_ENGINES)}")
        if self.workers < 1:
            raise ValueError(f"baseline.workers must be >= 1, got {self.workers}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"baseline.cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.max_failures < 0:
            raise ValueError(f"baseline.max_failures must be >= 0, got {self.max_failures}")


@dataclass(kw_only=True, frozen=True)
class RayConfig:
    address: str | None = option(None, 'unset: start Ray locally; `auto` or `ray://host:10001` to join a cluster')
    num_cpus: int | None = option(None, 'local Ray only: CPUs to offer (unset: all)')

    def __post_init__(self) -> None:
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"ray.num_cpus must be >= 1, got {self.num_cpus}")


@dataclass(kw_only=True, frozen=True)
class SpectralConfig:
    source: SourceConfig = option(factory=SourceConfig, help='where the images come from')
    extra_sources: list[ExtraSourceConfig] = option(factory=list, help='lower-resolution sources (`src` = 1, 2, ...), each with the keys of `source` plus `resources`; only their train split is used, for the branches they determine')
    split: SplitConfig = option(factory=SplitConfig, help='how every image is split into K spectral sub-images')
    storage: StorageConfig = option(factory=StorageConfig, help='where the run lives')
    model: ModelConfig = option(factory=ModelConfig, help='the network of each branch')
    train: TrainConfig = option(factory=TrainConfig, help='how each branch trains')
    resources: ResourcesConfig = option(factory=ResourcesConfig, help='what each branch actor asks of Ray')
    ensemble: EnsembleConfig = option(factory=EnsembleConfig, help="how the branches' logits are weighted")
    baseline: BaselineConfig = option(factory=BaselineConfig, help='`spectral baseline`: one actor, or Ray Train DDP')
    ray: RayConfig = option(factory=RayConfig, help='which Ray to use')
    tune: TuneConfig = option(factory=TuneConfig, help='the Ray Tune search of the ensemble weights (`ensemble.weights: tuned`)')
    sweep: SweepConfig = option(factory=SweepConfig, help='`spectral sweep`: a Ray Tune search over branch-training hyperparameters')
    predict: PredictConfig = option(factory=PredictConfig, help='`spectral predict`: Ray Data batch inference')
    serve: ServeConfig = option(factory=ServeConfig, help='`spectral serve`: the Ray Serve endpoint')

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def public_dict(self) -> dict:
        """``to_dict`` without the secrets (``SECRET_KEYS`` set to None): what may be written or shown."""
        return apply_overrides(self.to_dict(), {key: None for key in SECRET_KEYS})

    def replace(self, **overrides: Any) -> "SpectralConfig":
        """A copy with dotted-key overrides applied, e.g. ``replace(**{"train.epochs": 2})``."""
        return from_dict(apply_overrides(self.to_dict(), overrides))


# -- documentation ------------------------------------------------------------------------------------------
def _show_default(value: Any) -> str:
    return "unset" if value is None else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")


def config_reference(cls: type = None, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, meaning) of every leaf key, in declaration order; nested sections recurse."""
    rows = []
    for f in dataclasses.fields(cls or SpectralConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            rows += config_reference(type(default), f"{prefix}{f.name}.")
        else:
            rows.append((prefix + f.name, _show_default(default), f.metadata.get(HELP, "")))
    return rows


def config_markdown() -> str:
    """The README's configuration table (between its ``config-table`` markers)."""
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{key}` | {default if default == 'unset' else f'`{default}`'} | {meaning} |"
              for key, default, meaning in config_reference()]
    return "\n".join(lines) + "\n"


# -- dict -> dataclass ------------------------------------------------------------------------------
def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if tp is typing.Any:
        return value
    if origin is dict:  # e.g. sweep.space: {dotted key: {distribution: args}}
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key}: expected a mapping, got {value!r}")
        key_tp, value_tp = typing.get_args(tp)
        return {_convert(k, key_tp, f"{key}.{k}"): _convert(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key}: expected a mapping, got {value!r}")
        return _build(tp, value, key + ".")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (str, bool) and isinstance(value, tp):
        return value
    raise ConfigError(f"config key {key}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + u for u in unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {name: _convert(value, hints[name], prefix + name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as e:
        msg = str(e)
        if issubclass(cls, SourceConfig) and prefix != "source.":  # an extra source: name its own keys
            msg = re.sub(r"\bsource\.", prefix, msg)
        raise ConfigError(msg) from e


def from_dict(data: dict) -> SpectralConfig:
    return _build(SpectralConfig, data or {})


def apply_overrides(data: dict, overrides: dict[str, Any]) -> dict:
    """Set dotted keys (``split.rows``) in a nested dict, creating sections as needed."""
    out = dict(data)
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for p in parents:
            child = node.get(p)
            node[p] = dict(child) if isinstance(child, dict) else {}
            node = node[p]
        node[leaf] = value
    return out


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["a.b=3", "c=[28, 28]"]`` -> ``{"a.b": 3, "c": [28, 28]}`` (values parsed as YAML)."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    return out


# Keys that say how to reach a config file on an object store (the file itself cannot say it).
CONFIG_READ_KEYS = ("endpoint_url", "retry_budget_s", "access_key_id", "secret_access_key")


def _read_config_text(path: str | Path, overrides: dict[str, Any]) -> str:
    """A local file, or any fsspec URI (``s3://.../tune/best_config.yaml``) read with the storage settings of
    ``overrides`` (``storage.endpoint_url``, credentials, ...) or else the environment's."""
    path = str(path)
    if "://" not in path or path.startswith("file://"):
        return Path(path.removeprefix("file://")).read_text()
    folder, name = path.rsplit("/", 1)
    settings = {key: overrides[f"storage.{key}"] for key in CONFIG_READ_KEYS if f"storage.{key}" in overrides}
    try:
        store = StorageConfig(uri=folder, **settings)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return RunStorage.from_config(store).read_bytes(name).decode()


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> SpectralConfig:
    """Read a YAML file (``path`` None: the defaults, i.e. the embedded default run) and apply dotted overrides.

    ``path`` may be any fsspec URI: it is read with the ``storage.*`` endpoint and credentials of ``overrides``
    (``--set``) or the environment's, within the retry budget."""
    data: dict = {}
    overrides = overrides or {}
    if path is not None:
        try:
            data = yaml.safe_load(_read_config_text(path, overrides)) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: expected a mapping at the top level")
    try:
        return from_dict(apply_overrides(data, overrides))
    except ConfigError as e:
        raise ConfigError(f"{path or 'config'}: {e}") from e
