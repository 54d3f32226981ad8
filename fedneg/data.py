"""Identity-folder face data sets (`<root>/<Name>/<image>`, LFW's layout) and preprocessing.

Images travel between server and phones as uint8 RGB tensors of shape (N, 3, S, S), S the
model input size, already centre-cropped and resized. Normalisation and augmentation happen
where the images are used (`normalize`, `augment`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fedneg.config import DATA_ROOT_ENV, ConfigError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}

# Per-channel mean and standard deviation used to normalise inputs to roughly [-1, 1].
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)

# Default LFW location, relative to the project checkout and to the working folder.
_DEFAULT_ROOT_CANDIDATES = ("../shared/data/lfw/images_deepfunneled",)

DATA_HELP = (
    "set data.root=<folder> or the FEDNEG_DATA_ROOT environment variable to a folder of "
    "identity subfolders (<root>/<Name>/<image>), for example LFW's images_deepfunneled; "
    "the README explains how to download LFW"
)


@dataclass(frozen=True)
class FaceImage:
    """One photo of a known person."""

    path: str
    identity: str


def resolve_data_root(root: str | None) -> Path:
    """Find the data root: the given path, else $FEDNEG_DATA_ROOT, else this workplace's LFW copy.

    Raises:
        ConfigError: no candidate is an existing folder.
    """
    if root:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise ConfigError(f"data root not found: data.root={root!r}; {DATA_HELP}")
        return path.resolve()

    env_root = os.environ.get(DATA_ROOT_ENV)
    if env_root:
        path = Path(env_root).expanduser()
        if not path.is_dir():
            raise ConfigError(f"data root not found: {DATA_ROOT_ENV}={env_root!r}; {DATA_HELP}")
        return path.resolve()

    project_dir = Path(__file__).resolve().parents[1]
    for candidate in _DEFAULT_ROOT_CANDIDATES:
        for base in (project_dir, Path.cwd()):
            path = (base / candidate).resolve()
            if path.is_dir():
                return path
    raise ConfigError(f"no data root given and none found at the default location; {DATA_HELP}")


def scan_identities(root: Path) -> dict[str, list[str]]:
    """Map each identity folder under `root` to its sorted image paths.

    Folders without images are left out. Names and paths are sorted, so the result depends
    only on the folder's contents.

    Raises:
        ConfigError: `root` contains no identity folder with an image.
    """
    identities: dict[str, list[str]] = {}
    for entry in sorted(os.scandir(root), key=lambda item: item.name):
        if not entry.is_dir():
            continue
        images = sorted(
            os.path.join(entry.path, name)
            for name in os.listdir(entry.path)
            if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES
        )
        if images:
            identities[entry.name] = images
    if not identities:
        raise ConfigError(f"data root {root} contains no identity folders with images; {DATA_HELP}")
    return identities


def load_face(path: str, crop_size: int, image_size: int) -> torch.Tensor:
    """Read one photo, centre-crop `crop_size` px, resize to `image_size` px.

    Returns:
        uint8 tensor (3, image_size, image_size), RGB.

    Raises:
        OSError, UnidentifiedImageError, ValueError: the file cannot be read as an image.
    """
    with Image.open(path) as image:
        image = image.convert("RGB")
        width, height = image.size
        side = min(crop_size, width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side), reducing_gap=None)
        array = np.asarray(image, dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def load_faces(paths: list[str], crop_size: int, image_size: int) -> tuple[torch.Tensor, list[int]]:
    """Read several photos, skipping unreadable ones with one logged count.

    Returns:
        (images, kept): uint8 tensor (K, 3, S, S) and the indices into `paths` that were read.
    """
    images: list[torch.Tensor] = []
    kept: list[int] = []
    skipped: list[str] = []
    for index, path in enumerate(paths):
        try:
            images.append(load_face(path, crop_size, image_size))
            kept.append(index)
        except (OSError, UnidentifiedImageError, ValueError) as error:
            skipped.append(f"{path} ({error.__class__.__name__})")

    if skipped:
        logger.warning("skipped %d unreadable image(s) of %d, first: %s", len(skipped), len(paths), skipped[0])
    if not images:
        return torch.empty((0, 3, image_size, image_size), dtype=torch.uint8), kept
    return torch.stack(images), kept


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Convert uint8 (N, 3, S, S) RGB images to float32 model inputs."""
    floats = images.float().div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (floats - mean) / std


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Apply light training augmentation to uint8 (N, 3, S, S) images.

    Each image is flipped horizontally with probability 0.5 and shifted by up to 1/16 of its
    side (reflect padding), drawn from `generator` so a seed fixes the result.
    """
    size = images.shape[-1]
    pad = max(1, size // 16)
    flips = torch.rand(images.shape[0], generator=generator) < 0.5
    shifts = torch.randint(0, 2 * pad + 1, (images.shape[0], 2), generator=generator)

    padded = torch.nn.functional.pad(images.float(), [pad, pad, pad, pad], mode="reflect")
    result = torch.empty_like(images)
    for index in range(images.shape[0]):
        top, left = int(shifts[index, 0]), int(shifts[index, 1])
        crop = padded[index, :, top : top + size, left : left + size]
        if flips[index]:
            crop = crop.flip(-1)
        result[index] = crop.to(torch.uint8)
    return result


@dataclass
class PhoneImages:
    """A phone's photos, decoded: uint8 (N, 3, S, S) tensors.

    `gallery_identities` is ground truth kept on the phone only to score bystander mining;
    training never reads it.
    """

    phone_id: int
    enrollment: torch.Tensor
    gallery: torch.Tensor
    gallery_identities: list[str]
    owner: str
    skipped_images: int = 0  # unreadable photos left out when the phone was loaded
