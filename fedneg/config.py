"""Experiment configuration: typed sections, YAML loading, `key=value` overrides, validation.

A config is a YAML file whose top-level keys are the sections below. Every value has a
default, so a YAML file lists only what it changes. Validation happens once, before any
data is read or any process is started, and raises `ConfigError` naming the key, the value
and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DATA_ROOT_ENV = "FEDNEG_DATA_ROOT"

TRIPLET_MINING = ("semihard", "hard", "easy", "all")
OPTIMIZERS = ("sgd", "adam")
CLASSIFIER_DESIGNS = ("fresh", "persistent")
STRATEGIES = ("fedavg", "fedaws")
NOISE_POLICIES = ("drop", "singleton")


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key, the value and the fix."""


@dataclass
class DataConfig:
    """Location of the identity-folder data set and image preprocessing."""

    root: str | None = None  # identity folders <root>/<Name>/<image>; None: $FEDNEG_DATA_ROOT
    pairs_file: str | None = None  # LFW pairs.txt; None: <root>/../pairs.txt when present
    image_size: int = 64  # model input side, pixels
    crop_size: int = 128  # centre crop side taken from the stored image before resizing, pixels
    augment: bool = True  # random flip and small crop jitter during local training


@dataclass
class SplitConfig:
    """Identity-disjoint split of the people into owners, bystanders, public and evaluation."""

    owners: int = 24  # phones; each owner needs enrollment + owner_gallery photos
    bystanders: int = 200
    public: int = 300
    evaluation: int = 0  # 0: every person not used elsewhere


@dataclass
class PhoneConfig:
    """Contents of one simulated phone: enrollment photos and a mixed gallery."""

    enrollment: int = 3  # labelled owner photos taken at enrollment
    owner_gallery: int = 7  # further owner photos in the camera roll (unlabelled)
    friends: int = 3  # bystanders that recur in the gallery
    friend_photos: int = 4  # maximum photos of each friend (fewer if the person has fewer)
    strangers: int = 4  # bystanders that appear once


@dataclass
class ModelConfig:
    """The face feature extractor (FE)."""

    arch: str = "mobilenet_v2"
    width: float = 0.5  # MobileNetV2 width multiplier
    embedding_dim: int = 128
    norm: str = "group"  # "group" (GroupNorm, no running statistics) or "batch" (BatchNorm)
    # FE weights (safetensors from `python -m fedneg.pretrain`) to start round 1 from; None: random init.
    init_checkpoint: str | None = None


@dataclass
class BystanderConfig:
    """On-phone HDBSCAN mining of bystander negatives from the gallery."""

    min_cluster_size: int = 2
    min_samples: int | None = 1
    noise: str = "drop"  # "drop" or "singleton" (each noise point a negative of its own)
    owner_positives: bool = True  # add the mined owner cluster to the positives


@dataclass
class PublicConfig:
    """Server-held real faces of the public people, shipped each round."""

    per_round: int = 128  # faces sampled per round (with their person as group)


@dataclass
class NegativesConfig:
    """Negative sources used in each round, and their settings."""

    sources: list[str] = field(default_factory=lambda: ["bystander", "public"])
    bystander: BystanderConfig = field(default_factory=BystanderConfig)
    public: PublicConfig = field(default_factory=PublicConfig)
    # Settings of plugin sources, keyed by source name, passed to them unchanged.
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class ClassifierConfig:
    """Local classifier of the margin-softmax losses (arcface, cosface, sphereface, center) and FedAwS."""

    scale: float = 30.0  # logit scale s applied to cosine similarities
    # None: the loss's default (arcface 0.5 rad, cosface 0.35, sphereface 4 as an integer
    # angle multiplier, fedaws 0.9 as the positive cosine margin); center loss ignores it.
    margin: float | None = None
    center_weight: float = 0.1  # weight of the center term 0.5 * mean ||x - c_y||^2
    spreadout_margin: float = 1.5  # FedAwS: unit class embeddings closer than this are pushed apart
    spreadout_lr: float = 0.1  # FedAwS: server step size on the spreadout penalty


@dataclass
class TrainConfig:
    """Local training on a phone."""

    loss: str = "triplet"
    margin: float = 0.2  # triplet margin, or negative margin of the contrastive loss
    mining: str = "semihard"
    epochs: int = 3
    batch_size: int = 48
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)


@dataclass
class FederationConfig:
    """Rounds, client sampling and simulation resources."""

    rounds: int = 12
    clients_per_round: int = 8
    client_cpus: float = 1.0  # Ray CPUs per client; 2 cores give 2 parallel clients
    num_cpus: int | None = None  # CPUs Ray may use; None: all cores
    round_timeout: float = 3600.0  # seconds the server waits for replies each round
    # "fresh": a new local classifier every round, and only the FE goes back.
    # "persistent": the same phones train every round and the owner's classifier column
    # travels with the FE, so the server stores a face template per phone and can tell
    # phones apart.
    classifier: str = "fresh"
    strategy: str = "fedavg"  # "fedaws": FedAvg plus the server's spreadout step on class embeddings


@dataclass
class EvalConfig:
    """Verification on evaluation people."""

    every: int = 3  # evaluate at round 0, every `every` rounds, and after the last round
    pairs: int = 3000  # genuine pairs and, separately, impostor pairs
    folds: int = 10
    lfw_pairs: bool = True  # also run LFW's pairs.txt restricted to untrained people
    batch_size: int = 256


@dataclass
class OutputConfig:
    """Location and name of the run folder."""

    runs_dir: str = "runs"
    name: str | None = None  # run folder name; None: <config name>-<timestamp>


@dataclass
class Config:
    """One experiment."""

    name: str = "default"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    phone: PhoneConfig = field(default_factory=PhoneConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    negatives: NegativesConfig = field(default_factory=NegativesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Build dataclass `cls` from `values`, rejecting unknown keys by their dotted name."""
    if not isinstance(values, dict):
        section = prefix.rstrip(".") or "config"
        raise ConfigError(f"invalid value for {section}: {values!r}; expected a section of keys, for example {section}: {{...}} in YAML")

    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in known:
            allowed = ", ".join(sorted(known))
            raise ConfigError(f"unknown config key {dotted!r}; allowed keys here: {allowed}")

        default = known[key].default_factory() if known[key].default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        if dataclasses.is_dataclass(default) and key != "plugins":
            kwargs[key] = _build(type(default), value or {}, f"{dotted}.")
        else:
            kwargs[key] = value
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build and validate a `Config` from nested plain values (as read from YAML or JSON)."""
    config = _build(Config, values, "")
    validate(config)
    return config


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse one `a.b.c=value` override; the value is read as YAML (`8`, `0.1`, `[a, b]`)."""
    if "=" not in text:
        raise ConfigError(f"invalid override {text!r}: expected key=value, for example train.epochs=1")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"invalid override {text!r}: the key before '=' is empty")
    return key.split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of nested `values` with each `key=value` override applied."""
    result = json.loads(json.dumps(values))
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"invalid override {text!r}: {part!r} is not a section")
        node[path[-1]] = value
    return result


def load_config(path: str | os.PathLike[str] | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (None: all defaults), apply overrides, validate.

    Raises:
        ConfigError: the file is missing or not YAML, or a value is invalid.
    """
    values: dict[str, Any] = {}
    if path is not None:
        config_path = Path(path)
        if not config_path.is_file():
            raise ConfigError(f"config file not found: {config_path}; pass an existing YAML file, for example configs/default.yaml")
        try:
            values = yaml.safe_load(config_path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {config_path} is not valid YAML: {error}") from error
        values.setdefault("name", config_path.stem)
    return config_from_dict(apply_overrides(values, overrides or []))


def _require(condition: bool, key: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ConfigError(f"invalid value for {key}: {value!r}; allowed: {allowed}")


def _require_choice(key: str, value: Any, choices: tuple[str, ...] | list[str]) -> None:
    _require(value in choices, key, value, ", ".join(choices))


def _require_int(key: str, value: Any, minimum: int) -> None:
    _require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum, key, value, f"an integer >= {minimum}")


def _require_number(key: str, value: Any, minimum: float, strict: bool = False) -> None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = is_number and (value > minimum if strict else value >= minimum)
    _require(ok, key, value, f"a number {'>' if strict else '>='} {minimum}")


def validate(config: Config) -> None:
    """Check every value; raise `ConfigError` on the first invalid one."""
    # Local imports: both modules import this one. Plugins add source names through the
    # `fedneg.negative_sources` entry point group, so the check reads the registry.
    from fedneg.losses import OBJECTIVES
    from fedneg.negatives import available_sources, source_class

    _require_int("seed", config.seed, 0)

    _require_int("data.image_size", config.data.image_size, 32)
    _require_int("data.crop_size", config.data.crop_size, config.data.image_size)

    _require_int("split.owners", config.split.owners, 2)
    _require_int("split.bystanders", config.split.bystanders, 0)
    _require_int("split.public", config.split.public, 0)
    _require_int("split.evaluation", config.split.evaluation, 0)

    _require_int("phone.enrollment", config.phone.enrollment, 2)
    _require_int("phone.owner_gallery", config.phone.owner_gallery, 0)
    _require_int("phone.friends", config.phone.friends, 0)
    _require_int("phone.friend_photos", config.phone.friend_photos, 1)
    _require_int("phone.strangers", config.phone.strangers, 0)

    _require_choice("model.arch", config.model.arch, ("mobilenet_v2",))
    _require_number("model.width", config.model.width, 0.0, strict=True)
    _require_int("model.embedding_dim", config.model.embedding_dim, 2)
    _require_choice("model.norm", config.model.norm, ("group", "batch"))
    if config.model.init_checkpoint is not None:
        _require(Path(config.model.init_checkpoint).is_file(), "model.init_checkpoint", config.model.init_checkpoint, "an existing safetensors file, for example one written by python -m fedneg.pretrain")

    sources = config.negatives.sources
    _require(isinstance(sources, list) and len(sources) > 0, "negatives.sources", sources, "a non-empty list, for example [bystander, public] or [none]")
    registered = available_sources()
    for name in sources:
        _require_choice("negatives.sources", name, registered)
        source_class(name)  # a plugin that fails to import is reported now, not mid-run
    _require("none" not in sources or len(sources) == 1, "negatives.sources", sources, "[none] alone, or a list of other sources")
    _require(len(set(sources)) == len(sources), "negatives.sources", sources, "each source at most once")
    _require_int("negatives.bystander.min_cluster_size", config.negatives.bystander.min_cluster_size, 2)
    if config.negatives.bystander.min_samples is not None:
        _require_int("negatives.bystander.min_samples", config.negatives.bystander.min_samples, 1)
    _require_choice("negatives.bystander.noise", config.negatives.bystander.noise, NOISE_POLICIES)
    _require_int("negatives.public.per_round", config.negatives.public.per_round, 1)
    if "public" in sources:
        _require(config.split.public >= 2, "split.public", config.split.public, "at least 2 public people when negatives.sources contains public")

    _require_choice("train.loss", config.train.loss, list(OBJECTIVES))
    _require_number("train.margin", config.train.margin, 0.0, strict=True)
    _require_choice("train.mining", config.train.mining, TRIPLET_MINING)
    _require_int("train.epochs", config.train.epochs, 1)
    _require_int("train.batch_size", config.train.batch_size, 4)
    _require_choice("train.optimizer", config.train.optimizer, OPTIMIZERS)
    _require_number("train.lr", config.train.lr, 0.0, strict=True)
    _require_number("train.momentum", config.train.momentum, 0.0)
    _require_number("train.weight_decay", config.train.weight_decay, 0.0)
    classifier = config.train.classifier
    _require_number("train.classifier.scale", classifier.scale, 0.0, strict=True)
    if classifier.margin is not None:
        _require_number("train.classifier.margin", classifier.margin, 0.0)
    _require_number("train.classifier.center_weight", classifier.center_weight, 0.0)
    _require_number("train.classifier.spreadout_margin", classifier.spreadout_margin, 0.0)
    _require_number("train.classifier.spreadout_lr", classifier.spreadout_lr, 0.0)

    _require_int("federation.rounds", config.federation.rounds, 1)
    _require_int("federation.clients_per_round", config.federation.clients_per_round, 1)
    _require(config.federation.clients_per_round <= config.split.owners, "federation.clients_per_round", config.federation.clients_per_round, f"at most split.owners ({config.split.owners})")
    _require_number("federation.client_cpus", config.federation.client_cpus, 0.0, strict=True)
    if config.federation.num_cpus is not None:
        _require_int("federation.num_cpus", config.federation.num_cpus, 1)
    _require_number("federation.round_timeout", config.federation.round_timeout, 0.0, strict=True)
    _require_choice("federation.classifier", config.federation.classifier, CLASSIFIER_DESIGNS)
    _require_choice("federation.strategy", config.federation.strategy, STRATEGIES)
    has_classifier = OBJECTIVES[config.train.loss].has_classifier
    if config.federation.classifier == "persistent":
        _require(has_classifier, "federation.classifier", "persistent", f"fresh, because train.loss={config.train.loss} has no classifier to persist")
    if config.federation.strategy == "fedaws" or config.train.loss == "fedaws":
        _require(config.train.loss == "fedaws", "train.loss", config.train.loss, "fedaws when federation.strategy=fedaws")
        _require(config.federation.strategy == "fedaws", "federation.strategy", config.federation.strategy, "fedaws when train.loss=fedaws")
        _require(config.federation.classifier == "persistent", "federation.classifier", config.federation.classifier, "persistent with FedAwS, because each phone keeps its class embedding")

    _require_int("eval.every", config.eval.every, 1)
    _require_int("eval.pairs", config.eval.pairs, 10)
    _require_int("eval.folds", config.eval.folds, 2)
    _require_int("eval.batch_size", config.eval.batch_size, 1)
