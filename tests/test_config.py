"""The embedded default config (configs/fashion_mnist.yaml): it loads, and every key it sets is taken."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.config import ConfigError, load_config

DEFAULT = Path(__file__).resolve().parents[1] / "configs" / "fashion_mnist.yaml"


def test_the_embedded_default_config_loads_with_every_value_it_sets():
    cfg = load_config(DEFAULT)
    assert (cfg.source.name, cfg.split.k, cfg.split.transform, cfg.model.name) == ("fashion-mnist", 4, "dct", "fc8")
    loaded = cfg.to_dict()
    for section, values in yaml.safe_load(DEFAULT.read_text()).items():
        for key, value in values.items():
            assert loaded[section][key] == value, (
                f"{section}.{key}: file says {value!r}, loaded {loaded[section][key]!r}"
            )
    # overrides apply on top of the file
    assert load_config(DEFAULT, {"train.epochs": 1, "split.rows": 1}).train.epochs == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"name": "mnist", "limit": 0}, r"config: extra_sources\[1\]\.limit must be >= 1"),
        ({"name": "imagefolder"}, r"needs extra_sources\[1\]\.root"),
        ({"name": "mnist", "resources": {"site_b": 0}}, r"config: extra_sources\[1\]\.resources must be positive"),
    ],
)
def test_an_extra_source_error_names_that_source_not_the_main_one(extra, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, {"extra_sources": [{"name": "mnist"}, extra]})
    with pytest.raises(ConfigError, match=r"config: source\.limit must be >= 1"):  # the main source keeps its name
        load_config(None, {"source.limit": 0})


def test_a_config_on_an_object_store_is_read_with_the_overrides_endpoint(s3_endpoint, tmp_path):
    import uuid

    import boto3

    key = f"configs/{uuid.uuid4().hex[:8]}.yaml"
    boto3.client("s3", endpoint_url=s3_endpoint).put_object(
        Bucket="test-bucket", Key=key, Body=yaml.safe_dump({"train": {"epochs": 7}}).encode()
    )
    cfg = load_config(f"s3://test-bucket/{key}", {"storage.endpoint_url": s3_endpoint, "split.rows": 4})
    assert (cfg.train.epochs, cfg.split.rows, cfg.storage.endpoint_url) == (7, 4, s3_endpoint)
    with pytest.raises(ConfigError, match=r"config file s3://test-bucket/configs/nope.yaml does not exist"):
        load_config("s3://test-bucket/configs/nope.yaml", {"storage.endpoint_url": s3_endpoint})
