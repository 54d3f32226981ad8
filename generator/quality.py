"""Quality filter for generated faces, and the sample-quality figures recorded in a bank manifest.

Before a version is published, faces are dropped in two passes:
1. not a face: the MTCNN face detector of `facenet-pytorch` (its P/R/O-Net weights ship
   inside the package, so nothing is downloaded) finds no face with probability at least
   `face_threshold`;
2. near-duplicate: the embedding cosine similarity to a face already kept is at least
   `duplicate_cosine` (greedy, in generation order).

Embeddings come from MTCNN's O-Net by default, or from fedneg's FE with weights from a
file (`--fe`). The same embedding gives the diversity figure (mean pairwise cosine) and the
kernel distance to real public faces recorded in each manifest.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedneg.config import ModelConfig
from fedneg.model import build_model, embed, load_numpy_state

from generator.backends.base import GeneratorError

logger = logging.getLogger(__name__)

# NOTE: set for the O-Net embedding, where distinct LFW people reach cosine 0.992 and
# pixel-noise copies stay above 0.999 (200 photos at 64 px). A trained FE (`--fe`) spreads
# people much further apart; there about 0.9 is the likelier choice, untested here.
DEFAULT_DUPLICATE_COSINE = 0.995
DEFAULT_FACE_THRESHOLD = 0.9
DETECTOR_INSTALL_HELP = "install it with: pip install --no-deps facenet-pytorch (or the project's quality extra), or pass --no-face-check"


class FaceDetector:
    """MTCNN face detector on uint8 (N, 3, S, S) images; S >= 32 px works, faces may fill the frame.

    NOTE: on smooth noise (an untrained diffusion model upscaled from 16 px), MTCNN's first
    stage proposes so many boxes that detection took minutes for a few hundred images here.
    A refresh from a broken model can therefore be slow before it fails the filter.
    """

    name = "mtcnn"

    def __init__(self) -> None:
        try:
            from facenet_pytorch import MTCNN
        except ImportError as error:
            raise GeneratorError(f"the face check needs facenet-pytorch ({error}); {DETECTOR_INSTALL_HELP}") from error
        self.mtcnn = MTCNN(keep_all=False, device="cpu")

    def face_probabilities(self, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
        """Return the best face probability per image, float (N,) in [0, 1]; 0 where none is found."""
        probabilities = np.zeros(images.shape[0], dtype=np.float64)
        for start in range(0, images.shape[0], batch_size):
            batch = torch.from_numpy(images[start : start + batch_size]).permute(0, 2, 3, 1).float()
            _, scores = self.mtcnn.detect(batch)
            for offset, score in enumerate(scores):
                if score is not None and len(score) and score[0] is not None:
                    probabilities[start + offset] = float(score[0])
        return probabilities


class Embedder(ABC):
    """A fixed image embedding for duplicate detection, diversity and kernel distance.

    `features` returns the raw (N, D) features used for the kernel distance; calling the
    embedder returns them L2-normalised, for cosine similarities.
    """

    description: str

    @abstractmethod
    def features(self, images: np.ndarray) -> np.ndarray:
        """Compute raw float (N, D) features of uint8 (N, 3, S, S) images."""

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Embed uint8 (N, 3, S, S) images; returns float32 (N, D) unit vectors."""
        features = self.features(images)
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        return (features / np.maximum(norms, 1e-12)).astype(np.float32)


class OnetEmbedder(Embedder):
    """256-d features of MTCNN's O-Net (its `dense5` layer after PReLU), on faces resized to 48 px.

    O-Net is trained on faces (face/non-face, box and landmark outputs), so its features
    tell faces from noise and blur where an untrained network cannot. On 200 real LFW
    photos at 64 px, distinct people reach cosine 0.992 at most, while copies with pixel
    noise (sigma 3) stay above 0.999.
    """

    description = "MTCNN O-Net dense5 features (facenet-pytorch)"

    def __init__(self) -> None:
        try:
            from facenet_pytorch.models.mtcnn import ONet
        except ImportError as error:
            raise GeneratorError(f"the O-Net embedding needs facenet-pytorch ({error}); {DETECTOR_INSTALL_HELP}") from error
        self.network = ONet(pretrained=True).eval()
        self._captured: list[torch.Tensor] = []
        self.network.prelu5.register_forward_hook(lambda module, inputs, output: self._captured.append(output))

    def features(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        outputs = []
        with torch.inference_mode():
            for start in range(0, images.shape[0], batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).float()
                batch = torch.nn.functional.interpolate(batch, size=(48, 48), mode="area")
                # O-Net's input scaling, as MTCNN applies it: (pixel - 127.5) / 128.
                self._captured.clear()
                self.network((batch - 127.5) * 0.0078125)
                outputs.append(self._captured[0].numpy())
        if not outputs:
            return np.empty((0, 256), dtype=np.float32)
        return np.concatenate(outputs)


class FEEmbedder(Embedder):
    """fedneg's FE (`fedneg.model.FaceEmbedder`) as the embedding.

    Args:
        weights: a `.safetensors` or `.npz` file of FE parameters (keys of `FaceEmbedder`'s
            state dict, with the default `ModelConfig` shape), for example the output of
            `python -m fedneg.pretrain`; None: random weights from `seed`, which separate
            faces poorly (a fallback for when facenet-pytorch is missing).
    """

    def __init__(self, weights: str | None = None, seed: int = 0) -> None:
        self.model = build_model(ModelConfig(), seed=seed)
        self.description = f"fedneg FE, random weights (seed {seed})"
        if weights is not None:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise GeneratorError(f"FE weights not found: {path}; pass a .safetensors or .npz file of FaceEmbedder weights, or leave --fe out")
            if path.suffix == ".npz":
                arrays = dict(np.load(path))
            else:
                from safetensors.numpy import load_file

                arrays = load_file(str(path))
            try:
                load_numpy_state(self.model, arrays)
            except ValueError as error:
                raise GeneratorError(f"FE weights in {path} do not fit the default FE: {error}") from error
            self.description = f"fedneg FE, weights {path}"
        self.model.eval()

    def features(self, images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return embed(self.model, torch.from_numpy(np.ascontiguousarray(images))).numpy()


def build_embedder(fe_weights: str | None = None) -> Embedder:
    """Build the embedder: the FE with `fe_weights` when given, else O-Net.

    Without facenet-pytorch and without `fe_weights`, a random-weight FE is used.
    """
    if fe_weights is not None:
        return FEEmbedder(fe_weights)
    try:
        return OnetEmbedder()
    except GeneratorError as error:
        logger.warning("falling back to a random-weight FE embedding, which separates faces poorly: %s", error)
        return FEEmbedder()


@dataclass
class FilterResult:
    """Outcome of `filter_faces`: indices kept (into the input) and why the rest were dropped."""

    kept: np.ndarray
    dropped_not_face: int
    dropped_duplicate: int
    mean_pairwise_cosine: float
    details: dict[str, Any] = field(default_factory=dict)


def mean_pairwise_cosine(embeddings: np.ndarray) -> float:
    """Mean cosine similarity over distinct pairs of unit vectors (N, D); lower means more diverse."""
    count = embeddings.shape[0]
    if count < 2:
        return float("nan")
    total = embeddings.sum(axis=0)
    # sum over i != j of <e_i, e_j> = |sum e|^2 - sum |e_i|^2
    off_diagonal = float(total @ total) - float((embeddings * embeddings).sum())
    return off_diagonal / (count * (count - 1))


def drop_near_duplicates(embeddings: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy pass in input order: keep a face unless its cosine to a kept face is >= `threshold`.

    Returns:
        int64 indices of the kept faces, ascending.
    """
    kept: list[int] = []
    kept_vectors = np.empty((0, embeddings.shape[1]), dtype=embeddings.dtype)
    for index, vector in enumerate(embeddings):
        if kept_vectors.shape[0] and float((kept_vectors @ vector).max()) >= threshold:
            continue
        kept.append(index)
        kept_vectors = np.vstack([kept_vectors, vector[None]])
    return np.asarray(kept, dtype=np.int64)


def filter_faces(
    images: np.ndarray,
    embedder: Embedder,
    detector: FaceDetector | None,
    face_threshold: float = DEFAULT_FACE_THRESHOLD,
    duplicate_cosine: float = DEFAULT_DUPLICATE_COSINE,
) -> FilterResult:
    """Drop non-faces (when `detector` is given) and near-duplicates from uint8 (N, 3, S, S) images."""
    candidates = np.arange(images.shape[0])
    dropped_not_face = 0
    details: dict[str, Any] = {"embedding": embedder.description, "duplicate_cosine": duplicate_cosine}
    if detector is not None:
        probabilities = detector.face_probabilities(images)
        candidates = candidates[probabilities >= face_threshold]
        dropped_not_face = int(images.shape[0] - candidates.shape[0])
        details.update(detector=detector.name, face_threshold=face_threshold)
    else:
        details.update(detector=None)

    embeddings = embedder(images[candidates]) if candidates.size else np.empty((0, 1), dtype=np.float32)
    unique = drop_near_duplicates(embeddings, duplicate_cosine) if candidates.size else np.empty(0, dtype=np.int64)
    kept = candidates[unique]
    return FilterResult(
        kept=kept,
        dropped_not_face=dropped_not_face,
        dropped_duplicate=int(candidates.shape[0] - kept.shape[0]),
        mean_pairwise_cosine=mean_pairwise_cosine(embeddings[unique]) if unique.size else float("nan"),
        details=details,
    )


def kernel_distance(generated: np.ndarray, real: np.ndarray) -> float:
    """Kernel distance (unbiased squared MMD, the KID statistic) between two embedding sets.

    Uses the cubic polynomial kernel k(x, y) = (x . y / D + 1)^3 of the Kernel Inception
    Distance, on (N, D) and (M, D) embeddings; 0 means the two sets match in distribution,
    larger is worse. Needs N, M >= 2.
    """
    if generated.shape[0] < 2 or real.shape[0] < 2:
        raise ValueError(f"kernel distance needs at least 2 embeddings per set, got {generated.shape[0]} and {real.shape[0]}")
    dimension = generated.shape[1]

    def kernel(left: np.ndarray, right: np.ndarray) -> np.ndarray:
        return (left.astype(np.float64) @ right.astype(np.float64).T / dimension + 1.0) ** 3

    count_generated, count_real = generated.shape[0], real.shape[0]
    within_generated = kernel(generated, generated)
    within_real = kernel(real, real)
    across = kernel(generated, real)
    term_generated = (within_generated.sum() - np.trace(within_generated)) / (count_generated * (count_generated - 1))
    term_real = (within_real.sum() - np.trace(within_real)) / (count_real * (count_real - 1))
    return float(term_generated + term_real - 2.0 * across.mean())
