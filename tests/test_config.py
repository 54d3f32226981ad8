"""Config loading, overrides and the message each invalid value gets."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedneg.config import ConfigError, load_config
from fedneg.runfolder import prepare_run


def test_default_config_loads():
    config = load_config("configs/default.yaml")
    assert config.name == "default"
    assert config.negatives.sources == ["bystander", "public"]


def test_overrides_parse_yaml_values():
    config = load_config("configs/default.yaml", ["federation.rounds=3", "negatives.sources=[public]", "train.lr=0.01"])
    assert config.federation.rounds == 3
    assert config.negatives.sources == ["public"]
    assert config.train.lr == 0.01


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("negatives.sources=[bystander, telepathy]", "invalid value for negatives.sources: 'telepathy'; allowed: bystander, none, public"),
        ("train.loss=hinge", "invalid value for train.loss: 'hinge'; allowed: triplet, contrastive"),
        ("train.lr=-1", "invalid value for train.lr: -1; allowed: a number > 0"),
        ("federation.rounds=0", "invalid value for federation.rounds: 0; allowed: an integer >= 1"),
        ("train.mining=medium", "invalid value for train.mining: 'medium'"),
        ("federation.clients_per_round=99", "invalid value for federation.clients_per_round: 99; allowed: at most split.owners (24)"),
        ("negatives.sources=[none, public]", "allowed: [none] alone"),
        ("model.norm=instance", "invalid value for model.norm: 'instance'"),
        ("federation.round=3", "unknown config key 'federation.round'"),
        ("rounds", "invalid override 'rounds': expected key=value"),
    ],
)
def test_invalid_value_message(override, expected):
    with pytest.raises(ConfigError) as raised:
        load_config("configs/default.yaml", [override])
    assert expected in str(raised.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file not found: configs/nope.yaml"):
        load_config("configs/nope.yaml")


def test_too_few_people_for_split(tmp_path, identities):
    # A data root of 5 people (links to real photos) cannot hold 24 owners.
    for name in sorted(name for name, paths in identities.items() if len(paths) >= 10)[:5]:
        (tmp_path / name).mkdir()
        for path in identities[name]:
            (tmp_path / name / path.rsplit("/", 1)[1]).symlink_to(path)
    config = load_config("configs/default.yaml", [f"data.root={tmp_path}"])
    with pytest.raises(ConfigError) as raised:
        prepare_run(config, tmp_path / "run", write=False)
    assert "invalid value for split.owners: 24" in str(raised.value)
    assert "only 5 people with at least 10 photos" in str(raised.value)


def test_missing_data_root(tmp_path):
    config = load_config("configs/default.yaml", [f"data.root={tmp_path / 'absent'}"])
    with pytest.raises(ConfigError, match="data root not found: data.root="):
        prepare_run(config, tmp_path / "run", write=False)


def test_cli_reports_bad_value_before_training(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fedneg.simulate", "--config", "configs/default.yaml", "--run-dir", str(tmp_path / "run"), "train.loss=hinge"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "invalid value for train.loss: 'hinge'" in result.stderr
    assert not (tmp_path / "run").exists()
