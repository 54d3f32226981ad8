"""Face bank service: refresh a bank on a schedule, or once (for cron).

    python -m generator.serve --bank DIR --every 10m --count N --backend NAME [--model DIR] [--once]

Each refresh generates, filters and atomically publishes a new version, then prunes the
bank to the newest `--keep` versions. A refresh that fails (an exception, out of memory)
is logged and leaves the previous versions untouched. A process killed mid-write leaves
only a staging folder, which the next publish removes. SIGTERM or SIGINT stops the service after the
refresh in progress has been written. The service opens no network socket.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import threading
from types import FrameType

import numpy as np

from generator.backends import BACKENDS, load_backend
from generator.backends.base import FaceGenerator, GeneratorError
from generator.bank import FaceBank
from generator.quality import DEFAULT_DUPLICATE_COSINE, DEFAULT_FACE_THRESHOLD, Embedder, FaceDetector, build_embedder
from generator.refresh import RefreshSettings, refresh_bank

logger = logging.getLogger("generator.serve")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Parse `90`, `30s`, `10m`, `2h` or `1d` to seconds.

    Raises:
        argparse.ArgumentTypeError: not a positive duration.
    """
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}; use a positive number with an optional unit s, m, h or d, for example 10m")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m generator.serve", description="Keep a face bank fresh with synthetic faces.")
    parser.add_argument("--bank", required=True, help="face bank folder; created if missing")
    parser.add_argument("--backend", required=True, help=f"generator backend: {', '.join(sorted(BACKENDS))}")
    parser.add_argument("--model", default=None, help="model folder or hub id (ddpm: the output_dir of generator.train; dcgan: optional)")
    parser.add_argument("--count", type=int, default=1000, help="faces per version (default 1000)")
    parser.add_argument("--every", type=parse_duration, default=600.0, help="time between refreshes, for example 10m (default 10m)")
    parser.add_argument("--once", action="store_true", help="refresh once and exit (for cron)")
    parser.add_argument("--keep", type=int, default=5, help="versions kept after each refresh (default 5)")
    parser.add_argument("--image-size", type=int, default=64, help="side of the stored faces in px (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; each version derives its own (default 0)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps of the ddpm or pretrained backend")
    parser.add_argument("--batch-size", type=int, default=None, help="faces generated per batch; bounds peak memory")
    parser.add_argument("--prompt", default=None, help="text prompt of a text-to-image pretrained pipeline")
    parser.add_argument("--fe", default=None, help="FE weights (.safetensors or .npz, e.g. from fedneg.pretrain) as the embedding; default: MTCNN's O-Net")
    parser.add_argument("--no-face-check", action="store_true", help="skip the MTCNN face check (keeps the duplicate check)")
    parser.add_argument("--face-threshold", type=float, default=DEFAULT_FACE_THRESHOLD, help="minimum MTCNN face probability (default %(default)s)")
    parser.add_argument("--duplicate-cosine", type=float, default=DEFAULT_DUPLICATE_COSINE, help="embedding cosine at or above which a face is a near-duplicate (default %(default)s)")
    parser.add_argument("--experiment", default=None, help="fedneg experiment config whose public people are the kernel-distance reference (default: fedneg defaults)")
    parser.add_argument("--no-quality", action="store_true", help="skip the kernel distance to real public faces")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser


def real_public_features(experiment: str | None, embedder: Embedder, image_size: int) -> np.ndarray:
    """Raw features of the real public people's photos of the experiment's split (the kernel-distance reference)."""
    from fedneg.config import load_config
    from fedneg.data import load_faces, resolve_data_root, scan_identities
    from fedneg.split import split_people

    config = load_config(experiment)
    identities = scan_identities(resolve_data_root(config.data.root))
    split = split_people(identities, config)
    paths = [path for name in split.public for path in identities[name]]
    images, _ = load_faces(paths, config.data.crop_size, image_size)
    return embedder.features(images.numpy())


class StopFlag:
    """Set by SIGTERM or SIGINT; the loop checks it between refreshes and wakes from its wait."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> None:
        self.previous = {number: signal.signal(number, self._handle) for number in (signal.SIGTERM, signal.SIGINT)}

    def uninstall(self) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame: FrameType | None) -> None:
        logger.info("received %s; stopping after the current refresh", signal.Signals(number).name)
        self.event.set()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    for name in ("count", "keep", "image_size"):
        if getattr(args, name) < 1:
            logger.error("invalid --%s: %d; pass an integer >= 1", name.replace("_", "-"), getattr(args, name))
            return 2

    backend_settings = {key: value for key, value in (("steps", args.steps), ("batch_size", args.batch_size), ("prompt", args.prompt)) if value is not None}
    try:
        generator = load_backend(args.backend, args.model, **backend_settings)
        bank = FaceBank(args.bank, create=True)
        embedder = build_embedder(args.fe)
        detector = None if args.no_face_check else FaceDetector()
    except (GeneratorError, ValueError, TypeError) as error:
        logger.error("%s", error)
        return 2

    real_features = None
    if not args.no_quality:
        try:
            real_features = real_public_features(args.experiment, embedder, args.image_size)
        except (ValueError, OSError) as error:
            logger.error("kernel distance disabled: the real public faces could not be read: %s", error)

    settings = RefreshSettings(
        count=args.count,
        image_size=args.image_size,
        seed=args.seed,
        keep=args.keep,
        face_threshold=args.face_threshold,
        duplicate_cosine=args.duplicate_cosine,
    )
    stop = StopFlag()
    stop.install()
    logger.info("serving face bank %s: backend %s, %d faces every %.0f s%s", bank.root, args.backend, args.count, args.every, " (once)" if args.once else "")

    try:
        return serve_forever(args, bank, generator, settings, embedder, detector, real_features, stop)
    finally:
        stop.uninstall()


def serve_forever(
    args: argparse.Namespace,
    bank: FaceBank,
    generator: FaceGenerator,
    settings: RefreshSettings,
    embedder: Embedder,
    detector: FaceDetector | None,
    real_features: np.ndarray | None,
    stop: StopFlag,
) -> int:
    """Refresh until stopped (or once with `--once`); returns the process exit status."""
    failures = 0
    while not stop.event.is_set():
        try:
            result = refresh_bank(bank, generator, settings, embedder, detector, real_features)
        except Exception as error:  # noqa: BLE001 - a failed refresh must not stop the service
            failures += 1
            logger.exception("refresh failed (%d so far); the bank keeps its previous versions: %s", failures, error)
            if args.once:
                return 1
        else:
            manifest = result.version.manifest
            logger.info(
                "refresh: version %s, %d faces, %.1f s, dropped %d not-face and %d duplicate, diversity %.3f, kernel distance %s",
                result.version.version,
                manifest["count"],
                result.seconds,
                result.dropped_not_face,
                result.dropped_duplicate,
                manifest["diversity"]["mean_pairwise_cosine"],
                manifest["quality"].get("kernel_distance", "n/a"),
            )
        if args.once:
            break
        stop.event.wait(args.every)

    logger.info("face bank service stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
