"""Centralized training with labels: the upper bound of the comparison, in the same harness.

`python -m fedneg.centralized --config configs/X.yaml --run-dir DIR [key=value ...]` pools
every phone's photos (enrollment and gallery, each labelled with its true person) and, when
`negatives.sources` contains `public`, the public people's photos, then trains the same FE
with labels on one machine. It writes a run folder like `fedneg.simulate`'s: `config.yaml`,
`split.json`, `metrics.json`/`metrics.csv` with one record per round, `roc.png`,
`fe.safetensors`, `summary.json`, `run.log`.

Compute budget: a federated round trains `clients_per_round` phones for `train.epochs`
epochs each, which is about clients_per_round * epochs * (images per phone + negatives per
phone) images. One centralized "round" processes the same number of images, estimated
from the pooled data (`images_per_round`), so round r of both runs has seen about as many
images. Evaluation uses the same protocols, pairs and schedule as the federated run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pytorch_metric_learning import losses, miners, samplers
from safetensors.torch import load_file, save as save_safetensors
from torch import nn

from fedneg.config import Config, ConfigError, TrainConfig, load_config
from fedneg.data import augment, load_faces, normalize
from fedneg.margin import MARGIN_OBJECTIVES
from fedneg.model import build_model
from fedneg.runfolder import CHECKPOINT_FILE, LOG_FILE, ROC_FILE, SUMMARY_FILE, MetricsLog, PreparedRun, prepare_run, write_atomic
from fedneg.train import make_optimizer

logger = logging.getLogger(__name__)

# Photos per person in a centralized batch, so every batch contains positive pairs.
PHOTOS_PER_PERSON = 4


@dataclass
class LabelledFaces:
    """uint8 images (N, 3, S, S) with int64 person labels (N,) in 0..C-1."""

    images: torch.Tensor
    labels: torch.Tensor
    people: list[str]


def load_labelled(paths_by_person: dict[str, list[str]], crop_size: int, image_size: int) -> LabelledFaces:
    """Decode every listed photo; a person whose photos all fail to read is left out."""
    images: list[torch.Tensor] = []
    labels: list[int] = []
    people: list[str] = []
    for name in sorted(paths_by_person):
        decoded, _ = load_faces(paths_by_person[name], crop_size, image_size)
        if decoded.shape[0] == 0:
            continue
        images.append(decoded)
        labels.extend([len(people)] * decoded.shape[0])
        people.append(name)
    if not images:
        raise ValueError("no readable photo among the pooled people; check data.root")
    return LabelledFaces(images=torch.cat(images), labels=torch.tensor(labels, dtype=torch.int64), people=people)


def pooled_phone_data(prepared: PreparedRun) -> dict[str, list[str]]:
    """Map each person to the photo paths the federation holds: all phones, plus public faces.

    Public people are included only when `negatives.sources` contains `public`, so the
    upper bound trains on exactly the data the federated run can use.
    """
    paths: dict[str, list[str]] = {}
    for phone in prepared.phones:
        paths.setdefault(phone.owner, []).extend(phone.enrollment)
        for path, identity in zip(phone.gallery, phone.gallery_identities, strict=True):
            paths.setdefault(identity, []).append(path)
    if "public" in prepared.config.negatives.sources:
        for name in prepared.split.public:
            paths.setdefault(name, []).extend(prepared.identities[name])
    return {name: sorted(set(items)) for name, items in paths.items()}


def build_central_loss(config: TrainConfig, num_classes: int, embedding_dim: int) -> nn.Module:
    """Build the configured loss over all people at once (no owner restriction).

    Margin losses get one classifier column per person. Triplet and contrastive use the
    library losses with all labels. FedAwS is a federated method, so it falls back to ArcFace.
    Returns a module mapping (embeddings (B, D), labels (B,)) to a scalar.
    """
    if config.loss in MARGIN_OBJECTIVES and config.loss != "fedaws":
        return MARGIN_OBJECTIVES[config.loss](config, num_classes, embedding_dim)
    if config.loss == "fedaws":
        return MARGIN_OBJECTIVES["arcface"](config, num_classes, embedding_dim)
    if config.loss == "contrastive":
        return _MinedLoss(losses.ContrastiveLoss(pos_margin=0.0, neg_margin=config.margin), None)
    return _MinedLoss(losses.TripletMarginLoss(margin=config.margin), miners.TripletMarginMiner(margin=config.margin, type_of_triplets=config.mining))


class _MinedLoss(nn.Module):
    def __init__(self, loss: nn.Module, miner: nn.Module | None) -> None:
        super().__init__()
        self.loss = loss
        self.miner = miner

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        indices = self.miner(embeddings, labels) if self.miner is not None else None
        return self.loss(embeddings, labels, indices)


def train_central(
    model: nn.Module,
    faces: LabelledFaces,
    config: TrainConfig,
    steps: int,
    seed: int,
    loss: nn.Module | None = None,
    use_augmentation: bool = True,
) -> float:
    """Train `model` in place for `steps` optimiser steps on labelled faces; return the mean loss.

    Batches of `config.batch_size` images hold `PHOTOS_PER_PERSON` photos of each sampled
    person (pytorch-metric-learning's `MPerClassSampler`, with repeats for people with
    fewer photos). Pass the same `loss` across calls to keep a classifier between them.
    """
    generator = torch.Generator().manual_seed(seed)
    num_classes = len(faces.people)
    loss = loss if loss is not None else build_central_loss(config, num_classes, getattr(model, "embedding_dim", 128))
    optimizer = make_optimizer(list(model.parameters()) + list(loss.parameters()), config)

    batch_size = max(PHOTOS_PER_PERSON * 2, config.batch_size - config.batch_size % PHOTOS_PER_PERSON)
    torch.manual_seed(seed)
    sampler = samplers.MPerClassSampler(faces.labels.numpy(), m=PHOTOS_PER_PERSON, batch_size=batch_size if num_classes * PHOTOS_PER_PERSON >= batch_size else None, length_before_new_iter=max(batch_size, steps * batch_size))
    order = torch.tensor(list(iter(sampler)), dtype=torch.int64)

    model.train()
    loss.train()
    total = 0.0
    for step in range(steps):
        index = order[(step * batch_size) % max(1, len(order)) :][:batch_size]
        images = faces.images[index]
        if use_augmentation:
            images = augment(images, generator)
        value = loss(model(normalize(images)), faces.labels[index])
        optimizer.zero_grad(set_to_none=True)
        if value.requires_grad:
            value.backward()
            optimizer.step()
        total += float(value.detach())
    return total / max(steps, 1)


def images_per_round(prepared: PreparedRun) -> int:
    """Estimate the images a federated round trains on (see the module docstring)."""
    config = prepared.config
    phone_images = np.mean([len(phone.enrollment) + len(phone.gallery) for phone in prepared.phones])
    public = config.negatives.public.per_round if "public" in config.negatives.sources else 0
    return int(math.ceil(config.federation.clients_per_round * config.train.epochs * (phone_images + public)))


def save_fe(model: nn.Module, path: Path, config: Config) -> None:
    """Write the FE state as safetensors, with the model settings as metadata."""
    state = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    metadata = {"arch": config.model.arch, "width": str(config.model.width), "embedding_dim": str(config.model.embedding_dim)}
    write_atomic(path, save_safetensors(state, metadata=metadata))


def load_fe_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load FE weights from a safetensors file written by `save_fe` (or a run's fe.safetensors).

    Raises:
        ConfigError: the file is missing or its tensors do not match the model's settings.
    """
    checkpoint = Path(path)
    if not checkpoint.is_file():
        raise ConfigError(f"model.init_checkpoint not found: {checkpoint}; run python -m fedneg.pretrain first")
    try:
        model.load_state_dict(load_file(str(checkpoint)))
    except RuntimeError as error:
        raise ConfigError(f"model.init_checkpoint {checkpoint} does not match the model: {error}; check model.width and model.embedding_dim") from error


def run_centralized(config: Config, run_dir: Path | None = None) -> Path:
    """Train centrally with labels on the pooled phone data; write a run folder; return it."""
    from fedneg.server.run import build_protocols, plot_roc
    from fedneg.evaluation import Evaluator

    prepared = prepare_run(config, run_dir)
    config = prepared.config
    if config.federation.num_cpus is not None:
        # Cells of a comparison run side by side; each keeps to its share of the cores.
        torch.set_num_threads(config.federation.num_cpus)
    faces = load_labelled(pooled_phone_data(prepared), config.data.crop_size, config.data.image_size)
    budget = images_per_round(prepared)
    steps_per_round = max(1, math.ceil(budget / config.train.batch_size))
    logger.info("centralized: %d images of %d people; %d steps of %d images per round", faces.images.shape[0], len(faces.people), steps_per_round, config.train.batch_size)

    model = build_model(config.model, seed=config.seed)
    if config.model.init_checkpoint:
        load_fe_checkpoint(model, config.model.init_checkpoint)
    loss = build_central_loss(config.train, len(faces.people), config.model.embedding_dim)
    evaluator = Evaluator(build_protocols(prepared), config.data.crop_size, config.data.image_size, config.eval.batch_size)
    metrics_log = MetricsLog(prepared.run_dir)

    started = time.perf_counter()
    evaluations = {}
    for server_round in range(config.federation.rounds + 1):
        record: dict[str, float | int | str | bool] = {"round": server_round}
        if server_round > 0:
            record["train_loss"] = train_central(model, faces, config.train, steps_per_round, seed=config.seed * 1009 + server_round, loss=loss, use_augmentation=config.data.augment)
            record["train_images"] = float(steps_per_round * config.train.batch_size)
        if server_round == 0 or server_round % config.eval.every == 0 or server_round == config.federation.rounds:
            evaluations[server_round] = evaluator.evaluate(model)
            record.update(evaluations[server_round].as_record())
        record["elapsed_seconds"] = round(time.perf_counter() - started, 3)
        metrics_log.append(record)
        logger.info("centralized round %d/%d: %s", server_round, config.federation.rounds, {key: value for key, value in record.items() if key.endswith("roc_auc") or key == "train_loss"})

    save_fe(model, prepared.run_dir / CHECKPOINT_FILE, config)
    first, last = min(evaluations), max(evaluations)
    plot_roc({f"round {first}": evaluations[first], f"round {last}": evaluations[last]}, prepared.run_dir / ROC_FILE)
    summary = {"rounds": config.federation.rounds, "seconds": round(time.perf_counter() - started, 1), "centralized": True, f"round_{first}": evaluations[first].as_record(), f"round_{last}": evaluations[last].as_record()}
    write_atomic(prepared.run_dir / SUMMARY_FILE, json.dumps(summary, indent=1))
    return prepared.run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedneg.centralized", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.yaml", help="experiment YAML file (default: %(default)s)")
    parser.add_argument("--run-dir", default=None, help="run folder (default: output.runs_dir/<config name>-<timestamp>)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        config = load_config(args.config, args.overrides)
        run_dir = Path(args.run_dir) if args.run_dir else None
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            logging.getLogger().addHandler(logging.FileHandler(run_dir / LOG_FILE))
        run_dir = run_centralized(config, run_dir)
    except ConfigError as error:
        logger.error("%s", error)
        return 2
    logger.info("results in %s", run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
