"""Benchmark the face generator backends at 64 px: speed, peak memory and sample quality.

    python benchmarks/generator_backends.py --ddpm-model /work/gen_runs/ddpm --count 200 --threads 2

Each backend runs in a fresh child process, so its peak resident set size (ru_maxrss) is its
own: model, sampling and the embedding pass included. Per backend the table reports:
- faces/s: `generate(count, 64, seed)` after a 2-face warm-up, wall clock;
- peak RSS: the child's maximum resident set size, MiB;
- face rate: share of faces in which MTCNN finds a face with probability >= 0.9;
- diversity: mean pairwise cosine of the faces' embeddings (lower is more diverse);
- kernel distance: KID statistic between embeddings of the faces and of the real public
  faces (lower is closer). Both use MTCNN's O-Net features (`generator.quality`); the row
  `real` (one photo each of evaluation people) gives the same figures for real faces.

The `pretrained` row uses a tiny, randomly initialised Stable Diffusion pipeline (no weights
can be downloaded here), so its speed is a lower bound on overhead, not a real SD model's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

SIZE = 64
ROWS = ("ddpm", "dcgan", "pretrained-tiny", "real")


def public_and_evaluation_faces(count: int):
    """Real faces: all public people's photos (the reference) and `count` evaluation people's photos."""
    from fedneg.config import Config
    from fedneg.data import load_faces, resolve_data_root, scan_identities
    from fedneg.split import split_people

    config = Config()
    identities = scan_identities(resolve_data_root(None))
    split = split_people(identities, config)
    public_paths = [path for name in split.public for path in identities[name]]
    evaluation_paths = [identities[name][0] for name in split.evaluation[:count]]
    public, _ = load_faces(public_paths, config.data.crop_size, SIZE)
    evaluation, _ = load_faces(evaluation_paths, config.data.crop_size, SIZE)
    return public.numpy(), evaluation.numpy()


def measure(row: str, count: int, ddpm_model: str | None, ddpm_steps: int) -> dict:
    """Generate `count` faces with one backend (in this process) and score them."""
    import numpy as np

    from generator.backends import load_backend
    from generator.quality import FaceDetector, build_embedder, kernel_distance, mean_pairwise_cosine

    public, evaluation = public_and_evaluation_faces(count)
    result: dict = {"row": row, "count": count}

    if row == "real":
        faces = evaluation
        result["faces_per_second"] = None
    else:
        if row == "ddpm":
            generator = load_backend("ddpm", ddpm_model, steps=ddpm_steps)
        elif row == "dcgan":
            generator = load_backend("dcgan", None)
        else:
            from generator.testing import save_tiny_text_to_image_pipeline

            folder = save_tiny_text_to_image_pipeline(Path(tempfile.mkdtemp()) / "tiny-sd")
            generator = load_backend("pretrained", str(folder), steps=25, batch_size=16)
        generator.generate(2, SIZE, seed=123)
        started = time.perf_counter()
        faces = generator.generate(count, SIZE, seed=0)
        seconds = time.perf_counter() - started
        result.update(faces_per_second=count / seconds, seconds=seconds, settings=generator.settings())

    embedder = build_embedder()
    probabilities = FaceDetector().face_probabilities(faces)
    result.update(
        face_rate=float((probabilities >= 0.9).mean()),
        diversity=mean_pairwise_cosine(embedder(faces)),
        kernel_distance=kernel_distance(embedder.features(faces), embedder.features(public)),
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description="Benchmark the face generator backends at 64 px.")
    parser.add_argument("--count", type=int, default=200, help="faces generated per backend (default 200)")
    parser.add_argument("--ddpm-model", default=None, help="ddpm training output folder; the ddpm row is skipped without it")
    parser.add_argument("--ddpm-steps", type=int, default=50, help="DDIM steps of the ddpm row (default 50)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per child (default 2)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows to run (default {','.join(ROWS)})")
    parser.add_argument("--out", default=None, help="also write the results as JSON to this file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(measure(args.worker, args.count, args.ddpm_model, args.ddpm_steps)))
        return 0

    results = []
    for row in args.rows.split(","):
        if row == "ddpm" and not args.ddpm_model:
            print("skipping ddpm: pass --ddpm-model <generator.train output_dir>", file=sys.stderr)
            continue
        command = [sys.executable, __file__, "--worker", row, "--count", str(args.count), "--threads", str(args.threads), "--ddpm-steps", str(args.ddpm_steps)]
        if args.ddpm_model:
            command += ["--ddpm-model", args.ddpm_model]
        completed = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
        if completed.returncode != 0:
            print(f"{row} failed:\n{completed.stderr[-2000:]}", file=sys.stderr)
            continue
        results.append(json.loads(completed.stdout.strip().splitlines()[-1]))

    print(f"| backend | faces/s | peak RSS (MiB) | face rate | diversity (mean cos) | kernel distance |")
    print("| --- | --- | --- | --- | --- | --- |")
    for result in results:
        speed = "n/a" if result["faces_per_second"] is None else f"{result['faces_per_second']:.1f}"
        print(f"| {result['row']} | {speed} | {result['peak_rss_mib']:.0f} | {result['face_rate']:.2f} | {result['diversity']:.3f} | {result['kernel_distance']:.5f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
