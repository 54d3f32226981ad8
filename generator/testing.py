"""Small real models and real faces for tests and benchmarks; nothing here downloads anything.

The tiny pipelines are randomly initialised diffusers models built from config: they run
the real loading and sampling code in seconds, but their images are noise, not faces.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def real_faces(count: int, image_size: int = 64, offset: int = 0) -> np.ndarray:
    """Read `count` LFW photos (first photo of each person, in name order from `offset`).

    Returns:
        uint8 (count, 3, image_size, image_size) RGB, centre-cropped like fedneg's data.

    Raises:
        fedneg.config.ConfigError: no data root is configured or found.
    """
    from fedneg.data import load_faces, resolve_data_root, scan_identities

    identities = scan_identities(resolve_data_root(None))
    names = sorted(identities)[offset : offset + count]
    images, _ = load_faces([identities[name][0] for name in names], 128, image_size)
    return images.numpy()


def save_tiny_ddpm_pipeline(directory: Path, sample_size: int = 16, seed: int = 0) -> Path:
    """Save a randomly initialised unconditional `DDPMPipeline` (about 0.1M parameters) to `directory`."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=4,
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=100)).save_pretrained(directory)
    return directory


def _write_tiny_clip_tokenizer(directory: Path) -> None:
    """Write a byte-level BPE vocabulary with letters only (no merges): enough to tokenize a prompt."""
    letters = [chr(code) for code in range(ord("a"), ord("z") + 1)] + [",", "'", "-"]
    tokens = ["<|startoftext|>", "<|endoftext|>"] + letters + [letter + "</w>" for letter in letters]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")


def save_tiny_text_to_image_pipeline(directory: Path, seed: int = 0) -> Path:
    """Save a randomly initialised `StableDiffusionPipeline` (UNet, VAE, CLIP text encoder) to `directory`.

    Needs the `transformers` package (the `pretrained` extra). Images are 32 px natively.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )
    tokenizer_dir = directory / "_tokenizer_source"
    _write_tiny_clip_tokenizer(tokenizer_dir)
    tokenizer = CLIPTokenizer(str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt"), model_max_length=77)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            projection_dim=16,
        )
    )
    pipeline = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=DDIMScheduler(num_train_timesteps=100, clip_sample=False, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(directory)
    for path in tokenizer_dir.iterdir():
        path.unlink()
    tokenizer_dir.rmdir()
    return directory
