"""The whole job's configuration: YAML -> nested keyword-only dataclasses.

Each component owns its dataclass (``data_split.config``, ``branches.config``, ``tune.config``
and the run-level ones here); this module only assembles them and applies ``--set key.sub=value``
overrides. Every field declares its type and constraints (``data_split.fields.option``), which
construction checks: an unknown key, a wrongly typed value or one out of bounds is a ``ConfigError``
naming the dotted key.

One set of defaults: the dataclass defaults are the embedded default run
(``configs/fashion_mnist.yaml`` spells them out; ``tests/test_config_docs.py`` checks they agree),
so ``spectral run`` without ``--config`` runs it. Every field carries its help text;
``config_reference`` lists them with their defaults and allowed values for ``spectral config --show``
and docs/cli.md's table (``spectral config --markdown``).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from branches.config import ModelConfig, TrainConfig
from data_split.config import ExtraSourceConfig, SourceConfig, SplitConfig, StorageConfig
from data_split.errors import ConfigError
from data_split.fields import HELP, Section, allowed, build, option
from data_split.storage import RunStorage
from inference.config import PredictConfig, ServeConfig
from tune.config import SweepConfig, TuneConfig
from tune.scoring import GEOMETRIC_P, WEIGHT_RULES

BASELINE_ENGINES = ("single", "ddp")
SECRET_KEYS = ("storage.access_key_id", "storage.secret_access_key")  # never written anywhere (public_dict)


PACK_AUTO = "auto"  # resources.branches_per_process: as many as every branch starting in the first wave takes


def pack_size_is_valid(cfg: ResourcesConfig, key) -> None:
    p = cfg.branches_per_process
    if p != PACK_AUTO and (isinstance(p, str) or p < 1):
        raise ConfigError(f"{key('branches_per_process')} must be an int >= 1 or {PACK_AUTO!r}, got {p!r}")


def one_of_workers_or_packs(cfg: ResourcesConfig, key) -> None:
    """A branch spans M processes or shares one process with others, never both (``auto`` packs no group)."""
    if cfg.workers_per_branch > 1 and cfg.branches_per_process != PACK_AUTO and cfg.branches_per_process > 1:
        raise ConfigError(
            f"{key('workers_per_branch')} ({cfg.workers_per_branch}) > 1 spreads a branch over several processes, "
            f"{key('branches_per_process')} ({cfg.branches_per_process}) > 1 packs several branches into one: "
            "set one of them to 1"
        )


@dataclass(kw_only=True, frozen=True)
class ResourcesConfig(Section):
    SECTION = "resources"
    RULES = (pack_size_is_valid, one_of_workers_or_packs)

    gpus_per_branch: float | None = option(
        None,
        "GPUs per branch process (per worker with `workers_per_branch` > 1); unset: 1 when the cluster has GPUs, else "
        "0 (CPU); a fraction packs branches on one GPU",
        ge=0,
    )
    cpus_per_branch: float = option(1.0, "CPUs per branch process (per worker with `workers_per_branch` > 1)", gt=0)
    max_restarts: int = option(
        3, "times Ray restarts a branch whose process died; it resumes from its newest checkpoint", ge=0
    )
    branches_per_process: int | str = option(
        1,
        "P: consecutive branches with equal training rows train as one batched network in one process "
        "(a pack; docs/how-it-works.md); `auto`: ceil(branches / branch processes the cluster runs at once), so "
        "every branch starts in the first wave in as few processes as that takes (1 when all fit already)",
    )
    workers_per_branch: int = option(
        1,
        "M: each branch trains as a Ray Train group of M DDP workers (gloo on CPU, NCCL on GPU), each asking "
        "`cpus_per_branch` CPUs and `gpus_per_branch` GPUs; the global batch stays `train.batch_size` "
        "(docs/how-it-works.md)",
        ge=1,
    )


@dataclass(kw_only=True, frozen=True)
class EnsembleConfig(Section):
    SECTION = "ensemble"

    weights: str = option(
        "tuned",
        "ensemble weights: `uniform`, `geometric` (rank by training loss, w = p "
        "(1-p)^rank) or `tuned` (searched by Ray Tune on the validation split)",
        choices=WEIGHT_RULES,
    )
    p: float = option(GEOMETRIC_P, "`geometric` rule: p", gt=0, lt=1)


@dataclass(kw_only=True, frozen=True)
class TrackingConfig(Section):
    """Experiment tracking beyond the TensorBoard files every run writes (``orchestrator.tracking``)."""

    SECTION = "tracking"

    mlflow_uri: str | None = option(
        None,
        "MLflow tracking URI (`http://host:5000`, `sqlite:///mlflow.db`, `databricks`, ...): the job logs one "
        "parent run per run URI and a child run per branch (`orchestrator.tracking_mlflow`; needs "
        "`pip install mlflow-skinny`); unset: no MLflow",
    )
    mlflow_experiment: str = option("spectral", "`mlflow_uri` set: the MLflow experiment (created when missing)")


@dataclass(kw_only=True, frozen=True)
class BaselineConfig(Section):
    """How `spectral baseline` trains the full-resolution network (the comparison the method is measured against)."""

    SECTION = "baseline"

    engine: str = option(
        "single", "`single` (one process, trained like a branch) or `ddp` (Ray Train DDP)", choices=BASELINE_ENGINES
    )
    workers: int = option(
        2, "`ddp`: Ray Train workers; `train.batch_size` is the global batch, split evenly over them", ge=1
    )
    cpus_per_worker: float = option(
        1.0, "`ddp`: CPUs per worker (each trains with `train.threads` torch threads)", gt=0
    )
    max_failures: int = option(
        3, "`ddp`: worker-group restarts after a dead worker; each resumes from the newest checkpoint", ge=0
    )


@dataclass(kw_only=True, frozen=True)
class RayConfig(Section):
    SECTION = "ray"

    address: str | None = option(None, "unset: start Ray locally; `auto` or `ray://host:10001` to join a cluster")
    num_cpus: int | None = option(None, "local Ray only: CPUs to offer (unset: all)", ge=1)


@dataclass(kw_only=True, frozen=True)
class SpectralConfig(Section):
    source: SourceConfig = option(factory=SourceConfig, help="where the images come from")
    extra_sources: list[ExtraSourceConfig] = option(
        factory=list,
        help="lower-resolution sources (`src` = 1, 2, "
        "...), each with the keys of `source` plus "
        "`resources`; only their train split is used, "
        "for the branches they determine",
    )
    split: SplitConfig = option(factory=SplitConfig, help="how every image is split into K spectral sub-images")
    storage: StorageConfig = option(factory=StorageConfig, help="where the run lives")
    model: ModelConfig = option(factory=ModelConfig, help="the network of each branch")
    train: TrainConfig = option(factory=TrainConfig, help="how each branch trains")
    resources: ResourcesConfig = option(factory=ResourcesConfig, help="what each branch asks of Ray")
    ensemble: EnsembleConfig = option(factory=EnsembleConfig, help="how the branches' logits are weighted")
    tracking: TrackingConfig = option(factory=TrackingConfig, help="experiment tracking: MLflow, when set")
    baseline: BaselineConfig = option(factory=BaselineConfig, help="`spectral baseline`: one process, or Ray Train DDP")
    ray: RayConfig = option(factory=RayConfig, help="which Ray to use")
    tune: TuneConfig = option(
        factory=TuneConfig, help="the Ray Tune search of the ensemble weights (`ensemble.weights: tuned`)"
    )
    sweep: SweepConfig = option(
        factory=SweepConfig, help="`spectral sweep`: a Ray Tune search over branch-training hyperparameters"
    )
    predict: PredictConfig = option(factory=PredictConfig, help="`spectral predict`: Ray Data batch inference")
    serve: ServeConfig = option(factory=ServeConfig, help="`spectral serve`: the Ray Serve endpoint")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def public_dict(self) -> dict:
        """``to_dict`` without the secrets (``SECRET_KEYS`` set to None): what may be written or shown."""
        return apply_overrides(self.to_dict(), {key: None for key in SECRET_KEYS})

    def replace(self, **overrides: Any) -> SpectralConfig:
        """A copy with dotted-key overrides applied, e.g. ``replace(**{"train.epochs": 2})``."""
        return from_dict(apply_overrides(self.to_dict(), overrides))


# -- documentation ------------------------------------------------------------------------------------------
def _show_default(value: Any) -> str:
    return "unset" if value is None else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")


def config_reference(cls: type = None, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, default, allowed values, meaning) of every leaf key, in declaration order; sections recurse."""
    rows, cls = [], cls or SpectralConfig
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            rows += config_reference(type(default), f"{prefix}{f.name}.")
        else:
            rows.append((prefix + f.name, _show_default(default), allowed(f, hints[f.name]), f.metadata.get(HELP, "")))
    return rows


def config_markdown() -> str:
    """docs/cli.md's configuration table (between its ``config-table`` markers)."""
    lines = ["| key | default | allowed | meaning |", "| --- | --- | --- | --- |"]
    lines += [
        f"| `{key}` | {default if default == 'unset' else f'`{default}`'} | {allowed} | {meaning} |"
        for key, default, allowed, meaning in config_reference()
    ]
    return "\n".join(lines) + "\n"


# -- dict -> dataclass ------------------------------------------------------------------------------
def from_dict(data: dict) -> SpectralConfig:
    """The config of a nested mapping (YAML); an unknown key or a bad value is a ``ConfigError`` naming its key."""
    return build(SpectralConfig, data or {})


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
