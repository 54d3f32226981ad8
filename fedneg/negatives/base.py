"""The interface every negative source implements.

A source has a server half and a phone half. Each round the server requests a
`SourcePayload` (NumPy arrays plus scalar info) from every configured source and ships it in
the round's message beside the FE. On the phone, the same source turns that payload, the
phone's own photos and the current FE into a `NegativeSet`. A source that needs nothing from the server
(`bystander`) returns no payload; one that needs nothing from the phone (`public`) ignores it.

To add a source, subclass `NegativeSource` and register it under the entry point group
`fedneg.negative_sources` (see `fedneg.negatives.registry`); client and server code need
no change.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from fedneg.config import Config
from fedneg.data import PhoneImages

# Scalar values a payload's info may hold; they travel in a Flower ConfigRecord.
InfoValue = int | float | str | bool


@dataclass
class SourcePayload:
    """Arrays and scalar info the server ships for one source in one round.

    `arrays` travel in an ArrayRecord (images as uint8 (N, 3, S, S), groups as int64 (N,));
    `info` travels in a ConfigRecord and is also written to the run's per-round record
    (for example which face-bank version the round used).
    """

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, InfoValue] = field(default_factory=dict)


@dataclass
class NegativeSet:
    """Negatives that one source contributes to one phone's local training in one round.

    Attributes:
        images: uint8 (N, 3, S, S) negative faces.
        groups: int64 (N,) identity group within this source. Equal ids mean the source
            believes the faces show the same person (a bystander cluster). The trainer offsets ids so groups of different sources never merge.
        positives: uint8 (P, 3, S, S) extra owner faces the source found (the mined owner
            cluster), trained as positives beside the enrollment photos.
        metrics: scalar metrics about this phone's negatives (mining quality); averaged
            over phones by the server.
    """

    images: torch.Tensor
    groups: torch.Tensor
    positives: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def empty(image_size: int) -> "NegativeSet":
        return NegativeSet(
            images=torch.empty((0, 3, image_size, image_size), dtype=torch.uint8),
            groups=torch.empty((0,), dtype=torch.int64),
        )


@dataclass
class ServerResources:
    """Server-side inputs for preparing sources: the data root, the split, the config."""

    config: Config
    data_root: Path
    identities: dict[str, list[str]]
    public_people: list[str]
    run_dir: Path | None = None


class NegativeSource(ABC):
    """A supplier of negatives for phone-side training.

    Subclasses set `name` and may override `prepare_server` and `round_payload` (server half)
    and must implement `phone_negatives` (phone half). The phone half runs inside the
    ClientApp with nothing but the payload, the phone's photos and the FE, so it must not
    read server-held data.
    """

    name: ClassVar[str]

    def __init__(self, config: Config) -> None:
        self.config = config

    def prepare_server(self, resources: ServerResources) -> None:
        """Load what the server needs for `round_payload`; called once before round 1."""

    def round_payload(self, server_round: int, rng: np.random.Generator) -> SourcePayload | None:
        """Return the arrays to ship in round `server_round`, or None to ship nothing."""
        return None

    @abstractmethod
    def phone_negatives(
        self,
        payload: SourcePayload | None,
        phone: PhoneImages,
        model: nn.Module,
        rng: np.random.Generator,
    ) -> NegativeSet:
        """Build this phone's negatives for the round from the payload, its photos and the FE."""
