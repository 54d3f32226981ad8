"""The face feature extractor (FE): a torchvision MobileNetV2 trunk with an L2-normalised head."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn
from torchvision.models import mobilenet_v2

from fedneg.config import ModelConfig


def group_norm(channels: int, max_groups: int = 8) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= `max_groups` that divides `channels`."""
    groups = max(g for g in range(1, max_groups + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class FaceEmbedder(nn.Module):
    """MobileNetV2 features -> global average pool -> linear -> norm -> L2 normalisation.

    `norm="group"` replaces every BatchNorm with GroupNorm and the head's BatchNorm with
    LayerNorm: no running statistics, so FedAvg averages weights only and evaluation does
    not depend on statistics gathered on one phone's owner-dominated batches.

    Input: float tensor (N, 3, S, S), normalised as in `fedneg.data.normalize`; any S >= 32.
    Output: float tensor (N, embedding_dim) with unit L2 norm, so a dot product of two
    embeddings is their cosine similarity in [-1, 1].
    """

    def __init__(self, width: float = 0.5, embedding_dim: int = 128, norm: str = "group") -> None:
        super().__init__()
        norm_layer = group_norm if norm == "group" else nn.BatchNorm2d
        trunk = mobilenet_v2(weights=None, width_mult=width, norm_layer=norm_layer)
        self.features = trunk.features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(trunk.last_channel, embedding_dim, bias=False)
        self.head_norm = nn.LayerNorm(embedding_dim) if norm == "group" else nn.BatchNorm1d(embedding_dim)
        self.embedding_dim = embedding_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.features(images)).flatten(1)
        embeddings = self.head_norm(self.head(features))
        return nn.functional.normalize(embeddings, dim=1)


def build_model(config: ModelConfig, seed: int | None = None) -> FaceEmbedder:
    """Build the FE; with `seed`, its initial weights are fixed by it."""
    if seed is not None:
        torch.manual_seed(seed)
    return FaceEmbedder(width=config.width, embedding_dim=config.embedding_dim, norm=config.norm)


def state_to_numpy(model: nn.Module) -> "OrderedDict[str, np.ndarray]":
    """Copy every parameter and buffer (BatchNorm statistics included) to NumPy arrays."""
    return OrderedDict((key, value.detach().cpu().numpy().copy()) for key, value in model.state_dict().items())


def load_numpy_state(model: nn.Module, arrays: "dict[str, np.ndarray]") -> None:
    """Load arrays from `state_to_numpy` (or an aggregate of them) into `model`.

    Integer buffers such as BatchNorm's `num_batches_tracked` may arrive as floats after
    averaging; they are cast back to the model's dtype.
    """
    reference = model.state_dict()
    missing = set(reference) - set(arrays)
    unexpected = set(arrays) - set(reference)
    if missing or unexpected:
        raise ValueError(
            f"FE weights do not match the model: missing {sorted(missing)[:3]}, unexpected "
            f"{sorted(unexpected)[:3]}; check that model.width and model.embedding_dim match the weights"
        )
    state = {key: torch.as_tensor(np.asarray(arrays[key])).to(reference[key].dtype) for key in reference}
    model.load_state_dict(state)


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Embed uint8 images (N, 3, S, S) in eval mode; returns float32 (N, D) unit vectors."""
    from fedneg.data import normalize

    was_training = model.training
    model.eval()
    outputs = [model(normalize(images[start : start + batch_size])) for start in range(0, images.shape[0], batch_size)]
    model.train(was_training)
    if not outputs:
        return torch.empty((0, getattr(model, "embedding_dim", 0)))
    return torch.cat(outputs)
