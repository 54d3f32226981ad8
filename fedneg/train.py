"""Local training on one phone: assemble the labelled set, then optimise the FE. No Flower here."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from fedneg.config import TrainConfig
from fedneg.data import augment, normalize
from fedneg.losses import OWNER, LocalObjective, build_objective
from fedneg.negatives.base import NegativeSet

logger = logging.getLogger(__name__)


@dataclass
class TrainingSet:
    """A phone's labelled images for one round.

    Attributes:
        positives: uint8 (P, 3, S, S) owner photos (enrollment plus any mined owner photos).
        negatives: uint8 (N, 3, S, S) negative faces from every source.
        negative_labels: int64 (N,) labels in 1..K-1; label 0 is the owner.
    """

    positives: torch.Tensor
    negatives: torch.Tensor
    negative_labels: torch.Tensor

    @property
    def num_classes(self) -> int:
        return 1 + len(torch.unique(self.negative_labels))


@dataclass
class TrainResult:
    """Scalars that describe one local training run; they are all a phone reports."""

    loss: float
    steps: int
    images_seen: int
    seconds: float


def assemble_training_set(enrollment: torch.Tensor, negative_sets: list[NegativeSet]) -> TrainingSet:
    """Merge enrollment photos and every source's negatives into one labelled set.

    Each source's group ids are remapped to fresh consecutive labels, so groups of two
    sources never share a label and labels run 1..K-1 without gaps.
    """
    positives = [enrollment]
    negatives: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    next_label = OWNER + 1
    for negative_set in negative_sets:
        if negative_set.positives is not None and negative_set.positives.shape[0]:
            positives.append(negative_set.positives)
        if negative_set.images.shape[0] == 0:
            continue
        _, remapped = torch.unique(negative_set.groups, return_inverse=True)
        negatives.append(negative_set.images)
        labels.append(remapped.to(torch.int64) + next_label)
        next_label += int(remapped.max()) + 1

    size = enrollment.shape[-1]
    return TrainingSet(
        positives=torch.cat(positives),
        negatives=torch.cat(negatives) if negatives else torch.empty((0, 3, size, size), dtype=torch.uint8),
        negative_labels=torch.cat(labels) if labels else torch.empty((0,), dtype=torch.int64),
    )


def make_optimizer(parameters: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def train_local(
    model: nn.Module,
    training_set: TrainingSet,
    config: TrainConfig,
    seed: int,
    use_augmentation: bool = True,
    objective: LocalObjective | None = None,
) -> TrainResult:
    """Train `model` in place for `config.epochs` epochs over the phone's training set.

    Every batch contains all positives (up to half the batch, sampled when there are more) and
    fills the rest with negatives. An epoch is one pass over the negatives, or a single step
    when there are none. `seed` fixes batch order and augmentation.
    """
    generator = torch.Generator().manual_seed(seed)
    objective = objective or build_objective(config, training_set.num_classes, getattr(model, "embedding_dim", 128))
    parameters = list(model.parameters()) + list(objective.parameters())
    optimizer = make_optimizer(parameters, config)

    num_positive = training_set.positives.shape[0]
    num_negative = training_set.negatives.shape[0]
    positives_per_batch = min(num_positive, max(2, config.batch_size // 2))
    negatives_per_batch = max(1, config.batch_size - positives_per_batch)
    steps_per_epoch = max(1, math.ceil(num_negative / negatives_per_batch))

    model.train()
    objective.train()
    started = time.perf_counter()
    total_loss, steps, images_seen = 0.0, 0, 0
    for _ in range(config.epochs):
        negative_order = torch.randperm(num_negative, generator=generator)
        for step in range(steps_per_epoch):
            positive_index = torch.randperm(num_positive, generator=generator)[:positives_per_batch]
            negative_index = negative_order[step * negatives_per_batch : (step + 1) * negatives_per_batch]

            images = torch.cat([training_set.positives[positive_index], training_set.negatives[negative_index]])
            labels = torch.cat([torch.full((positive_index.numel(),), OWNER, dtype=torch.int64), training_set.negative_labels[negative_index]])
            if images.shape[0] < 2:
                continue
            if use_augmentation:
                images = augment(images, generator)

            embeddings = model(normalize(images))
            loss = objective(embeddings, labels)
            optimizer.zero_grad(set_to_none=True)
            if loss.requires_grad:
                loss.backward()
                optimizer.step()

            total_loss += float(loss.detach())
            steps += 1
            images_seen += images.shape[0]

    seconds = time.perf_counter() - started
    return TrainResult(loss=total_loss / max(steps, 1), steps=steps, images_seen=images_seen, seconds=seconds)
