"""Margin-softmax objectives with a local classifier: ArcFace, CosFace, SphereFace, center loss.

On a phone the classes are the owner (label 0) and each negative group it has this round
(a bystander cluster, a public person, a synthetic face), so `num_classes` is K = 1 + the
number of negative groups. Each objective owns a cosine classifier with one weight column
per class, shape (embedding_dim, K), which `fedneg.train.train_local` optimises beside the FE.

Logits are `scale * psi(theta_y)` for the true class and `scale * cos(theta_j)` for the
others, theta being the angle between the embedding and a class column:

- ArcFace (Deng et al., CVPR 2019): psi = cos(theta + margin), margin in radians;
- CosFace (Wang et al., CVPR 2018): psi = cos(theta) - margin, margin in cosine units;
- SphereFace (Liu et al., CVPR 2017): psi = (-1)^k cos(margin * theta) - 2k with
  k = floor(theta * margin / pi), margin an integer angle multiplier;
- center loss (Wen et al., ECCV 2016): cosine softmax (psi = cos theta) plus
  `center_weight * 0.5 * mean_i ||x_i - c_{y_i}||^2` with one learnt centre per class.

The first three are pytorch-metric-learning's `ArcFaceLoss`, `CosFaceLoss` and
`SphereFaceLoss`; the softmax part of the center loss is its `NormalizedSoftmaxLoss`. Every
value is a mean over the batch.

Round designs. By default the trainer builds a fresh objective, so a fresh classifier, every
round, and only the FE leaves the phone. With a persistent classifier the phone exports
`export_state()` after training and imports it before the next round it takes part in.
Only the owner's column (and the owner's centre) carries over, because negative labels are
re-drawn every round (bystander clusters are re-mined, public faces re-sampled), so column j
for j >= 1 names a different group each round. The owner column is a learnt template of the
owner's face: a server that stores it can tell phones apart and match a face to a phone.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from pytorch_metric_learning import losses
from torch.nn import functional

from fedneg.config import TrainConfig
from fedneg.losses import OBJECTIVES, OWNER, LocalObjective

logger = logging.getLogger(__name__)

# Keys of the persistent classifier state; each value is float32 (embedding_dim,).
OWNER_WEIGHT = "owner_weight"
OWNER_CENTER = "owner_center"


class ClassifierObjective(LocalObjective):
    """Base of the objectives with a local classifier of shape (embedding_dim, num_classes).

    Subclasses build `self.loss`, a pytorch-metric-learning loss that stores the classifier
    as its parameter `W` and maps (embeddings (B, D), labels (B,)) to a scalar.
    """

    has_classifier = True
    default_margin: float = 0.0

    def __init__(self, config: TrainConfig, num_classes: int, embedding_dim: int = 128) -> None:
        super().__init__(config, num_classes)
        if num_classes < 1:
            raise ValueError(f"invalid num_classes {num_classes}: a phone has at least the owner class")
        self.embedding_dim = embedding_dim
        settings = config.classifier
        self.scale = float(settings.scale)
        self.margin = float(settings.margin) if settings.margin is not None else self.default_margin

    @property
    def weight(self) -> torch.nn.Parameter:
        """Classifier columns, (embedding_dim, num_classes); column 0 is the owner."""
        return self.loss.W

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if int(labels.max()) >= self.num_classes or int(labels.min()) < 0:
            raise ValueError(f"labels must lie in 0..{self.num_classes - 1}; got {labels.min().item()}..{labels.max().item()}")
        return self.loss(embeddings, labels)

    def export_state(self) -> dict[str, np.ndarray]:
        """Return what persists to the next round: the owner column, float32 (embedding_dim,)."""
        return {OWNER_WEIGHT: self.weight.detach()[:, OWNER].cpu().numpy().astype(np.float32)}

    def import_state(self, state: dict[str, np.ndarray]) -> None:
        """Load a state from `export_state` into the owner column; other columns stay fresh.

        Raises:
            ValueError: the state's embedding size differs from this classifier's.
        """
        owner = np.asarray(state[OWNER_WEIGHT], dtype=np.float32)
        if owner.shape != (self.embedding_dim,):
            raise ValueError(f"persistent classifier state has shape {owner.shape}, expected ({self.embedding_dim},); check model.embedding_dim")
        with torch.no_grad():
            self.weight[:, OWNER] = torch.from_numpy(owner).to(self.weight)


class ArcFaceObjective(ClassifierObjective):
    """ArcFace: additive angular margin on the true class, psi = cos(theta + margin).

    `train.classifier.margin` is in radians (default 0.5, about 28.6 degrees). Past
    theta = pi - margin the library switches to cos(theta) - margin * sin(margin), which
    keeps the target logit decreasing in theta.
    """

    default_margin = 0.5

    def __init__(self, config: TrainConfig, num_classes: int, embedding_dim: int = 128) -> None:
        super().__init__(config, num_classes, embedding_dim)
        # pytorch-metric-learning takes the ArcFace margin in degrees.
        self.loss = losses.ArcFaceLoss(num_classes, embedding_dim, margin=math.degrees(self.margin), scale=self.scale)


class CosFaceObjective(ClassifierObjective):
    """CosFace (large margin cosine loss): psi = cos(theta) - margin; default margin 0.35."""

    default_margin = 0.35

    def __init__(self, config: TrainConfig, num_classes: int, embedding_dim: int = 128) -> None:
        super().__init__(config, num_classes, embedding_dim)
        self.loss = losses.CosFaceLoss(num_classes, embedding_dim, margin=self.margin, scale=self.scale)


class SphereFaceObjective(ClassifierObjective):
    """SphereFace (A-Softmax): multiplicative angular margin psi = (-1)^k cos(m theta) - 2k.

    `train.classifier.margin` is the integer multiplier m (default 4); a non-integer value
    is rejected. Logits are multiplied by the embedding norm, which is 1 for the FE's unit
    embeddings, and by `scale`.

    NOTE: SphereFace anneals from plain softmax to A-Softmax with a blending weight. The
    library has no such schedule, so the full margin applies from the first step. With few
    classes and short local training this may converge slower than ArcFace or CosFace.
    """

    default_margin = 4.0

    def __init__(self, config: TrainConfig, num_classes: int, embedding_dim: int = 128) -> None:
        super().__init__(config, num_classes, embedding_dim)
        if self.margin != int(self.margin) or self.margin < 1:
            raise ValueError(f"invalid SphereFace margin {self.margin}: train.classifier.margin must be an integer >= 1 for sphereface")
        self.loss = losses.SphereFaceLoss(num_classes, embedding_dim, margin=int(self.margin), scale=self.scale)


class CenterObjective(ClassifierObjective):
    """Center loss: cosine softmax plus a pull of each embedding towards its class centre.

    value = CE(scale * cos(x, W)) + center_weight * 0.5 * mean_i ||x_i - c_{y_i}||^2

    Centres `centers` (num_classes, embedding_dim) are parameters updated by the same
    optimiser as the FE. Wen et al. update centres with a separate rate alpha from a
    per-class mean; a plain gradient step on this term moves each centre towards the mean of
    its batch members at rate lr * center_weight * (members / B), which plays that role.
    The margin setting is not used.
    """

    def __init__(self, config: TrainConfig, num_classes: int, embedding_dim: int = 128) -> None:
        super().__init__(config, num_classes, embedding_dim)
        self.center_weight = float(config.classifier.center_weight)
        self.loss = losses.NormalizedSoftmaxLoss(num_classes, embedding_dim, temperature=1.0 / self.scale)
        self.centers = torch.nn.Parameter(torch.zeros(num_classes, embedding_dim))

    def center_term(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return 0.5 * mean_i ||x_i - c_{y_i}||^2 over the batch (a scalar)."""
        differences = embeddings - self.centers[labels]
        return 0.5 * differences.pow(2).sum(dim=1).mean()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        softmax = super().forward(embeddings, labels)
        return softmax + self.center_weight * self.center_term(embeddings, labels)

    def export_state(self) -> dict[str, np.ndarray]:
        state = super().export_state()
        state[OWNER_CENTER] = self.centers.detach()[OWNER].cpu().numpy().astype(np.float32)
        return state

    def import_state(self, state: dict[str, np.ndarray]) -> None:
        super().import_state(state)
        if OWNER_CENTER in state:
            with torch.no_grad():
                self.centers[OWNER] = torch.from_numpy(np.asarray(state[OWNER_CENTER], dtype=np.float32))


class _OwnerColumn(torch.nn.Module):
    """Holds the phone's class embedding as `W`, (embedding_dim, 1), like the library heads."""

    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        self.W = torch.nn.Parameter(functional.normalize(torch.randn(embedding_dim, 1), dim=0))


class FedAwSObjective(ClassifierObjective):
    """Squared hinge on the cosine between each photo and the owner's class embedding.

    value = mean over owner photos of max(0, positive_margin - cos)^2
          + mean over negative photos of max(0, cos - negative_margin)^2

    The second term is zero when the phone has no negatives, which is FedAwS as published;
    with a negative source configured it also pushes the phone's negatives off its class.
    Margins are cosine similarities: positive 0.9, negative 0.1 (our choice; the classifier
    `margin` setting, when given, replaces the positive margin).
    """

    negative_margin = 0.1
    default_margin = 0.9

    def __init__(self, config: TrainConfig, num_classes: int, embedding_dim: int = 128) -> None:
        super().__init__(config, num_classes, embedding_dim)
        self.positive_margin = self.margin
        self.loss = _OwnerColumn(embedding_dim)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        owner_column = functional.normalize(self.weight[:, OWNER], dim=0)
        cosine = functional.normalize(embeddings, dim=1) @ owner_column

        is_owner = labels == OWNER
        loss = embeddings.sum() * 0.0
        if bool(is_owner.any()):
            loss = loss + functional.relu(self.positive_margin - cosine[is_owner]).pow(2).mean()
        if bool((~is_owner).any()):
            loss = loss + functional.relu(cosine[~is_owner] - self.negative_margin).pow(2).mean()
        return loss


MARGIN_OBJECTIVES: dict[str, type[ClassifierObjective]] = {
    "arcface": ArcFaceObjective,
    "cosface": CosFaceObjective,
    "sphereface": SphereFaceObjective,
    "center": CenterObjective,
    "fedaws": FedAwSObjective,
}
OBJECTIVES.update(MARGIN_OBJECTIVES)
