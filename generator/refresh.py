"""One face bank refresh: generate, filter, measure, publish."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from generator.backends.base import FaceGenerator, GeneratorError
from generator.bank import BankVersion, FaceBank, version_number
from generator.quality import (
    DEFAULT_DUPLICATE_COSINE,
    DEFAULT_FACE_THRESHOLD,
    Embedder,
    FaceDetector,
    filter_faces,
    kernel_distance,
)

logger = logging.getLogger(__name__)

# Extra faces generated per refresh to make up for the ones the filter drops.
OVERSAMPLE = 1.1


@dataclass
class RefreshSettings:
    """Settings of one refresh: how many faces, their size and the seed.

    Attributes:
        count: faces the version should hold; fewer are published when the filter drops more
            than the oversampling covered.
        image_size: side of the stored faces, px.
        seed: base seed; version number v uses seed + 7919 * v, so versions differ.
        keep: versions retained after publishing.
    """

    count: int
    image_size: int = 64
    seed: int = 0
    keep: int = 5
    face_threshold: float = DEFAULT_FACE_THRESHOLD
    duplicate_cosine: float = DEFAULT_DUPLICATE_COSINE


@dataclass
class RefreshResult:
    version: BankVersion
    seconds: float
    dropped_not_face: int
    dropped_duplicate: int


def refresh_bank(
    bank: FaceBank,
    generator: FaceGenerator,
    settings: RefreshSettings,
    embedder: Embedder,
    detector: FaceDetector | None,
    real_features: np.ndarray | None = None,
) -> RefreshResult:
    """Generate `ceil(count * OVERSAMPLE)` faces, filter them, and publish up to `count` as a new version.

    Args:
        real_features: float (M, D) raw features (`embedder.features`) of real public faces;
            when given, the manifest records the kernel distance of the kept faces to them.

    Raises:
        GeneratorError: no generated face passed the filter (nothing is published).
        Whatever generation or publishing raises; the bank then still contains its previous versions.
    """
    started = time.monotonic()
    versions = bank.versions()
    next_number = version_number(versions[-1]) + 1 if versions else 1
    seed = settings.seed + 7919 * next_number
    requested = math.ceil(settings.count * OVERSAMPLE)

    images = generator.generate(requested, settings.image_size, seed)
    generated_at = time.monotonic()

    result = filter_faces(images, embedder, detector, settings.face_threshold, settings.duplicate_cosine)
    kept = result.kept[: settings.count]
    if kept.shape[0] == 0:
        raise GeneratorError(
            f"no face of {requested} generated passed the filter ({result.dropped_not_face} not a face, "
            f"{result.dropped_duplicate} duplicates); check the model, or lower --face-threshold or raise --duplicate-cosine"
        )
    if kept.shape[0] < settings.count:
        logger.warning("face bank %s: only %d of %d faces passed the filter", bank.root, kept.shape[0], settings.count)

    quality: dict[str, Any] = {}
    if real_features is not None and kept.shape[0] >= 2:
        quality = {
            "kernel_distance": kernel_distance(embedder.features(images[kept]), real_features),
            "kernel_distance_reference": f"{real_features.shape[0]} real public faces, {embedder.description}",
        }

    manifest = {
        "backend": generator.name,
        "model": {"path": generator.model_path, "sha256": generator.model_hash()},
        "settings": generator.settings(),
        "seed": seed,
        "requested": settings.count,
        "generated": requested,
        "filter": {
            "dropped_not_face": result.dropped_not_face,
            "dropped_duplicate": result.dropped_duplicate,
            **result.details,
        },
        "diversity": {"mean_pairwise_cosine": result.mean_pairwise_cosine, "embedding": embedder.description},
        "quality": quality,
        "timing": {"generate_seconds": round(generated_at - started, 3), "filter_seconds": round(time.monotonic() - generated_at, 3)},
    }
    version = bank.publish(images[kept], manifest, keep=settings.keep)
    return RefreshResult(
        version=version,
        seconds=time.monotonic() - started,
        dropped_not_face=result.dropped_not_face,
        dropped_duplicate=result.dropped_duplicate,
    )
