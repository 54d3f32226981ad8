"""`ddpm` backend: an unconditional diffusers `UNet2DModel` sampled with DDIM.

The model is trained by `python -m generator.train` (DDPM noise-prediction objective) and
saved in the layout of a diffusers `DDPMPipeline`: `model_index.json`, `unet/` (the EMA
weights) and `scheduler/`. Sampling swaps the DDPM scheduler for a DDIM scheduler built
from the same config, so a few dozen steps replace the 1,000 training steps.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

from generator.backends.base import FaceGenerator, GeneratorError, check_request, to_uint8_images

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAIN_HELP = "train one with: python -m generator.train --config configs/generator-ddpm.yaml"


def find_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders (`checkpoint-<step>` with `unet/config.json`) of a run, oldest first."""
    found = []
    if not run_dir.is_dir():
        return found
    for entry in run_dir.iterdir():
        match = CHECKPOINT_PATTERN.match(entry.name)
        if match and (entry / "unet" / "config.json").is_file():
            found.append((int(match.group(1)), entry))
    return [path for _, path in sorted(found)]


def resolve_model_dir(path: str | os.PathLike[str]) -> Path:
    """Map a checkpoint folder, or a training run folder (its newest checkpoint), to a model folder.

    Raises:
        GeneratorError: the path is missing or contains neither a model nor a checkpoint.
    """
    directory = Path(path).expanduser()
    if not directory.exists():
        raise GeneratorError(f"ddpm model not found: {directory} does not exist; {TRAIN_HELP} and pass its output folder with --model")
    if (directory / "unet" / "config.json").is_file():
        return directory

    checkpoints = find_checkpoints(directory)
    if checkpoints:
        return checkpoints[-1]
    raise GeneratorError(
        f"not a diffusers model: {directory} has no unet/config.json and no checkpoint-<step> folder; "
        f"pass a folder written by generator.train ({TRAIN_HELP})"
    )


class DDPMGenerator(FaceGenerator):
    """Unconditional DDPM-trained UNet, sampled with deterministic DDIM (eta = 0).

    Args:
        unet: the noise-prediction network; its `sample_size` is the native image side in px.
        scheduler: the training noise schedule (DDPM); sampling uses DDIM built from its config.
        steps: DDIM sampling steps per image.
        batch_size: images denoised together; bounds peak memory.
    """

    name = "ddpm"

    # 20 DDIM steps: a 1,000-face refresh took 2 min 8 s on an idle 2-core CPU with a kernel
    # distance of 0.0038, against 0.0035 with 50 steps (benchmarks/generator.md).
    DEFAULT_STEPS = 20

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler, steps: int = DEFAULT_STEPS, batch_size: int = 100) -> None:
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"invalid ddpm steps: {steps!r}; pass an integer >= 1")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"invalid ddpm batch_size: {batch_size!r}; pass an integer >= 1")
        self.unet = unet.eval()
        self.scheduler = scheduler
        self.steps = steps
        self.batch_size = batch_size

    @classmethod
    def load(cls, directory: str, steps: int = DEFAULT_STEPS, batch_size: int = 100, **settings: Any) -> "DDPMGenerator":
        if settings:
            raise ValueError(f"unknown ddpm settings: {sorted(settings)}; allowed: steps, batch_size")
        model_dir = resolve_model_dir(directory)
        try:
            unet = UNet2DModel.from_pretrained(model_dir / "unet")
            scheduler = DDPMScheduler.from_pretrained(model_dir / "scheduler")
        except (OSError, ValueError, KeyError) as error:
            raise GeneratorError(f"not a diffusers model: failed to load {model_dir} as a DDPM pipeline ({error}); {TRAIN_HELP}") from error

        generator = cls(unet, scheduler, steps=steps, batch_size=batch_size)
        generator.model_path = str(model_dir.resolve())
        logger.info("ddpm backend: loaded %s (%d px, %.1fM parameters)", model_dir, unet.config.sample_size, unet.num_parameters() / 1e6)
        return generator

    def save(self, directory: str | os.PathLike[str]) -> Path:
        target = Path(directory)
        DDPMPipeline(unet=self.unet, scheduler=self.scheduler).save_pretrained(target)
        self.model_path = str(target.resolve())
        self._model_hash = None
        return target

    def settings(self) -> dict[str, Any]:
        return {"steps": self.steps, "sampler": "ddim", "eta": 0.0, "native_size": int(self.unet.config.sample_size)}

    @torch.no_grad()
    def generate(self, count: int, size: int, seed: int) -> np.ndarray:
        check_request(count, size)
        native = int(self.unet.config.sample_size)
        channels = int(self.unet.config.in_channels)
        sampler = DDIMScheduler.from_config(self.scheduler.config)
        sampler.set_timesteps(self.steps)
        random = torch.Generator().manual_seed(seed)

        batches = []
        for start in range(0, count, self.batch_size):
            number = min(self.batch_size, count - start)
            sample = torch.randn((number, channels, native, native), generator=random)
            for timestep in sampler.timesteps:
                noise = self.unet(sample, timestep).sample
                sample = sampler.step(noise, timestep, sample, eta=0.0).prev_sample
            batches.append(to_uint8_images(sample, size))
            logger.info("ddpm backend: sampled %d of %d faces", start + number, count)

        if not batches:
            return np.empty((0, 3, size, size), dtype=np.uint8)
        return np.concatenate(batches)
