"""FedAvg that ships negative-source payloads with the FE and samples phones by seed."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedneg.negatives.base import NegativeSource
from fedneg.protocol import PHONE_ID, payload_to_records

logger = logging.getLogger(__name__)

def aggregate_phone_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Average each scalar over the phones that reported it; sum the example counts.

    Phones weigh equally, so a phone with many negatives does not dominate mining quality.
    Keys some phones lack (bystander metrics on a phone without a gallery) average over
    the phones that have them.
    """
    values: dict[str, list[float]] = {}
    for record in records:
        metrics = next(iter(record.metric_records.values()))
        for key, value in metrics.items():
            values.setdefault(key, []).append(float(value))  # type: ignore[arg-type]

    aggregated = {key: float(np.mean(items)) for key, items in values.items()}
    aggregated[weighted_by_key] = float(np.sum(values.get(weighted_by_key, [0.0])))
    aggregated["clients"] = float(len(records))
    aggregated.pop(PHONE_ID, None)
    return MetricRecord(aggregated)


class NegativeFedAvg(FedAvg):
    """FedAvg whose training messages also carry each negative source's round payload.

    Phones are sampled by phone id with a seeded generator, so a seed fixes which phones
    train in which round (FedAvg's own sampling draws from Flower's random node ids).
    Call `discover_phones` once before `start`.
    """

    def __init__(self, sources: list[NegativeSource], clients_per_round: int, seed: int, **kwargs) -> None:
        kwargs.setdefault("fraction_evaluate", 0.0)
        kwargs.setdefault("train_metrics_aggr_fn", aggregate_phone_metrics)
        super().__init__(min_train_nodes=clients_per_round, **kwargs)
        self.sources = sources
        self.clients_per_round = clients_per_round
        self.seed = seed
        self.node_of_phone: dict[int, int] = {}
        self.round_info: dict[int, dict[str, float | int | str | bool]] = {}
        self.round_phones: dict[int, list[int]] = {}
        self.train_metrics: dict[int, dict[str, float]] = {}

    def discover_phones(self, grid: Grid, expected: int, timeout: float) -> None:
        """Ask every node which phone it is (a query message; the reply is one integer)."""
        node_ids = list(grid.get_node_ids())
        while len(node_ids) < expected:
            node_ids = list(grid.get_node_ids())
        messages = [Message(content=RecordDict(), message_type=MessageType.QUERY, dst_node_id=node) for node in node_ids]
        for reply in grid.send_and_receive(messages, timeout=timeout):
            if reply.has_error():
                logger.error("node %d failed to report its phone id: %s", reply.metadata.src_node_id, reply.error.reason)
                continue
            phone_id = int(reply.content.metric_records["phone"][PHONE_ID])
            self.node_of_phone[phone_id] = reply.metadata.src_node_id
        logger.info("%d of %d nodes reported a phone id", len(self.node_of_phone), len(node_ids))

    def sample_phones(self, server_round: int) -> list[int]:
        """Draw `clients_per_round` phone ids for `server_round` from the seeded generator."""
        phones = sorted(self.node_of_phone)
        rng = np.random.default_rng([self.seed, server_round])
        count = min(self.clients_per_round, len(phones))
        return sorted(int(phone) for phone in rng.choice(phones, size=count, replace=False))

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        chosen = self.sample_phones(server_round)
        self.round_phones[server_round] = chosen

        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        info: dict[str, float | int | str | bool] = {}
        payload_rng = np.random.default_rng([self.seed, server_round, 1])
        for source in self.sources:
            payload = source.round_payload(server_round, payload_rng)
            if payload is None:
                continue
            for key, value in payload_to_records(source.name, payload).items():
                record[key] = value
            info.update({f"source.{source.name}.{key}": value for key, value in payload.info.items()})
        self.round_info[server_round] = info

        logger.debug("round %d: phones %s", server_round, chosen)
        return self._construct_messages(record, [self.node_of_phone[phone] for phone in chosen], MessageType.TRAIN)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        # Replies arrive in completion order; summing them in phone order keeps the floating
        # point result, and so the whole run, fixed by the seed.
        phone_of_node = {node: phone for phone, node in self.node_of_phone.items()}
        replies = sorted(replies, key=lambda reply: phone_of_node.get(reply.metadata.src_node_id, -1))
        failed = [reply for reply in replies if reply.has_error()]
        for reply in failed:
            logger.error("round %d: node %d failed: %s", server_round, reply.metadata.src_node_id, reply.error.reason)
        arrays, metrics = super().aggregate_train(server_round, replies)
        if metrics is not None:
            record = {key: float(value) for key, value in metrics.items()}  # type: ignore[arg-type]
            record["failed_clients"] = float(len(failed))
            self.train_metrics[server_round] = record
        else:
            self.train_metrics[server_round] = {"clients": 0.0, "failed_clients": float(len(failed))}
        return arrays, metrics
