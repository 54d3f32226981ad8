"""Verification on evaluation people: pair protocols and an evaluator that embeds once per call.

Two protocols:
- `pairs`: balanced genuine/impostor pairs drawn by seed from the evaluation people;
- `lfw`: LFW's View 2 `pairs.txt`, keeping only pairs whose people are all evaluation
  people (never trained on), each pair keeping its original fold.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedneg.data import load_faces
from fedneg.metrics import VerificationMetrics, verification_metrics
from fedneg.model import embed

logger = logging.getLogger(__name__)


@dataclass
class PairProtocol:
    """Pairs of image paths with labels (1 genuine, 0 impostor) and fold ids."""

    name: str
    first: list[str]
    second: list[str]
    labels: np.ndarray
    folds: np.ndarray
    note: str = ""

    def __len__(self) -> int:
        return len(self.first)


def balanced_pairs(identities: dict[str, list[str]], people: list[str], count: int, folds: int, seed: int) -> PairProtocol:
    """Draw up to `count` genuine and exactly as many impostor pairs, without repeats.

    Genuine pairs pick a person uniformly among those with 2+ photos, then two photos, so a
    person with hundreds of photos does not dominate. Impostor pairs pick two people
    uniformly, then a photo of each. Pairs are dealt round-robin into `folds` folds.
    """
    rng = random.Random(f"{seed}-pairs")
    multi = [name for name in sorted(people) if len(identities[name]) >= 2]
    everyone = sorted(people)
    max_genuine = sum(len(identities[name]) * (len(identities[name]) - 1) // 2 for name in multi)
    target = min(count, max_genuine)

    genuine: set[tuple[str, str]] = set()
    attempts = 0
    while len(genuine) < target and attempts < 50 * count:
        attempts += 1
        person = rng.choice(multi)
        first, second = sorted(rng.sample(identities[person], 2))
        genuine.add((first, second))

    impostor: set[tuple[str, str]] = set()
    attempts = 0
    while len(impostor) < len(genuine) and attempts < 50 * count:
        attempts += 1
        person_a, person_b = rng.sample(everyone, 2)
        first, second = sorted((rng.choice(identities[person_a]), rng.choice(identities[person_b])))
        impostor.add((first, second))

    pairs = [(a, b, 1) for a, b in sorted(genuine)] + [(a, b, 0) for a, b in sorted(impostor)]
    rng.shuffle(pairs)
    return PairProtocol(
        name="pairs",
        first=[a for a, _, _ in pairs],
        second=[b for _, b, _ in pairs],
        labels=np.asarray([label for _, _, label in pairs], dtype=np.int64),
        folds=np.arange(len(pairs)) % folds,
        note=f"{len(genuine)} genuine + {len(impostor)} impostor pairs from {len(everyone)} evaluation people",
    )


def _lfw_image(root: Path, name: str, number: str) -> str:
    return str(root / name / f"{name}_{int(number):04d}.jpg")


def lfw_pairs(pairs_file: Path, root: Path, allowed_people: set[str]) -> PairProtocol:
    """Read LFW's `pairs.txt` (View 2) and keep the pairs whose people are all in `allowed_people`.

    File format: a header `folds pairs_per_class`, then per fold that many matched lines
    `name n1 n2` followed by as many mismatched lines `name1 n1 name2 n2`.

    Raises:
        ValueError: the file does not follow that format.
    """
    lines = [line.split() for line in pairs_file.read_text().splitlines() if line.strip()]
    try:
        num_folds, per_class = int(lines[0][0]), int(lines[0][1])
    except (IndexError, ValueError) as error:
        raise ValueError(f"{pairs_file}: the first line must be '<folds> <pairs per class>', got {lines[:1]}") from error

    first, second, labels, folds = [], [], [], []
    total = 0
    body = lines[1:]
    for index, fields in enumerate(body):
        fold = index // (2 * per_class)
        if len(fields) == 3:
            people = {fields[0]}
            pair = (_lfw_image(root, fields[0], fields[1]), _lfw_image(root, fields[0], fields[2]), 1)
        elif len(fields) == 4:
            people = {fields[0], fields[2]}
            pair = (_lfw_image(root, fields[0], fields[1]), _lfw_image(root, fields[2], fields[3]), 0)
        else:
            raise ValueError(f"{pairs_file}: line {index + 2} has {len(fields)} fields; expected 3 or 4")
        total += 1
        if people <= allowed_people:
            first.append(pair[0])
            second.append(pair[1])
            labels.append(pair[2])
            folds.append(fold)

    labels_array = np.asarray(labels, dtype=np.int64)
    note = (
        f"{len(labels)} of {total} pairs.txt pairs kept ({int(labels_array.sum())} genuine, "
        f"{int((labels_array == 0).sum())} impostor); the rest involve people trained on"
    )
    if num_folds * 2 * per_class != total:
        logger.warning("%s: header declares %d pairs, but the file contains %d", pairs_file, num_folds * 2 * per_class, total)
    return PairProtocol(name="lfw", first=first, second=second, labels=labels_array, folds=np.asarray(folds, dtype=np.int64), note=note)


@dataclass
class EvaluationResult:
    """Metrics per protocol plus the raw scores, kept for ROC plots."""

    metrics: dict[str, VerificationMetrics]
    scores: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]

    def as_record(self) -> dict[str, float]:
        record: dict[str, float] = {}
        for name, metrics in self.metrics.items():
            record.update(metrics.as_record(name))
        return record


class Evaluator:
    """Decodes every image the protocols need once, then scores any FE on them.

    Pairs with an unreadable image are dropped (logged with a count) so every protocol
    scores only real pairs.
    """

    def __init__(self, protocols: list[PairProtocol], crop_size: int, image_size: int, batch_size: int = 256) -> None:
        paths = sorted({path for protocol in protocols for path in protocol.first + protocol.second})
        images, kept = load_faces(paths, crop_size, image_size)
        self.images = images
        self.batch_size = batch_size
        index_of = {paths[i]: position for position, i in enumerate(kept)}

        self.protocols: list[tuple[PairProtocol, np.ndarray, np.ndarray, np.ndarray]] = []
        for protocol in protocols:
            readable = np.asarray([a in index_of and b in index_of for a, b in zip(protocol.first, protocol.second)], dtype=bool)
            if not readable.all():
                logger.warning("%s: dropped %d pair(s) with an unreadable image", protocol.name, int((~readable).sum()))
            labels = protocol.labels[readable]
            if len(labels) == 0 or labels.min() == labels.max():
                logger.warning("%s: no genuine or no impostor pairs remain, protocol skipped (%s)", protocol.name, protocol.note)
                continue
            first = np.asarray([index_of[a] for a, r in zip(protocol.first, readable) if r], dtype=np.int64)
            second = np.asarray([index_of[b] for b, r in zip(protocol.second, readable) if r], dtype=np.int64)
            self.protocols.append((protocol, first, second, np.flatnonzero(readable)))
            logger.info("evaluation protocol %s: %s", protocol.name, protocol.note)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> EvaluationResult:
        """Embed all images with `model` and score every protocol by cosine similarity."""
        embeddings = embed(model, self.images, self.batch_size).numpy()
        metrics, scores, labels = {}, {}, {}
        for protocol, first, second, readable in self.protocols:
            pair_scores = np.einsum("nd,nd->n", embeddings[first], embeddings[second])
            pair_labels = protocol.labels[readable]
            metrics[protocol.name] = verification_metrics(pair_scores, pair_labels, protocol.folds[readable])
            scores[protocol.name] = pair_scores
            labels[protocol.name] = pair_labels
        return EvaluationResult(metrics=metrics, scores=scores, labels=labels)
