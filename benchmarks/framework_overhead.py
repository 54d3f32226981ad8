"""Framework overhead: the same local training through `fedneg.simulate` and as a plain loop.

Both variants train the same phones in the same rounds (seeded sampling), with the same
negatives, epochs and batch size. Evaluation is left out of the timing: only rounds
1..R-1 count, and evaluation runs only at round 0 and round R.

    python benchmarks/framework_overhead.py                 # both variants, table on stdout
    python benchmarks/framework_overhead.py --rounds 3 --repeat 2 --out benchmarks/results/framework_overhead.json

Each variant runs in its own process. A sampler sums the resident memory of that process
and all its children (Ray workers included) every 0.2 s and keeps the peak.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

PROJECT_DIR = Path(__file__).resolve().parents[1]


def overrides(rounds: int, clients: int, client_cpus: float, extra: list[str]) -> list[str]:
    return [
        f"federation.rounds={rounds}",
        f"federation.clients_per_round={clients}",
        f"federation.client_cpus={client_cpus}",
        "eval.every=1000",
        "eval.pairs=100",
        "eval.lfw_pairs=false",
        *extra,
    ]


def run_plain(config_path: str, settings: list[str]) -> dict:
    """Sequential FedAvg in one process: no Flower, no Ray."""
    import numpy as np
    import torch

    from clients.pipeline import train_phone
    from fedneg.config import load_config
    from fedneg.model import build_model
    from fedneg.negatives import ServerResources, build_sources
    from fedneg.runfolder import prepare_run

    config = load_config(config_path, settings)
    torch.set_num_threads(max(1, int(config.federation.client_cpus)))
    prepared = prepare_run(config, write=False)
    sources = build_sources(config)
    for source in sources:
        source.prepare_server(ServerResources(config, prepared.data_root, prepared.identities, prepared.split.public))
    model = build_model(config.model, seed=config.seed)

    images, seconds = 0, 0.0
    for server_round in range(1, config.federation.rounds):
        started = time.perf_counter()
        rng = np.random.default_rng([config.seed, server_round])
        phones = sorted(int(phone) for phone in rng.choice(len(prepared.phones), size=config.federation.clients_per_round, replace=False))
        payload_rng = np.random.default_rng([config.seed, server_round, 1])
        payloads = {source.name: source.round_payload(server_round, payload_rng) for source in sources}

        states, weights = [], []
        for phone in phones:
            outcome = train_phone(config, phone, copy.deepcopy(model.state_dict()), payloads, server_round)
            states.append(outcome.state)
            weights.append(outcome.metrics["positives"] + outcome.metrics["negatives"])  # FedAvg's num-examples
            images += int(outcome.metrics["train_images"])
        total = sum(weights)
        averaged = {key: sum(state[key].double() * weight / total for state, weight in zip(states, weights)) for key in states[0]}
        model.load_state_dict({key: value.to(states[0][key].dtype) for key, value in averaged.items()})
        seconds += time.perf_counter() - started
    return {"images": images, "seconds": seconds}


def run_flower(config_path: str, settings: list[str]) -> dict:
    """Run the same rounds through `fedneg.simulate` (Flower simulation engine on Ray)."""
    from fedneg.config import load_config
    from fedneg.runfolder import read_metrics
    from fedneg.simulate import run_simulation_from_config

    config = load_config(config_path, settings)
    with tempfile.TemporaryDirectory() as folder:
        run_dir = run_simulation_from_config(config, Path(folder) / "run")
        records = [record for record in read_metrics(run_dir) if 1 <= record["round"] < config.federation.rounds]
    return {"images": int(sum(record["train_images"] * record["clients"] for record in records)), "seconds": float(sum(record["round_seconds"] for record in records))}


def measure(variant: str, config_path: str, settings: list[str]) -> dict:
    """Run one variant in a child process and sample its memory until it ends."""
    command = [sys.executable, __file__, "--child", variant, "--config", config_path, "--settings", json.dumps(settings)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, cwd=PROJECT_DIR, text=True)
    parent = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        try:
            members = [parent, *parent.children(recursive=True)]
            peak = max(peak, sum(member.memory_info().rss for member in members if member.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.2)
    output = process.stdout.read() if process.stdout else ""
    if process.returncode != 0:
        raise RuntimeError(f"{variant} run failed with exit code {process.returncode}")
    result = json.loads(output.strip().splitlines()[-1])
    result["peak_rss_mib"] = peak / 2**20
    result["images_per_second"] = result["images"] / result["seconds"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per variant; rounds 1..R-1 are timed")
    parser.add_argument("--clients", type=int, default=8, help="phones per round")
    parser.add_argument("--repeat", type=int, default=1, help="run the variants this many times, interleaved, and keep each variant's fastest run")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--settings", default="[]", help=argparse.SUPPRESS)
    parser.add_argument("extra", nargs="*", metavar="key=value", help="further config overrides for both variants")
    args = parser.parse_args()

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.child:
        runner = run_plain if args.child == "plain" else run_flower
        print(json.dumps(runner(args.config, json.loads(args.settings))))
        return

    cores = os.cpu_count() or 1
    variants = {
        "plain loop, 1 thread": ("plain", overrides(args.rounds, args.clients, 1.0, args.extra)),
        "fedneg.simulate, 1 client at a time": ("flower", overrides(args.rounds, args.clients, 1.0, args.extra + ["federation.num_cpus=1"])),
        f"fedneg.simulate, {cores} clients in parallel": ("flower", overrides(args.rounds, args.clients, 1.0, args.extra + [f"federation.num_cpus={cores}"])),
    }
    # Interleaving the variants spreads any change in background load over all of them.
    results: dict[str, dict] = {}
    for _ in range(args.repeat):
        for name, (kind, settings) in variants.items():
            result = measure(kind, args.config, settings)
            if name not in results or result["images_per_second"] > results[name]["images_per_second"]:
                results[name] = result

    baseline = results["plain loop, 1 thread"]["images_per_second"]
    print("| variant | images | seconds | images/s | ratio to plain | peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, result in results.items():
        print(f"| {name} | {result['images']} | {result['seconds']:.1f} | {result['images_per_second']:.1f} | {result['images_per_second'] / baseline:.2f} | {result['peak_rss_mib']:.0f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"config": args.config, "rounds": args.rounds, "clients": args.clients, "repeat": args.repeat, "cores": cores, "results": results}, indent=1))


if __name__ == "__main__":
    main()
