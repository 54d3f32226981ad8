"""Strategies whose phones keep a classifier across rounds: the persistent design and FedAwS.

FedAwS is from Yu et al., "Federated Learning with Only Positive Labels" (ICML 2020): the
server keeps one class embedding per phone and spreads them apart after each round.

Message layout on top of `fedneg.protocol`: a train message to a phone that has trained
before carries `classifier` (ArrayRecord of the phone's state, see
`fedneg.margin.ClassifierObjective.export_state`). The reply carries the updated state
inside its `arrays` record under keys prefixed `classifier.`, because Flower's FedAvg
expects exactly one ArrayRecord per reply. The strategy removes those keys before the FE is
averaged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedneg.config import Config
from fedneg.fedaws import spreadout_penalty, spreadout_step
from fedneg.margin import OWNER_WEIGHT
from fedneg.server.strategy import NegativeFedAvg

logger = logging.getLogger(__name__)

CLASSIFIER_RECORD = "classifier"
CLASSIFIER_PREFIX = "classifier."


class PersistentClassifierFedAvg(NegativeFedAvg):
    """NegativeFedAvg where the same phones train every round and keep their classifier.

    The phones are drawn once, with round 1's seeded draw, and reused in every round. Each
    phone's classifier state (the owner's column: a learnt template of the owner's face)
    comes back with its FE and is sent to it again next round. Holding these states lets
    the server tell phones apart and match a face to a phone; this design gives up that
    much privacy.

    Attributes:
        classifiers: phone id -> state arrays, float32 (embedding_dim,) each.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.classifiers: dict[int, dict[str, np.ndarray]] = {}
        self.fixed_phones: list[int] | None = None

    def sample_phones(self, server_round: int) -> list[int]:
        if self.fixed_phones is None:
            self.fixed_phones = super().sample_phones(1)
        return list(self.fixed_phones)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        phone_of_node = {node: phone for phone, node in self.node_of_phone.items()}
        messages: list[Message] = []
        for message in super().configure_train(server_round, arrays, config, grid):
            phone = phone_of_node[message.metadata.dst_node_id]
            if phone not in self.classifiers:
                messages.append(message)
                continue
            # Parent messages share one RecordDict, so each phone gets its own shallow copy.
            content = RecordDict(dict(message.content.items()))
            content[CLASSIFIER_RECORD] = ArrayRecord({key: Array(value) for key, value in self.classifiers[phone].items()})
            messages.append(Message(content=content, message_type=message.metadata.message_type, dst_node_id=message.metadata.dst_node_id))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        phone_of_node = {node: phone for phone, node in self.node_of_phone.items()}
        replies = list(replies)
        for reply in replies:
            if reply.has_error():
                continue
            arrays = reply.content[self.arrayrecord_key]
            state = {key[len(CLASSIFIER_PREFIX) :]: arrays[key].numpy() for key in list(arrays.keys()) if key.startswith(CLASSIFIER_PREFIX)}
            for key in list(arrays.keys()):
                if key.startswith(CLASSIFIER_PREFIX):
                    del arrays[key]
            if state:
                self.classifiers[phone_of_node[reply.metadata.src_node_id]] = state

        result = super().aggregate_train(server_round, replies)
        self.update_classifiers(server_round)
        return result

    def update_classifiers(self, server_round: int) -> None:
        """Change the stored classifier states after a round; this design keeps them as sent."""


class FedAwS(PersistentClassifierFedAvg):
    """FedAwS: after FedAvg, one gradient step of the spreadout penalty on class embeddings.

    Only the owner columns of phones that have trained at least once take part, since the
    server has no class embedding for the others yet.
    """

    def __init__(self, *args, spreadout_margin: float, spreadout_lr: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.spreadout_margin = spreadout_margin
        self.spreadout_lr = spreadout_lr
        self.spreadout_history: dict[int, float] = {}

    def update_classifiers(self, server_round: int) -> None:
        phones = sorted(self.classifiers)
        if len(phones) < 2:
            return
        rows = np.stack([self.classifiers[phone][OWNER_WEIGHT] for phone in phones])
        updated = spreadout_step(rows, nu=self.spreadout_margin, learning_rate=self.spreadout_lr)
        for phone, row in zip(phones, updated, strict=True):
            self.classifiers[phone][OWNER_WEIGHT] = row.astype(np.float32)

        import torch

        penalty = float(spreadout_penalty(torch.from_numpy(updated), self.spreadout_margin))
        self.spreadout_history[server_round] = penalty
        if server_round in self.train_metrics:
            self.train_metrics[server_round]["fedaws_spreadout"] = penalty
        logger.info("round %d: FedAwS spreadout penalty %.4f over %d class embeddings", server_round, penalty, len(phones))


def strategy_class(config: Config) -> type[NegativeFedAvg]:
    """Return the strategy class for `federation.strategy` and `federation.classifier`."""
    if config.federation.strategy == "fedaws":
        return FedAwS
    if config.federation.classifier == "persistent":
        return PersistentClassifierFedAvg
    return NegativeFedAvg


def strategy_options(config: Config) -> dict:
    """Extra constructor keywords of `strategy_class(config)`."""
    if config.federation.strategy == "fedaws":
        return {"spreadout_margin": config.train.classifier.spreadout_margin, "spreadout_lr": config.train.classifier.spreadout_lr}
    return {}
