"""Local training objectives: which pairs or triplets to use (mining) and how to score them.

Labels follow one convention everywhere: 0 is the phone's owner, 1..K-1 are negative groups
(a bystander cluster, a public person, a synthetic face). Metric losses come from
pytorch-metric-learning; the objective only chooses which tuples enter them.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn

from fedneg.config import ConfigError, TrainConfig

OWNER = 0


class LocalObjective(nn.Module):
    """A loss over a batch of embeddings (B, D) and labels (B,) with 0 = owner.

    Subclasses with parameters (a local classifier) expose them through `parameters()`,
    and the trainer optimises them beside the FE. `num_classes` is the number of distinct
    labels on the phone this round.
    """

    # True for objectives with a local classifier; they take the embedding size too.
    has_classifier: ClassVar[bool] = False

    def __init__(self, config: TrainConfig, num_classes: int) -> None:
        super().__init__()
        self.config = config
        self.num_classes = num_classes

    def positive_only(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Pull owner embeddings together: mean of (1 - cosine) over owner pairs.

        This is all a phone can do without negatives, and what makes positive-only federated
        training collapse every face onto one point.
        """
        owner = embeddings[labels == OWNER]
        if owner.shape[0] < 2:
            return embeddings.sum() * 0.0
        similarity = owner @ owner.T
        count = owner.shape[0]
        off_diagonal = similarity[~torch.eye(count, dtype=torch.bool, device=owner.device)]
        return (1.0 - off_diagonal).mean()


class TripletObjective(LocalObjective):
    """FaceNet triplet loss with owner anchors and positives against the round's negatives.

    Triplets come from a `TripletMarginMiner` (semi-hard by default) over the whole batch
    and are then restricted to those whose anchor is the owner. Distances are Euclidean
    between unit vectors, so `margin` is in [0, 2].
    """

    def __init__(self, config: TrainConfig, num_classes: int) -> None:
        super().__init__(config, num_classes)
        self.miner = miners.TripletMarginMiner(margin=config.margin, type_of_triplets=config.mining)
        self.loss = losses.TripletMarginLoss(margin=config.margin)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not bool((labels != OWNER).any()):
            return self.positive_only(embeddings, labels)
        anchors, positives, negatives = self.miner(embeddings, labels)
        keep = labels[anchors] == OWNER
        if not bool(keep.any()):
            return embeddings.sum() * 0.0
        return self.loss(embeddings, labels, (anchors[keep], positives[keep], negatives[keep]))


class ContrastiveObjective(LocalObjective):
    """Contrastive loss (Hadsell et al., 2006) over pairs that include an owner photo.

    Owner-owner pairs are pulled to distance 0; owner-negative pairs are pushed beyond
    `margin` (Euclidean distance between unit vectors).
    """

    def __init__(self, config: TrainConfig, num_classes: int) -> None:
        super().__init__(config, num_classes)
        self.loss = losses.ContrastiveLoss(pos_margin=0.0, neg_margin=config.margin)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not bool((labels != OWNER).any()):
            return self.positive_only(embeddings, labels)
        first_pos, second_pos, first_neg, second_neg = lmu.get_all_pairs_indices(labels)
        keep_pos = labels[first_pos] == OWNER
        keep_neg = (labels[first_neg] == OWNER) | (labels[second_neg] == OWNER)
        indices = (first_pos[keep_pos], second_pos[keep_pos], first_neg[keep_neg], second_neg[keep_neg])
        return self.loss(embeddings, labels, indices)


OBJECTIVES: dict[str, type[LocalObjective]] = {
    "triplet": TripletObjective,
    "contrastive": ContrastiveObjective,
}


def build_objective(config: TrainConfig, num_classes: int, embedding_dim: int = 128) -> LocalObjective:
    """Build the objective named by `config.loss` for a phone with `num_classes` labels.

    `embedding_dim` sizes the local classifier of the objectives that have one.
    """
    if config.loss not in OBJECTIVES:
        raise ConfigError(f"invalid value for train.loss: {config.loss!r}; allowed: {', '.join(OBJECTIVES)}")
    objective_class = OBJECTIVES[config.loss]
    if objective_class.has_classifier:
        return objective_class(config, num_classes, embedding_dim)  # type: ignore[call-arg]
    return objective_class(config, num_classes)


# Objectives with a local classifier (arcface, cosface, sphereface, center, fedaws) import
# this module and add themselves to OBJECTIVES, so they are imported last.
import fedneg.margin  # noqa: E402, F401
