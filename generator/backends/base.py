"""The interface every face generator backend implements, and helpers they share.

A backend turns a seed into N RGB face images. It saves to and loads from a local
directory, and its `model_hash` fingerprints the weights it sampled from, so each face bank
version can name the exact model that made it.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    import torch


class GeneratorError(RuntimeError):
    """A generator or face bank failure; the message names the path or value and the fix."""


class FaceGenerator(ABC):
    """A source of synthetic faces.

    Subclasses set `name`, implement `generate`, `save`, `load` and `settings`, and set
    `model_path` to the directory or hub id they were loaded from (None for an unsaved model).
    """

    name: ClassVar[str]
    model_path: str | None = None

    @abstractmethod
    def generate(self, count: int, size: int, seed: int) -> np.ndarray:
        """Sample `count` faces, resized to `size` px; the same seed gives the same faces.

        Returns:
            uint8 array (count, 3, size, size), RGB.
        """

    @abstractmethod
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the model to `directory` so `load` can read it back; returns the directory."""

    @classmethod
    @abstractmethod
    def load(cls, directory: str, **settings: Any) -> "FaceGenerator":
        """Read a model from a directory (or a hub id where the backend supports one).

        Raises:
            GeneratorError: the path is missing or contains no model of this backend.
        """

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Sampling settings that change the output (steps, prompt, ...), JSON-serialisable."""

    def model_hash(self) -> str:
        """SHA-256 of the model's files (see `hash_directory`); computed once, then cached."""
        cached = getattr(self, "_model_hash", None)
        if cached is None:
            if self.model_path is None or not Path(self.model_path).is_dir():
                raise GeneratorError(f"{self.name} backend: no model directory to hash; save the model first")
            cached = hash_directory(Path(self.model_path))
            self._model_hash = cached
        return cached


def hash_directory(directory: Path) -> str:
    """SHA-256 over every file below `directory`: relative path, then contents, in sorted order.

    Files named `samples.png` (preview grids) and `training_state.pt` (optimizer state) are
    left out, because they do not change what the model generates.
    """
    digest = hashlib.sha256()
    skipped = {"samples.png", "training_state.pt"}
    files = sorted(path for path in directory.rglob("*") if path.is_file() and path.name not in skipped)
    for path in files:
        digest.update(path.relative_to(directory).as_posix().encode())
        digest.update(b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def hash_file(path: Path) -> str:
    """SHA-256 of one file's contents, as 64 hex digits."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def to_uint8_images(samples: "torch.Tensor", size: int) -> np.ndarray:
    """Convert float samples in [-1, 1], shape (N, 3, H, W), to uint8 (N, 3, size, size) RGB."""
    import torch
    import torchvision.transforms.v2.functional as TF

    images = ((samples.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    if images.shape[-1] != size or images.shape[-2] != size:
        images = TF.resize(images, [size, size], antialias=True)
    return images.cpu().numpy()


def check_request(count: int, size: int) -> None:
    """Validate a `generate` request; raises ValueError naming the bad argument."""
    if not isinstance(count, int) or count < 0:
        raise ValueError(f"invalid face count: {count!r}; pass an integer >= 0")
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"invalid image size: {size!r}; pass an integer >= 8 (pixels)")
