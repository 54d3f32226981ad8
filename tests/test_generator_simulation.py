"""A federated simulation whose rounds draw synthetic negatives from a real face bank."""

from __future__ import annotations

import json

import pytest

from fedneg.config import config_from_dict
from generator.backends import load_backend
from generator.bank import FaceBank
from generator.quality import build_embedder
from generator.refresh import RefreshSettings, refresh_bank
from generator.testing import save_tiny_ddpm_pipeline


def small_experiment(bank_dir, runs_dir, sources):
    return config_from_dict(
        {
            "name": "synthetic-round",
            "split": {"owners": 2, "bystanders": 6, "public": 4},
            "phone": {"enrollment": 2, "owner_gallery": 2, "friends": 1, "friend_photos": 2, "strangers": 1},
            "negatives": {"sources": sources, "public": {"per_round": 4}, "plugins": {"synthetic": {"bank": str(bank_dir), "per_round": 8}}},
            "train": {"epochs": 1, "batch_size": 8},
            "federation": {"rounds": 2, "clients_per_round": 2, "num_cpus": 1},
            "eval": {"every": 2, "pairs": 20, "folds": 2, "lfw_pairs": False},
            "output": {"runs_dir": str(runs_dir)},
        }
    )


def test_synthetic_alone_is_a_valid_config(tmp_path):
    config = small_experiment(tmp_path / "bank", tmp_path / "runs", ["synthetic"])
    assert config.negatives.sources == ["synthetic"]


@pytest.mark.slow
def test_simulation_records_bank_version(tmp_path):
    from fedneg.simulate import run_simulation_from_config

    try:
        generator = load_backend("dcgan", None)
    except Exception:  # noqa: BLE001 - without the dcgan extra, a tiny DDPM pipeline makes the bank
        generator = load_backend("pretrained", str(save_tiny_ddpm_pipeline(tmp_path / "tiny")), steps=2)
    bank = FaceBank(tmp_path / "bank", create=True)
    settings = RefreshSettings(count=24, duplicate_cosine=1.01)
    refresh_bank(bank, generator, settings, build_embedder(), detector=None)
    newest = refresh_bank(bank, generator, settings, build_embedder(), detector=None).version.version

    config = small_experiment(tmp_path / "bank", tmp_path / "runs", ["bystander", "public", "synthetic"])
    run_dir = run_simulation_from_config(config)

    records = [record for record in json.loads((run_dir / "metrics.json").read_text()) if record["round"] >= 1]
    assert [record["round"] for record in records] == [1, 2]
    for record in records:
        assert record["source.synthetic.bank_version"] == newest
        assert record["source.synthetic.faces"] == 8
        assert record["negatives_synthetic"] == 8.0
        assert record["failed_clients"] == 0.0
