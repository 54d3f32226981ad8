"""Train the `ddpm` face generator on the public people's photos.

    python -m generator.train --config configs/generator-ddpm.yaml [key=value ...]

Only the people that fedneg's split assigns to the public role are read, so the generator
is never trained on a phone owner, bystander or evaluation person. Training resumes from
the newest `checkpoint-<step>` folder in `output_dir`. Each checkpoint is a loadable
diffusers `DDPMPipeline` (EMA weights) plus `training_state.pt` and a `samples.png` grid.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from torchvision.utils import save_image

from fedneg.config import ConfigError, apply_overrides, load_config
from fedneg.data import load_faces, normalize, resolve_data_root, scan_identities
from fedneg.split import split_people
from generator.backends.ddpm import DDPMGenerator, find_checkpoints

logger = logging.getLogger(__name__)


@dataclass
class UNetSettings:
    """Shape of the noise-prediction UNet."""

    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    layers_per_block: int = 1
    attention: bool = False  # self-attention in the lowest-resolution down/up blocks (the mid block always has it)
    norm_num_groups: int = 16


@dataclass
class TrainSettings:
    """One `generator.train` run; every key may be set in the YAML file or as `key=value`."""

    experiment: str | None = None  # fedneg experiment config whose split gives the public people; None: fedneg defaults
    experiment_overrides: list[str] = field(default_factory=list)  # `key=value` overrides for that config
    output_dir: str = "runs/generator-ddpm"
    image_size: int = 32  # native generator side, px; banks resize to the experiment's data.image_size
    unet: UNetSettings = field(default_factory=UNetSettings)
    train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    batch_size: int = 32
    lr: float = 3e-4
    warmup_steps: int = 200
    max_steps: int = 4000
    max_minutes: float | None = None  # stop (with a checkpoint) after this much wall time in this invocation
    ema_decay: float = 0.995
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    sample_count: int = 36  # faces in each checkpoint's samples.png
    sample_steps: int = 50  # DDIM steps for the preview grid
    seed: int = 0
    num_threads: int | None = 1  # torch intra-op threads; None: torch's default


def load_settings(path: str, overrides: list[str]) -> TrainSettings:
    """Read a training YAML file, apply `key=value` overrides and validate.

    Raises:
        ConfigError: the file is missing or invalid, or a key or value is invalid.
    """
    config_path = Path(path)
    if not config_path.is_file():
        raise ConfigError(f"generator config not found: {config_path}; pass an existing YAML file, for example configs/generator-ddpm.yaml")
    try:
        values = yaml.safe_load(config_path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"generator config {config_path} is not valid YAML: {error}") from error
    values = apply_overrides(values, overrides)

    unet_values = values.pop("unet", None) or {}
    known = {item.name for item in dataclasses.fields(TrainSettings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown generator config key {unknown[0]!r} in {config_path}; allowed keys: {', '.join(sorted(known))}")
    unet_known = {item.name for item in dataclasses.fields(UNetSettings)}
    unet_unknown = sorted(set(unet_values) - unet_known)
    if unet_unknown:
        raise ConfigError(f"unknown generator config key 'unet.{unet_unknown[0]}'; allowed: {', '.join(sorted(unet_known))}")

    settings = TrainSettings(**values, unet=UNetSettings(**unet_values))
    levels = len(settings.unet.block_out_channels)
    if settings.image_size % (2 ** (levels - 1)) != 0:
        raise ConfigError(f"invalid value for image_size: {settings.image_size}; it must be divisible by {2 ** (levels - 1)} for {levels} UNet levels")
    for key in ("batch_size", "max_steps", "checkpoint_every", "keep_checkpoints", "sample_count", "sample_steps"):
        value = getattr(settings, key)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"invalid value for {key}: {value!r}; allowed: an integer >= 1")
    if not 0.0 <= settings.ema_decay < 1.0:
        raise ConfigError(f"invalid value for ema_decay: {settings.ema_decay!r}; allowed: a number in [0, 1)")
    return settings


def public_photos(settings: TrainSettings) -> list[str]:
    """Paths of the public people's photos under the experiment's split (never other roles)."""
    experiment = load_config(settings.experiment, settings.experiment_overrides)
    root = resolve_data_root(experiment.data.root)
    identities = scan_identities(root)
    split = split_people(identities, experiment)
    paths = [path for name in split.public for path in identities[name]]
    logger.info("training data: %d photos of %d public people under %s", len(paths), len(split.public), root)
    return paths


def build_unet(settings: TrainSettings) -> UNet2DModel:
    levels = len(settings.unet.block_out_channels)
    lowest_down = "AttnDownBlock2D" if settings.unet.attention else "DownBlock2D"
    lowest_up = "AttnUpBlock2D" if settings.unet.attention else "UpBlock2D"
    return UNet2DModel(
        sample_size=settings.image_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(settings.unet.block_out_channels),
        layers_per_block=settings.unet.layers_per_block,
        down_block_types=("DownBlock2D",) * (levels - 1) + (lowest_down,),
        up_block_types=(lowest_up,) + ("UpBlock2D",) * (levels - 1),
        norm_num_groups=settings.unet.norm_num_groups,
    )


def save_checkpoint(
    settings: TrainSettings,
    step: int,
    unet: UNet2DModel,
    ema_unet: UNet2DModel,
    scheduler: DDPMScheduler,
    optimizer: torch.optim.Optimizer,
) -> Path:
    """Write `checkpoint-<step>` atomically (temp folder, then rename) and prune old ones."""
    output_dir = Path(settings.output_dir)
    final = output_dir / f"checkpoint-{step:06d}"
    staging = output_dir / f".tmp-checkpoint-{step:06d}"
    shutil.rmtree(staging, ignore_errors=True)

    DDPMPipeline(unet=ema_unet, scheduler=scheduler).save_pretrained(staging)
    torch.save(
        {
            "step": step,
            "model": unet.state_dict(),
            "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "settings": dataclasses.asdict(settings),
        },
        staging / "training_state.pt",
    )

    preview = DDPMGenerator(ema_unet, scheduler, steps=settings.sample_steps).generate(settings.sample_count, settings.image_size, seed=settings.seed)
    grid_width = max(1, int(math.sqrt(settings.sample_count)))
    save_image(torch.from_numpy(preview).float() / 255.0, staging / "samples.png", nrow=grid_width)

    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    for old in find_checkpoints(output_dir)[: -settings.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("step %d: checkpoint written to %s", step, final)
    return final


def train(settings: TrainSettings) -> Path:
    """Train (or resume) until `max_steps` or `max_minutes`; returns the newest checkpoint folder."""
    if settings.num_threads is not None:
        torch.set_num_threads(settings.num_threads)
    output_dir = Path(settings.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)

    experiment = load_config(settings.experiment, settings.experiment_overrides)
    images, _ = load_faces(public_photos(settings), experiment.data.crop_size, settings.image_size)
    if images.shape[0] == 0:
        raise ConfigError("no readable public photos to train on; check data.root and split.public of the experiment config")
    data = normalize(images)

    unet = build_unet(settings)
    scheduler = DDPMScheduler(num_train_timesteps=settings.train_timesteps, beta_schedule=settings.beta_schedule)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=settings.lr, weight_decay=0.0)
    ema_unet = copy.deepcopy(unet)
    step = 0

    checkpoints = find_checkpoints(output_dir)
    if checkpoints:
        state = torch.load(checkpoints[-1] / "training_state.pt", weights_only=False)
        unet.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        ema_unet = UNet2DModel.from_pretrained(checkpoints[-1] / "unet")
        step = int(state["step"])
        logger.info("resumed from %s at step %d", checkpoints[-1], step)
    ema_unet.requires_grad_(False)

    logger.info("UNet: %.2fM parameters, %d px, %d training photos", unet.num_parameters() / 1e6, settings.image_size, data.shape[0])
    started = time.monotonic()
    window_loss, window_start = 0.0, time.monotonic()
    while step < settings.max_steps:
        batch = data[torch.randint(0, data.shape[0], (settings.batch_size,))]
        flips = torch.rand(settings.batch_size) < 0.5
        batch[flips] = batch[flips].flip(-1)
        noise = torch.randn_like(batch)
        timesteps = torch.randint(0, settings.train_timesteps, (settings.batch_size,))
        noisy = scheduler.add_noise(batch, noise, timesteps)

        loss = torch.nn.functional.mse_loss(unet(noisy, timesteps).sample, noise)
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * min(1.0, (step + 1) / max(1, settings.warmup_steps))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        step += 1

        # EMA with a warm-up, so early checkpoints are not dominated by the random init.
        decay = min(settings.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for averaged, current in zip(ema_unet.parameters(), unet.parameters()):
                averaged.lerp_(current, 1.0 - decay)

        window_loss += loss.item()
        if step % 50 == 0:
            elapsed = time.monotonic() - window_start
            logger.info("step %d: loss %.4f, %.2f steps/s", step, window_loss / 50, 50 / elapsed)
            window_loss, window_start = 0.0, time.monotonic()

        out_of_time = settings.max_minutes is not None and time.monotonic() - started > settings.max_minutes * 60
        if step % settings.checkpoint_every == 0 or step == settings.max_steps or out_of_time:
            save_checkpoint(settings, step, unet, ema_unet, scheduler, optimizer)
        if out_of_time:
            logger.info("stopping at step %d: max_minutes=%s reached; rerun to resume", step, settings.max_minutes)
            break

    checkpoints = find_checkpoints(output_dir)
    return checkpoints[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m generator.train", description="Train the ddpm face generator on the public people's photos.")
    parser.add_argument("--config", required=True, help="generator training YAML, for example configs/generator-ddpm.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, for example max_steps=200 output_dir=/tmp/ddpm")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        settings = load_settings(args.config, args.overrides)
        checkpoint = train(settings)
    except ConfigError as error:
        logger.error("%s", error)
        return 2
    logger.info("done; newest checkpoint: %s (use it with --backend ddpm --model %s)", checkpoint, checkpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
