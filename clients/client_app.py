"""Flower ClientApp: `clients.client_app:app`. One SuperNode is one phone.

The phone id comes from the node config: `phone-id` on a deployment, else the simulation's
`partition-id`. A `data-root` key in the node config points the phone at its local photos.
Each training message carries the FE (`arrays`), the experiment config
(`config["fedneg-config"]`) and each negative source's payload; the reply carries the FE
and scalar metrics only.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.pipeline import train_phone
from fedneg.config import config_from_dict
from fedneg.negatives import build_sources
from fedneg.protocol import NUM_EXAMPLES, PHONE_ID, payload_from_records

app = ClientApp()


def phone_id_of(context: Context) -> int:
    node_config = context.node_config
    if "phone-id" in node_config:
        return int(node_config["phone-id"])
    if "partition-id" in node_config:
        return int(node_config["partition-id"])
    raise ValueError("node config has neither phone-id nor partition-id; start the SuperNode with --node-config 'phone-id=<n>'")


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Report which phone this node is, so the server can sample phones by seed."""
    return Message(RecordDict({"phone": MetricRecord({PHONE_ID: phone_id_of(context)})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    values = json.loads(str(msg.content["config"]["fedneg-config"]))
    if "data-root" in context.node_config:
        values["data"]["root"] = str(context.node_config["data-root"])
    config = config_from_dict(values)
    torch.set_num_threads(max(1, int(config.federation.client_cpus)))

    payloads = {source.name: payload_from_records(source.name, msg.content) for source in build_sources(config)}
    state = msg.content["arrays"].to_torch_state_dict()
    server_round = int(msg.content["config"]["server-round"])
    # The persistent-classifier strategies send the phone's classifier back each round.
    classifier = {key: array.numpy() for key, array in msg.content["classifier"].items()} if "classifier" in msg.content else {}
    outcome = train_phone(config, phone_id_of(context), state, payloads, server_round, classifier)

    metrics = dict(outcome.metrics)
    metrics[NUM_EXAMPLES] = outcome.metrics["positives"] + outcome.metrics["negatives"]
    arrays = ArrayRecord(outcome.state)
    # FedAvg expects one ArrayRecord per reply, so the classifier rides in it under a prefix.
    for key, value in outcome.classifier.items():
        arrays[f"classifier.{key}"] = Array(np.ascontiguousarray(value))
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)
