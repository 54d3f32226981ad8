"""Pre-train the FE centrally on the public people: `python -m fedneg.pretrain`.

    python -m fedneg.pretrain --config configs/pretrain.yaml --output fe-public.safetensors --steps 200

Round design (c) starts federated training from this checkpoint (`model.init_checkpoint`)
and adapts it on the phones with on-device bystander clustering. Only public people are
used, by the same split and seed as the federated run, so no owner, bystander or
evaluation person is seen here. The loss is `train.loss` over all public people
(see `fedneg.centralized.build_central_loss`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from fedneg.centralized import load_labelled, save_fe, train_central
from fedneg.config import Config, ConfigError, load_config
from fedneg.model import build_model
from fedneg.runfolder import prepare_run

logger = logging.getLogger(__name__)


def pretrain(config: Config, output: Path, steps: int) -> Path:
    """Train a fresh FE for `steps` steps on the public people; write it to `output`.

    A JSON file beside it (`<output>.json`) records the config, steps and people count.

    Raises:
        ConfigError: the split has fewer than 2 public people.
    """
    prepared = prepare_run(config, write=False)
    if config.federation.num_cpus is not None:
        # Cells of a comparison run side by side; each keeps to its share of the cores.
        torch.set_num_threads(config.federation.num_cpus)
    public = prepared.split.public
    if len(public) < 2:
        raise ConfigError(f"invalid value for split.public: {config.split.public}; pre-training needs at least 2 public people")
    faces = load_labelled({name: prepared.identities[name] for name in public}, config.data.crop_size, config.data.image_size)
    logger.info("pre-training on %d photos of %d public people for %d steps", faces.images.shape[0], len(faces.people), steps)

    model = build_model(config.model, seed=config.seed)
    started = time.perf_counter()
    loss = train_central(model, faces, config.train, steps, seed=config.seed, use_augmentation=config.data.augment)

    output.parent.mkdir(parents=True, exist_ok=True)
    save_fe(model, output, config)
    record = {"steps": steps, "mean_loss": loss, "photos": int(faces.images.shape[0]), "people": len(faces.people), "seconds": round(time.perf_counter() - started, 1), "config": prepared.config.to_dict()}
    output.with_suffix(output.suffix + ".json").write_text(json.dumps(record, indent=1))
    logger.info("wrote %s (mean loss %.4f, %.0f s)", output, loss, record["seconds"])
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedneg.pretrain", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/pretrain.yaml", help="experiment YAML file; its split and seed choose the public people (default: %(default)s)")
    parser.add_argument("--output", required=True, help="safetensors file to write")
    parser.add_argument("--steps", type=int, default=200, help="optimiser steps of train.batch_size images (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.steps < 1:
        parser.error(f"invalid --steps {args.steps}: expected an integer >= 1")
    try:
        pretrain(load_config(args.config, args.overrides), Path(args.output), args.steps)
    except ConfigError as error:
        logger.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
