"""data_split.fields: constraints declared with each config field, checked in one place that names the dotted key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from branches.config import TrainConfig
from data_split.config import SourceConfig, SplitConfig, SyntheticConfig
from data_split.errors import ConfigError
from data_split.fields import Section, build, option
from data_split.transforms import TRANSFORMS
from orchestrator.config import ResourcesConfig, config_reference, load_config


@dataclass(kw_only=True, frozen=True)
class Demo(Section):
    SECTION = "demo"

    count: int = option(1, "a count", ge=1)
    rate: float = option(0.5, "a rate", gt=0, le=1)
    share: float = option(0.0, "a share", ge=0, lt=1)
    mode: str = option("a", "a mode", choices=("a", "b"))
    limit: int | None = option(None, "a limit", ge=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"count": 0}, "{key}.count must be >= 1, got 0"),  # ge
        ({"rate": 0}, "{key}.rate must be in (0, 1], got 0.0"),  # gt (an int where a float is declared: converted)
        ({"rate": 1.5}, "{key}.rate must be in (0, 1], got 1.5"),  # le
        ({"share": 1.0}, "{key}.share must be in [0, 1), got 1.0"),  # lt
        ({"limit": -1}, "{key}.limit must be >= 0, got -1"),  # bounds of an optional number
        ({"mode": "c"}, "{key}.mode must be one of a, b, got 'c'"),  # choices
        ({"count": "3"}, "config key {key}.count: expected int, got '3'"),  # the type, from the annotation
        ({"count": True}, "config key {key}.count: expected int, got True"),  # YAML's true is not a number
        ({"mode": None}, "config key {key}.mode: expected str, got None"),  # None only where the type allows it
    ],
)
def test_each_kind_of_constraint_fails_naming_the_dotted_key(kwargs, message):
    with pytest.raises(ConfigError) as direct:
        Demo(**kwargs)  # constructed directly: named by its SECTION
    assert str(direct.value) == message.format(key="demo")
    with pytest.raises(ConfigError) as built:
        build(Demo, kwargs, "runs[2].demo")  # built at a key (as the YAML loader does): named by that key
    assert str(built.value) == message.format(key="runs[2].demo")


def test_valid_values_pass_and_are_converted_as_declared():
    d = Demo(count=3, rate=1, share=0, limit=None)
    assert (d.count, d.rate, d.share, d.limit) == (3, 1.0, 0.0, None) and type(d.rate) is float
    t = TrainConfig(lr=1, augment=("crop",))
    assert type(t.lr) is float and t.augment == ["crop"]
    assert SourceConfig(synthetic={"train": 10}).synthetic == SyntheticConfig(train=10)  # a mapping becomes its section
    assert ResourcesConfig(gpus_per_branch=0).gpus_per_branch == 0.0
    assert dataclasses.replace(t, epochs=5).epochs == 5
    with pytest.raises(ConfigError, match=r"^train\.epochs must be >= 1, got 0$"):
        dataclasses.replace(t, epochs=0)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"train.epochs": 0}, r"train\.epochs must be >= 1, got 0"),
        ({"resources.cpus_per_branch": 0}, r"resources\.cpus_per_branch must be > 0, got 0\.0"),
        ({"ensemble.p": 1}, r"ensemble\.p must be in \(0, 1\), got 1\.0"),
        ({"split.dtype": "int4"}, r"split\.dtype must be one of uint8, float16, float32, got 'int4'"),
        ({"sweep.mode": "best"}, r"sweep\.mode must be one of max, min, got 'best'"),
        ({"source.synthetic.classes": 1}, r"source\.synthetic\.classes must be >= 2, got 1"),  # a nested section
        ({"train.augment": "crop"}, r"config key train\.augment: expected a list, got 'crop'"),
        (
            {"extra_sources": [{"name": "mnist"}, {"name": "mnist", "channels": 2}]},
            r"extra_sources\[1\]\.channels must be one of 1, 3, got 2",
        ),
        (
            {"extra_sources": [{"name": "mnist"}, {"synthetic": {"width": 0}}]},
            r"extra_sources\[1\]\.synthetic\.width must be >= 1, got 0",
        ),  # a section nested in a list item
        (
            {"extra_sources": [{"name": "imagefolder", "root": "/x", "skip_bad": True}]},
            r"extra_sources\[0\]\.skip_bad is not supported",
        ),  # a rule of the extra source's own
    ],
)
def test_the_loader_names_the_dotted_key_of_every_section(override, message):
    with pytest.raises(ConfigError, match=rf"^config: {message}"):
        load_config(None, override)


def test_cross_field_rules_name_the_key_they_check():
    with pytest.raises(
        ConfigError, match=r"^split\.transform 'haar' needs K = rows\*cols to be a power of two, got K=3$"
    ):
        SplitConfig(rows=3, cols=1, transform="haar")
    with pytest.raises(ConfigError, match=r"^source 'imagefolder' needs source\.root "):
        SourceConfig(name="imagefolder")
    with pytest.raises(
        ConfigError, match=r"^config: storage\.access_key_id and storage\.secret_access_key go together"
    ):
        load_config(None, {"storage.access_key_id": "AKIA"})


def test_the_docs_show_what_each_key_allows():
    allowed = {key: allowed for key, _, allowed, _ in config_reference()}
    assert allowed["train.epochs"] == "int >= 1"
    assert allowed["split.val_fraction"] == "float in [0, 1)"
    assert allowed["ensemble.p"] == "float in (0, 1)"
    assert allowed["split.transform"] == ", ".join(f"`{name}`" for name in TRANSFORMS)
    assert allowed["source.image_size"] == "int or list of int"
    assert allowed["train.augment"] == "list of str" and allowed["storage.uri"] == "str"
