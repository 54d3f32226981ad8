"""`synthetic` negative source: faces from the newest face bank version, shipped each round.

Configured under `negatives.plugins.synthetic` of a fedneg experiment:

    negatives:
      sources: [bystander, synthetic]
      plugins:
        synthetic: {bank: /path/to/bank, per_round: 64}

Each round the server samples `per_round` faces from the newest complete, checksum-verified
bank version and records that version's id in the round's payload info. A generated face
shows no real person, so every face is a negative group of its own. When a newer version
turns out to be corrupt, or the bank is emptied, the server keeps using the last good
version it has in memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn

from fedneg.config import Config, ConfigError
from fedneg.data import PhoneImages
from fedneg.negatives.base import NegativeSet, NegativeSource, ServerResources, SourcePayload

from generator.bank import BankCorruptError, BankError, BankVersion, FaceBank, version_number

logger = logging.getLogger(__name__)

PREFIX = "negatives.plugins.synthetic"
EXAMPLE = "negatives.plugins.synthetic: {bank: /path/to/bank, per_round: 64}"


@dataclass
class SyntheticSettings:
    """Settings of the `synthetic` source.

    Attributes:
        bank: face bank folder, written by `python -m generator.serve`.
        per_round: faces shipped per round (fewer when the bank version contains fewer).
        verify: check shard SHA-256 checksums when a version is first read.
    """

    bank: str
    per_round: int = 64
    verify: bool = True


def parse_settings(values: Any) -> SyntheticSettings:
    """Validate `negatives.plugins.synthetic`.

    Raises:
        ConfigError: a key is missing, unknown, or has an invalid value; the message names
            the key, the value and the fix.
    """
    if values is None:
        raise ConfigError(f"missing {PREFIX}: the synthetic source needs a face bank; set {EXAMPLE}")
    if not isinstance(values, dict):
        raise ConfigError(f"invalid value for {PREFIX}: {values!r}; expected a mapping such as {{bank: /path/to/bank, per_round: 64}}")

    allowed = ("bank", "per_round", "verify")
    for key in values:
        if key not in allowed:
            raise ConfigError(f"unknown config key '{PREFIX}.{key}'; allowed keys here: {', '.join(allowed)}")

    bank = values.get("bank")
    if not isinstance(bank, str) or not bank.strip():
        raise ConfigError(f"invalid value for {PREFIX}.bank: {bank!r}; set it to the face bank folder written by python -m generator.serve")
    per_round = values.get("per_round", 64)
    if not isinstance(per_round, int) or isinstance(per_round, bool) or per_round < 1:
        raise ConfigError(f"invalid value for {PREFIX}.per_round: {per_round!r}; allowed: an integer >= 1")
    verify = values.get("verify", True)
    if not isinstance(verify, bool):
        raise ConfigError(f"invalid value for {PREFIX}.verify: {verify!r}; allowed: true or false")
    return SyntheticSettings(bank=bank, per_round=per_round, verify=verify)


class SyntheticNegatives(NegativeSource):
    """Server-held synthetic faces from a versioned face bank; each face is its own negative group."""

    name = "synthetic"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.settings = parse_settings(config.negatives.plugins.get("synthetic"))
        self.bank: FaceBank | None = None
        self.current: BankVersion | None = None

    def prepare_server(self, resources: ServerResources) -> None:
        """Open the bank and load its newest good version.

        Raises:
            BankError: the bank folder is missing, or contains no readable version.
        """
        self.bank = FaceBank(self.settings.bank)
        self.current = self._checked(self.bank.read_latest(verify=self.settings.verify))
        logger.info("synthetic source: face bank %s, version %s, %d faces", self.bank.root, self.current.version, self.current.images.shape[0])

    def round_payload(self, server_round: int, rng: np.random.Generator) -> SourcePayload | None:
        if self.bank is None or self.current is None:
            raise RuntimeError("synthetic source: round_payload called before prepare_server")
        self._follow_newest(server_round)

        available = self.current.images.shape[0]
        count = min(self.settings.per_round, available)
        chosen = np.sort(rng.choice(available, size=count, replace=False))
        images = resize_faces(self.current.images[chosen], self.config.data.image_size)
        return SourcePayload(
            arrays={"images": images, "groups": np.arange(count, dtype=np.int64)},
            info={"bank_version": self.current.version, "faces": int(count)},
        )

    def phone_negatives(self, payload: SourcePayload | None, phone: PhoneImages, model: nn.Module, rng: np.random.Generator) -> NegativeSet:
        if payload is None or "images" not in payload.arrays:
            raise ValueError("synthetic source: the round message carries no synthetic faces; the server's synthetic source did not run")
        images = torch.from_numpy(np.ascontiguousarray(payload.arrays["images"]))
        return NegativeSet(images=images, groups=torch.arange(images.shape[0], dtype=torch.int64))

    def _follow_newest(self, server_round: int) -> None:
        """Switch to a newer bank version if one verifies; otherwise keep the current one."""
        assert self.bank is not None and self.current is not None
        try:
            versions = self.bank.versions()
        except OSError as error:
            logger.error("round %d: face bank %s cannot be listed (%s); keeping version %s", server_round, self.bank.root, error, self.current.version)
            return

        current_number = version_number(self.current.version)
        newer = [version for version in versions if version_number(version) > current_number]
        for version in reversed(newer):
            try:
                candidate = self._checked(self.bank.read_version(version, verify=self.settings.verify))
            except (BankError, FileNotFoundError) as error:
                logger.error("round %d: face bank version %s is unusable (%s); trying older ones, last good is %s", server_round, version, error, self.current.version)
                continue
            logger.info("round %d: synthetic source moves from bank version %s to %s", server_round, self.current.version, version)
            self.current = candidate
            return

    def _checked(self, version: BankVersion) -> BankVersion:
        if version.images.shape[0] == 0:
            raise BankCorruptError(f"face bank version {version.path} contains no faces; publish a new one with python -m generator.serve --bank {self.settings.bank} --once ...")
        return version


def resize_faces(images: np.ndarray, image_size: int) -> np.ndarray:
    """Resize uint8 (N, 3, S, S) faces to (N, 3, image_size, image_size), antialiased."""
    if images.shape[-1] == image_size and images.shape[-2] == image_size:
        return np.ascontiguousarray(images)
    resized = TF.resize(torch.from_numpy(np.ascontiguousarray(images)), [image_size, image_size], antialias=True)
    return resized.numpy()
