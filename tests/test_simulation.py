"""A small real simulation on LFW photos (Flower on Ray), the message contract, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from safetensors.torch import load_file

from clients.client_app import app as client_app
from fedneg.config import load_config
from fedneg.model import build_model
from fedneg.protocol import payload_to_records
from fedneg.runfolder import prepare_run
from fedneg.negatives import ServerResources
from fedneg.negatives.builtin import PublicNegatives
from fedneg.simulate import run_simulation_from_config

SMALL = [
    "split.owners=4",
    "split.evaluation=400",
    "federation.clients_per_round=2",
    "federation.rounds=2",
    "data.image_size=32",
    "eval.pairs=200",
    "eval.every=1",
    "train.epochs=1",
    "negatives.public.per_round=24",
]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    config = load_config("configs/default.yaml", SMALL)
    return run_simulation_from_config(config, tmp_path_factory.mktemp("sim") / "run")


@pytest.mark.slow
def test_run_folder_contents(small_run):
    for name in ("config.yaml", "split.json", "metrics.json", "metrics.csv", "roc.png", "fe.safetensors", "run.log", "summary.json"):
        assert (small_run / name).is_file(), name
    csv_lines = (small_run / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 3  # header and rounds 0, 1, 2


@pytest.mark.slow
def test_round_records(small_run):
    records = json.loads((small_run / "metrics.json").read_text())
    assert [record["round"] for record in records] == [0, 1, 2]
    for record in records:
        assert 0.0 <= record["pairs.roc_auc"] <= 1.0
        assert record["pairs.genuine"] == 200
        assert record["pairs.impostor"] == 200
        assert "lfw.roc_auc" in record
        assert 0 < record["lfw.genuine"] + record["lfw.impostor"] < 6000
    for record in records[1:]:
        assert record["clients"] == 2
        assert record["failed_clients"] == 0
        assert record["source.public.faces"] == 24
        assert 0.0 <= record["mining_purity"] <= 1.0
        assert 0.0 <= record["owner_precision"] <= 1.0
        assert record["train_loss"] > 0.0


@pytest.mark.slow
def test_checkpoint_is_final_fe(small_run):
    config = load_config(str(small_run / "config.yaml"))
    model = build_model(config.model)
    model.load_state_dict(load_file(str(small_run / "fe.safetensors")))
    initial = build_model(config.model, seed=config.seed)
    changed = [not torch.equal(a, b) for a, b in zip(model.state_dict().values(), initial.state_dict().values())]
    assert any(changed)


def test_client_returns_fe_and_scalars_only(tmp_path, monkeypatch):
    # Outside a running simulation Flower has no task identity; replies need one (Flower 1.42).
    from flwr.supercore.task_identity import TaskIdentity

    for attribute in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, attribute, 1)
    config = load_config("configs/default.yaml", SMALL)
    prepared = prepare_run(config, tmp_path / "run", write=False)
    public = PublicNegatives(config)
    public.prepare_server(ServerResources(config, prepared.data_root, prepared.identities, prepared.split.public))

    model = build_model(config.model, seed=0)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": ConfigRecord({"fedneg-config": config.to_json(), "server-round": 1})})
    for key, record in payload_to_records("public", public.round_payload(1, np.random.default_rng(0))).items():
        content[key] = record
    message = Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 2, "num-partitions": 4}, state=RecordDict(), run_config={})

    reply = client_app(message, context)

    assert set(reply.content.keys()) == {"arrays", "metrics"}
    assert set(reply.content["arrays"].keys()) == set(model.state_dict().keys())
    metrics = reply.content["metrics"]
    assert all(isinstance(value, float) for value in metrics.values())
    assert metrics["negatives_public"] == 24.0
    assert metrics["num-examples"] == metrics["positives"] + metrics["negatives"]


@pytest.mark.slow
def test_interrupt_keeps_finished_rounds(tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "fedneg.simulate", "--config", "configs/default.yaml", "--run-dir", str(run_dir), *SMALL, "federation.rounds=8", "eval.lfw_pairs=false"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 300
    finished: list[int] = []
    while time.time() < deadline and max(finished, default=-1) < 1:
        assert process.poll() is None, f"the simulation exited early:\n{process.communicate()[0][-2000:]}"
        time.sleep(0.5)
        if (run_dir / "metrics.json").is_file():
            finished = [record["round"] for record in json.loads((run_dir / "metrics.json").read_text())]

    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's process group
    output, _ = process.communicate(timeout=120)

    assert process.returncode == 130, output[-2000:]
    assert "interrupted" in output
    kept = [record["round"] for record in json.loads((run_dir / "metrics.json").read_text())]
    assert kept[: len(finished)] == finished
    assert len(kept) < 9
    for name in ("config.yaml", "split.json", "fe.safetensors", "metrics.csv"):
        assert (run_dir / name).is_file(), name
