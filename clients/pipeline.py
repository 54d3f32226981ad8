"""On-device pipeline for one round: load the phone's photos, gather negatives, train the FE.

No Flower import here: the ClientApp (`clients.client_app`) is a thin wrapper, and this
module runs unchanged in tests and benchmarks.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fedneg.config import Config
from fedneg.data import PhoneImages, load_faces
from fedneg.model import build_model
from fedneg.negatives import SourcePayload, build_sources
from fedneg.runfolder import prepare_run
from fedneg.split import Phone
from fedneg.losses import build_objective
from fedneg.train import TrainResult, assemble_training_set, train_local

logger = logging.getLogger(__name__)


@dataclass
class RoundOutcome:
    """Reply of one phone: the FE state and scalar metrics.

    With `federation.classifier=persistent`, the phone's classifier state is added too.
    """

    state: dict[str, torch.Tensor]
    metrics: dict[str, float]
    classifier: dict[str, np.ndarray] = field(default_factory=dict)


# Phones per split, cached for the life of the process (a Ray actor serves many rounds).
_PHONE_CACHE: dict[str, list[Phone]] = {}


def _phones(config: Config) -> list[Phone]:
    """Build (once per process) every phone of the split that `config` describes."""
    values = config.to_dict()
    key = json.dumps({part: values[part] for part in ("data", "split", "phone", "seed")}, sort_keys=True)
    if key not in _PHONE_CACHE:
        _PHONE_CACHE.clear()
        _PHONE_CACHE[key] = prepare_run(copy.deepcopy(config), write=False).phones
    return _PHONE_CACHE[key]


def load_phone(config: Config, phone_id: int) -> PhoneImages:
    """Decode phone `phone_id`'s enrollment and gallery photos (unreadable ones are skipped).

    Raises:
        ValueError: the phone has no readable enrollment photo, so it cannot train.
    """
    phones = _phones(config)
    if not 0 <= phone_id < len(phones):
        raise ValueError(f"phone id {phone_id} is out of range: this split has {len(phones)} phones")
    phone = phones[phone_id]

    size, crop = config.data.image_size, config.data.crop_size
    enrollment, enrollment_kept = load_faces(phone.enrollment, crop, size)
    gallery, kept = load_faces(phone.gallery, crop, size)
    skipped = len(phone.enrollment) - len(enrollment_kept) + len(phone.gallery) - len(kept)
    if enrollment.shape[0] == 0:
        raise ValueError(f"phone {phone_id} ({phone.owner}): no readable enrollment photo; check the files under data.root")
    return PhoneImages(
        phone_id=phone_id,
        enrollment=enrollment,
        gallery=gallery,
        gallery_identities=[phone.gallery_identities[index] for index in kept],
        owner=phone.owner,
        skipped_images=skipped,
    )


def run_round(
    config: Config,
    phone: PhoneImages,
    model: nn.Module,
    payloads: dict[str, SourcePayload | None],
    server_round: int,
    classifier_state: dict[str, np.ndarray] | None = None,
) -> tuple[TrainResult, dict[str, float]]:
    """Gather negatives from every configured source and train `model` in place.

    Returns the training result and the sources' metrics (mining quality), prefixed by
    nothing: source metric names are unique across the built-in sources.

    With `federation.classifier=persistent`, `classifier_state` is read into the local
    classifier before training (when not empty) and replaced by its state after training.
    """
    seed = config.seed * 1_000_003 + server_round * 1_009 + phone.phone_id
    rng = np.random.default_rng(seed)
    negative_sets = []
    source_metrics: dict[str, float] = {}
    for source in build_sources(config):
        negative_set = source.phone_negatives(payloads.get(source.name), phone, model, rng)
        negative_sets.append(negative_set)
        source_metrics.update(negative_set.metrics)
        source_metrics[f"negatives_{source.name}"] = float(negative_set.images.shape[0])

    training_set = assemble_training_set(phone.enrollment, negative_sets)
    objective = build_objective(config.train, training_set.num_classes, config.model.embedding_dim)
    persistent = config.federation.classifier == "persistent" and classifier_state is not None
    if persistent and classifier_state:
        objective.import_state(classifier_state)
    result = train_local(model, training_set, config.train, seed=seed, use_augmentation=config.data.augment, objective=objective)
    if persistent:
        classifier_state.clear()
        classifier_state.update(objective.export_state())
    source_metrics["positives"] = float(training_set.positives.shape[0])
    source_metrics["negatives"] = float(training_set.negatives.shape[0])
    return result, source_metrics


def train_phone(
    config: Config,
    phone_id: int,
    state: dict[str, torch.Tensor],
    payloads: dict[str, SourcePayload | None],
    server_round: int,
    classifier_state: dict[str, np.ndarray] | None = None,
) -> RoundOutcome:
    """Run one round on phone `phone_id`, starting from FE weights `state`.

    `classifier_state` is the phone's persistent classifier from its previous round (empty
    or None on its first round); it is used only with `federation.classifier=persistent`.
    """
    phone = load_phone(config, phone_id)
    model = build_model(config.model)
    model.load_state_dict(state)

    classifier = dict(classifier_state or {})
    result, source_metrics = run_round(config, phone, model, payloads, server_round, classifier)
    metrics = {
        "train_loss": result.loss,
        "train_steps": float(result.steps),
        "train_images": float(result.images_seen),
        "train_seconds": result.seconds,
        "skipped_images": float(phone.skipped_images),
        **source_metrics,
    }
    logger.debug("round %d phone %d: %s", server_round, phone_id, metrics)
    kept_classifier = classifier if config.federation.classifier == "persistent" else {}
    return RoundOutcome(state=model.state_dict(), metrics=metrics, classifier=kept_classifier)
