"""The whole job's configuration: YAML -> nested keyword-only dataclasses.

Each component owns its dataclass (``data_split.config``, ``branches.config``,
and the run-level ones here); this module only assembles them, applies
``--set key.sub=value`` overrides and rejects unknown keys or wrongly typed
values with an error naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from branches.config import ModelConfig, TrainConfig
from data_split.config import ExtraSourceConfig, SourceConfig, SplitConfig, StorageConfig
from inference.config import PredictConfig, ServeConfig
from tune.config import SweepConfig, TuneConfig

WEIGHT_RULES = ("uniform", "geometric", "tuned")
BASELINE_ENGINES = ("single", "ddp")
SECRET_KEYS = ("storage.access_key_id", "storage.secret_access_key")  # never written anywhere (public_dict)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


@dataclass(kw_only=True, frozen=True)
class ResourcesConfig:
    gpus_per_branch: float | None = None  # None: 1 when the cluster has GPUs, else 0 (CPU); fractions share a GPU
    cpus_per_branch: float = 1.0
    max_restarts: int = 3  # times Ray restarts a branch actor whose process died; it resumes from its checkpoint

    def __post_init__(self) -> None:
        if self.gpus_per_branch is not None and self.gpus_per_branch < 0:
            raise ValueError(f"resources.gpus_per_branch must be >= 0, got {self.gpus_per_branch}")
        if self.cpus_per_branch <= 0:
            raise ValueError(f"resources.cpus_per_branch must be > 0, got {self.cpus_per_branch}")
        if self.max_restarts < 0:
            raise ValueError(f"resources.max_restarts must be >= 0, got {self.max_restarts}")


@dataclass(kw_only=True, frozen=True)
class EnsembleConfig:
    weights: str = "uniform"  # one of WEIGHT_RULES
    p: float = 0.3  # geometric rule: w = p (1 - p)^rank, rank by final training loss

    def __post_init__(self) -> None:
        if self.weights not in WEIGHT_RULES:
            raise ValueError(f"ensemble.weights: unknown rule {self.weights!r}; expected one of {', '.join(WEIGHT_RULES)}")
        if not 0.0 < self.p < 1.0:
            raise ValueError(f"ensemble.p must be in (0, 1), got {self.p}")


@dataclass(kw_only=True, frozen=True)
class BaselineConfig:
    """How `spectral baseline` trains the full-resolution network (the comparison the method is measured against)."""

    engine: str = "single"  # one of BASELINE_ENGINES: "single" (one actor, like a branch) or "ddp" (Ray Train DDP)
    workers: int = 2  # ddp: Ray Train workers; train.batch_size is the global batch, split evenly over them
    cpus_per_worker: float = 1.0  # ddp: CPUs per worker (each trains with train.threads torch threads)
    max_failures: int = 3  # ddp: worker-group restarts (FailureConfig) after a dead worker; each resumes from the newest checkpoint

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
    address: str | None = None  # None: start Ray locally; "auto" or "ray://host:10001" for a cluster
    num_cpus: int | None = None  # local Ray only: CPUs to offer (None = all)

    def __post_init__(self) -> None:
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"ray.num_cpus must be >= 1, got {self.num_cpus}")


@dataclass(kw_only=True, frozen=True)
class SpectralConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    extra_sources: list[ExtraSourceConfig] = field(default_factory=list)  # lower-resolution sources (src = 1, 2, ...)
    split: SplitConfig = field(default_factory=SplitConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)  # `spectral baseline`: single or Ray Train DDP
    ray: RayConfig = field(default_factory=RayConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)  # ensemble-weight search (ensemble.weights: tuned)
    sweep: SweepConfig = field(default_factory=SweepConfig)  # `spectral sweep`: hyperparameter search
    predict: PredictConfig = field(default_factory=PredictConfig)  # `spectral predict`: Ray Data batch inference
    serve: ServeConfig = field(default_factory=ServeConfig)  # `spectral serve`: Ray Serve endpoint

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def public_dict(self) -> dict:
        """``to_dict`` without the secrets (``SECRET_KEYS`` set to None): what may be written or shown."""
        return apply_overrides(self.to_dict(), {key: None for key in SECRET_KEYS})

    def replace(self, **overrides: Any) -> "SpectralConfig":
        """A copy with dotted-key overrides applied, e.g. ``replace(**{"train.epochs": 2})``."""
        return from_dict(apply_overrides(self.to_dict(), overrides))


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
        raise ConfigError(str(e)) from e


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


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> SpectralConfig:
    """Read a YAML file (or defaults when ``path`` is None) and apply dotted overrides."""
    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: expected a mapping at the top level")
    try:
        return from_dict(apply_overrides(data, overrides or {}))
    except ConfigError as e:
        raise ConfigError(f"{path or 'config'}: {e}") from e
