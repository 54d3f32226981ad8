"""Round designs: fresh, persistent classifier, pre-trained start, and FedAwS, each run for real."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from _compare_smoke import smoke_grid
from clients.pipeline import load_phone, run_round
from fedneg.centralized import load_fe_checkpoint
from fedneg.config import ConfigError, load_config
from fedneg.fedaws import spreadout_penalty, spreadout_step
from fedneg.margin import OWNER_WEIGHT
from fedneg.model import build_model
from fedneg.runfolder import read_metrics


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    return smoke_grid(tmp_path_factory.getbasetemp() / "compare-smoke")


def run_records(grid, cell_id: str) -> list[dict]:
    config, _ = grid
    return read_metrics(config.results_dir / "runs" / cell_id)


def tiny_config(*overrides: str):
    base = ["split.owners=8", "split.bystanders=40", "split.public=40", "split.evaluation=120", "data.image_size=32", "train.epochs=1", "train.loss=arcface", "negatives.sources=[bystander]"]
    return load_config("configs/default.yaml", base + list(overrides))


@pytest.mark.slow
def test_fresh_design_trains_every_round(grid):
    records = run_records(grid, "bystander__arcface__fresh__s0")
    assert [record["round"] for record in records] == [0, 1, 2]
    for record in records[1:]:
        assert record["clients"] == 2.0
        assert record["failed_clients"] == 0.0
        assert "mining_purity" in record


@pytest.mark.slow
def test_persistent_design_keeps_phones(grid):
    records = run_records(grid, "bystander__arcface__persistent__s0")
    assert records[1]["phones"] == records[2]["phones"]
    assert records[2]["failed_clients"] == 0.0


@pytest.mark.slow
def test_pretrained_design_starts_from_checkpoint(grid):
    config, _ = grid
    run_config = yaml.safe_load((config.results_dir / "runs" / "bystander__arcface__pretrained__s0" / "config.yaml").read_text())
    checkpoint = run_config["model"]["init_checkpoint"]
    assert checkpoint.endswith("pretrain-s0.safetensors")

    pretrained = run_records(grid, "bystander__arcface__pretrained__s0")[0]
    random_init = run_records(grid, "bystander__arcface__fresh__s0")[0]
    assert pretrained["pairs.roc_auc"] != random_init["pairs.roc_auc"]

    model = build_model(load_config(None).model)
    load_fe_checkpoint(model, checkpoint)


@pytest.mark.slow
def test_fedaws_applies_spreadout(grid):
    records = run_records(grid, "none__fedaws__persistent__s0")
    assert all("fedaws_spreadout" in record for record in records[1:])
    assert all(record["negatives"] == 0.0 for record in records[1:])


def test_persistent_classifier_round_trip():
    config = tiny_config("federation.classifier=persistent")
    phone = load_phone(config, 0)
    model = build_model(config.model, seed=0)
    state: dict[str, np.ndarray] = {}
    run_round(config, phone, model, {}, server_round=1, classifier_state=state)
    first = state[OWNER_WEIGHT].copy()
    assert first.shape == (config.model.embedding_dim,)

    # The next round starts from the stored owner column, so the new one stays close to it.
    run_round(config, phone, model, {}, server_round=2, classifier_state=state)
    fresh = np.random.default_rng(0).normal(size=first.shape)
    assert np.linalg.norm(state[OWNER_WEIGHT] - first) < np.linalg.norm(fresh - first)


def test_fresh_design_returns_no_classifier():
    config = tiny_config()
    state: dict[str, np.ndarray] = {}
    run_round(config, load_phone(config, 1), build_model(config.model, seed=0), {}, server_round=1, classifier_state=state)
    assert state == {}


def test_spreadout_step_separates_close_embeddings():
    rows = np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    before = float(spreadout_penalty(torch.from_numpy(rows), 1.5))
    after = float(spreadout_penalty(torch.from_numpy(spreadout_step(rows, nu=1.5, learning_rate=0.1)), 1.5))
    assert after < before


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.loss=triplet", "federation.classifier=persistent"], "has no classifier"),
        (["train.loss=fedaws", "federation.classifier=persistent"], "federation.strategy"),
        (["federation.strategy=fedaws", "train.loss=arcface"], "train.loss"),
        (["train.loss=fedaws", "federation.strategy=fedaws"], "federation.classifier"),
        (["model.init_checkpoint=/nonexistent/fe.safetensors"], "model.init_checkpoint"),
    ],
)
def test_design_config_rejected(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(*overrides)
