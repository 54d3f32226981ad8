"""`pretrained` backend: any diffusers pipeline, from a local folder or a Hugging Face hub id.

Text-to-image pipelines (Stable Diffusion and kin) are called with a selfie-style prompt;
unconditional image pipelines (`DDPMPipeline`, `DDIMPipeline`) are called without one.
Weights are never bundled with this project: the folder must already hold them, or the hub
id must be in the local Hugging Face cache or reachable.
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline

from generator.backends.base import FaceGenerator, GeneratorError, check_request, hash_directory

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = "a close-up selfie photo of a person's face, looking at the camera, natural light"
DEFAULT_NEGATIVE_PROMPT = "cartoon, drawing, text, watermark, multiple people, blurry"
PIPELINE_HELP = (
    "pass a folder written by a diffusers pipeline's save_pretrained (it contains model_index.json) "
    "or a hub id such as runwayml/stable-diffusion-v1-5 that is in the local Hugging Face cache"
)


class PretrainedGenerator(FaceGenerator):
    """A diffusers `DiffusionPipeline` used as a face generator.

    Args:
        pipeline: a loaded pipeline; its `__call__` either takes `prompt` (text-to-image) or not.
        steps: denoising steps per image.
        batch_size: images per pipeline call; bounds peak memory.
        prompt, negative_prompt, guidance_scale: text-to-image settings; ignored by
            unconditional pipelines.
        native_size: side in px the pipeline is asked for (text-to-image only); None: the
            pipeline's default. Output is then resized to the requested size.
    """

    name = "pretrained"

    def __init__(
        self,
        pipeline: DiffusionPipeline,
        steps: int = 25,
        batch_size: int = 8,
        prompt: str = DEFAULT_PROMPT,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        guidance_scale: float = 7.5,
        native_size: int | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.pipeline.set_progress_bar_config(disable=True)
        self.steps = steps
        self.batch_size = batch_size
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.guidance_scale = guidance_scale
        self.native_size = native_size
        self.text_conditioned = "prompt" in inspect.signature(pipeline.__call__).parameters

    @classmethod
    def load(cls, directory: str, **settings: Any) -> "PretrainedGenerator":
        """Load a pipeline from a local folder or a hub id; `settings` go to the constructor.

        Raises:
            GeneratorError: the folder is missing, has no model_index.json, or fails to load.
        """
        local = Path(directory).expanduser()
        if local.exists() and not local.is_dir():
            raise GeneratorError(f"not a diffusers model: {local} is a file, not a folder; {PIPELINE_HELP}")
        if local.is_dir() and not (local / "model_index.json").is_file():
            raise GeneratorError(f"not a diffusers model: {local} has no model_index.json; {PIPELINE_HELP}")
        if not local.exists() and not _is_hub_id(directory):
            raise GeneratorError(f"pretrained model not found: {local} does not exist and is not a hub id (owner/name); {PIPELINE_HELP}")

        source = str(local) if local.is_dir() else directory
        try:
            pipeline = DiffusionPipeline.from_pretrained(source, safety_checker=None) if _has_safety_checker(local) else DiffusionPipeline.from_pretrained(source)
        except (OSError, ValueError, ImportError, KeyError, AttributeError) as error:
            raise GeneratorError(f"not a diffusers model: failed to load {source} ({error.__class__.__name__}: {error}); {PIPELINE_HELP}") from error

        generator = cls(pipeline, **settings)
        generator.model_path = str(local.resolve()) if local.is_dir() else directory
        logger.info("pretrained backend: loaded %s (%s)", source, pipeline.__class__.__name__)
        return generator

    def save(self, directory: str | os.PathLike[str]) -> Path:
        target = Path(directory)
        self.pipeline.save_pretrained(target)
        self.model_path = str(target.resolve())
        self._model_hash = None
        return target

    def model_hash(self) -> str:
        cached = getattr(self, "_model_hash", None)
        if cached is None:
            path = Path(self.model_path or "")
            if path.is_dir():
                cached = hash_directory(path)
            else:
                # NOTE: a hub id is hashed through its cached snapshot folder, which
                # from_pretrained filled; the id alone would not pin the weights.
                from huggingface_hub import snapshot_download

                cached = hash_directory(Path(snapshot_download(self.model_path, local_files_only=True)))
            self._model_hash = cached
        return cached

    def settings(self) -> dict[str, Any]:
        values: dict[str, Any] = {"pipeline": self.pipeline.__class__.__name__, "steps": self.steps}
        if self.text_conditioned:
            values.update(prompt=self.prompt, negative_prompt=self.negative_prompt, guidance_scale=self.guidance_scale, native_size=self.native_size)
        return values

    @torch.no_grad()
    def generate(self, count: int, size: int, seed: int) -> np.ndarray:
        check_request(count, size)
        batches = []
        for index, start in enumerate(range(0, count, self.batch_size)):
            number = min(self.batch_size, count - start)
            # One generator per batch, seeded from (seed, batch index): a batch's faces do not
            # depend on how many batches came before.
            random = torch.Generator().manual_seed(seed * 100_003 + index)
            if self.text_conditioned:
                extra = {} if self.native_size is None else {"height": self.native_size, "width": self.native_size}
                output = self.pipeline(
                    prompt=[self.prompt] * number,
                    negative_prompt=[self.negative_prompt] * number,
                    num_inference_steps=self.steps,
                    guidance_scale=self.guidance_scale,
                    generator=random,
                    output_type="np",
                    **extra,
                )
            else:
                output = self.pipeline(batch_size=number, num_inference_steps=self.steps, generator=random, output_type="np")
            batches.append(_np_images_to_uint8(np.asarray(output.images), size))

        if not batches:
            return np.empty((0, 3, size, size), dtype=np.uint8)
        return np.concatenate(batches)


def _np_images_to_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """Convert a pipeline's float (N, H, W, 3) output in [0, 1] to uint8 (N, 3, size, size)."""
    import torchvision.transforms.v2.functional as TF

    tensor = torch.from_numpy(np.clip(images, 0.0, 1.0) * 255.0).round().to(torch.uint8).permute(0, 3, 1, 2)
    if tensor.shape[-1] != size or tensor.shape[-2] != size:
        tensor = TF.resize(tensor, [size, size], antialias=True)
    return tensor.contiguous().numpy()


def _is_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))


def _has_safety_checker(folder: Path) -> bool:
    index = folder / "model_index.json"
    return index.is_file() and '"safety_checker"' in index.read_text()
