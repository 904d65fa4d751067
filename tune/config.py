"""Configuration of the Ray Tune parts: the ensemble-weight search (``tune:``) and sweeps (``sweep:``).

Dataclasses validated on construction (no Ray import here: ``orchestrator.config``
assembles them into ``SpectralConfig``). A sweep's search space is YAML, keyed by the
dotted config key it overrides:

    sweep:
      space:
        train.lr: {loguniform: [1.0e-4, 1.0e-2]}
        train.weight_decay: {choice: [0.0, 1.0e-4]}
        train.batch_size: {choice: [64, 128]}
        model.width: {randint: [64, 256]}      # inclusive bounds
        train.epochs: {choice: [2, 4]}

Only ``train.<field>`` and ``model.width`` are searchable; any other key is an error that
names it. ``randint`` bounds are inclusive (Tune's own upper bound is exclusive; we add one).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from branches.config import TrainConfig
from data_split.errors import ConfigError
from data_split.fields import Key, Section, option

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice")
SEARCHABLE_MODEL_KEYS = ("model.width",)
SWEEP_METRICS = {"val_acc": "max", "val_loss": "min", "loss": "min"}  # metric -> its natural mode
SCHEDULERS = ("asha", "fifo")


@dataclass(kw_only=True, frozen=True)
class TuneConfig(Section):
    """``tune:`` the Ray Tune search of ensemble weights on the validation logits (``ensemble.weights: tuned``)."""

    SECTION = "tune"

    num_samples: int = option(64, "`tuned` weights: Tune trials, each starting from one TPE proposal", ge=1)
    # A trial costs ~0.3-1.3 s of Tune overhead but scoring one weight vector costs ~1 ms, so each trial
    # scores this many in a local search from its proposal (tune._simplex.local_search) and reports the best.
    candidates_per_trial: int = option(
        64, "weight vectors each trial scores in a local search from its proposal; 1 = plain TPE", ge=1
    )
    seed: int = option(0, "seed of the TPE sampler and of the local searches")
    max_concurrent: int = option(
        2, "trials at once (TPE learns only from finished trials: more is closer to random)", ge=1
    )


@dataclass(frozen=True)
class Dimension:
    """One searched config key and its distribution, e.g. ``train.lr ~ loguniform(1e-4, 1e-2)``."""

    key: str  # dotted config key: train.<field> or model.width
    kind: str  # one of DISTRIBUTIONS
    args: tuple  # (low, high) for ranges, the values for choice

    def values_to_check(self) -> list:
        """Values that must each give a valid config: both bounds, or every choice."""
        return list(self.args)


def _searchable_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainConfig)
    types = {f"train.{f.name}": hints[f.name] for f in dataclasses.fields(TrainConfig)}
    return types | {"model.width": int}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_dimension(key: str, spec: Any, at: str = "sweep.space") -> Dimension:
    """Check one ``space`` entry (a ``ConfigError`` naming ``<at>.<key>``)."""
    where = f"{at}.{key}"
    types = _searchable_types()
    if key not in types:
        raise ConfigError(
            f"{where}: {key!r} is not searchable; searchable keys are train.<field> "
            f"({', '.join(k.split('.', 1)[1] for k in types if k.startswith('train.'))}) and model.width"
        )
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: expected one distribution such as {{loguniform: [1e-4, 1e-2]}}, got {spec!r}")
    ((kind, args),) = spec.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: unknown distribution {kind!r}; expected one of {', '.join(DISTRIBUTIONS)}")
    if not isinstance(args, (list, tuple)) or not args:
        raise ConfigError(f"{where}: {kind} expects a non-empty list, got {args!r}")
    if kind == "choice":
        return Dimension(key, kind, tuple(args))
    if len(args) != 2 or not all(_is_number(a) for a in args) or not args[0] < args[1]:
        raise ConfigError(f"{where}: {kind} expects [low, high] numbers with low < high, got {args!r}")
    if kind == "loguniform" and args[0] <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0, got {args!r}")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"{where}: randint expects integer bounds, got {args!r}")
    allowed = (float,) if kind in ("uniform", "loguniform") else (int, float)
    if types[key] not in allowed:
        name = getattr(types[key], "__name__", str(types[key]))
        raise ConfigError(
            f"{where}: {key} takes {name} values, which {kind} does not draw; use choice"
            + (" or randint" if types[key] is int else "")
        )
    return Dimension(key, kind, tuple(args))


def parse_space(space: dict[str, Any], at: str = "sweep.space") -> list[Dimension]:
    """All dimensions of a sweep space, in the order written."""
    return [parse_dimension(key, spec, at) for key, spec in space.items()]


def space_parses(sweep: SweepConfig, key: Key) -> None:
    parse_space(sweep.space, key("space"))


def branches_are_distinct_indices(sweep: SweepConfig, key: Key) -> None:
    if not sweep.branches or any(k < 0 for k in sweep.branches) or len(set(sweep.branches)) != len(sweep.branches):
        raise ConfigError(f"{key('branches')} must be distinct branch indices >= 0, got {sweep.branches}")


@dataclass(kw_only=True, frozen=True)
class SweepConfig(Section):
    """``sweep:`` a Ray Tune search over branch-training hyperparameters (``spectral sweep``)."""

    SECTION = "sweep"
    RULES = (space_parses, branches_are_distinct_indices)

    space: dict[str, dict[str, Any]] = option(
        factory=dict,
        help="searched keys (`train.<field>`, `model.width`), "
        "each with one distribution: `{loguniform: [low, "
        "high]}`, `uniform`, `randint` (inclusive) or "
        "`choice: [values]`",
    )
    num_samples: int = option(16, "trials (configurations) to train", ge=1)
    branches: list[int] = option(factory=lambda: [0], help="branches each trial trains; the metric is their mean")
    metric: str = option(
        "val_acc", "the metric, reported every epoch (`loss`: the training loss)", choices=SWEEP_METRICS
    )
    mode: str | None = option(None, "unset: the metric's natural mode", choices=("max", "min"))
    scheduler: str = option(
        "asha", "`asha` (stops weak trials early) or `fifo` (every trial runs all its epochs)", choices=SCHEDULERS
    )
    grace_period: int = option(1, "ASHA: epochs every trial runs before it may be stopped", ge=1)
    reduction_factor: float = option(2.0, "ASHA: keep the best 1/reduction_factor of the trials at each rung", gt=1)
    max_concurrent: int = option(2, "trials at once (each also needs its branches' resources)", ge=1)
    seed: int = option(0, "seed of the TPE sampler")

    @property
    def resolved_mode(self) -> str:
        return self.mode or SWEEP_METRICS[self.metric]

    @property
    def dimensions(self) -> list[Dimension]:
        return parse_space(self.space)
