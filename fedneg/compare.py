"""Compare negative sources, losses and round designs: `python -m fedneg.compare --config X.yaml`.

A comparison config (YAML) names a base experiment config and a grid:

    base: configs/default.yaml        # relative to the comparison file's folder
    overrides: [federation.rounds=4]  # applied to every cell
    grid:
      sources: [none, bystander, public, [bystander, public]]  # a list entry combines sources
      losses: [triplet, arcface]
      designs: [fresh, persistent, pretrained]
      seeds: [0, 1, 2]
    baselines: {centralized: true, fedaws: true}
    pretrain_steps: 100               # steps of `fedneg.pretrain` for the pretrained design
    results_dir: /tmp/compare-runs    # run folders; reused to resume
    report_dir: docs/compare-negatives
    max_parallel: null                # cells at once; null: CPU cores // federation.num_cpus
    cell_timeout: 1800                # seconds before a cell is stopped and marked failed

Round designs: `fresh` (a new local classifier each round, only the FE returns),
`persistent` (same phones each round, the owner's classifier column travels with the FE,
only for losses with a classifier), `pretrained` (start from an FE pre-trained on the public
people, then adapt it federatedly with on-device clustering; only for sources that include
`bystander`). Combinations that do not apply are listed in the report, not run. Baselines: `centralized`
(`fedneg.centralized`, per loss and seed, on all data the federation holds), `fedaws`
(per seed: no negatives, FedAwS loss and strategy), and round 0 of the federated runs.

Each cell is a subprocess (`python -m fedneg.simulate` or `python -m fedneg.centralized`).
A cell that finished (its run folder holds `summary.json` and its status is ok) is skipped
on the next call; a failed cell is recorded with its error and retried on the next call.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from fedneg.config import ConfigError, load_config
from fedneg.losses import OBJECTIVES
from fedneg.negatives import available_sources
from fedneg.runfolder import SUMMARY_FILE

logger = logging.getLogger("fedneg.compare")

DESIGNS = ("fresh", "persistent", "pretrained")
MANIFEST_FILE = "grid.json"
STATUS_DIR = "status"
RUNS_DIR = "runs"
CONFIGS_DIR = "configs"
CHECKPOINTS_DIR = "checkpoints"
# Lines of a failed cell's stderr kept in its status record.
ERROR_TAIL_LINES = 15


class CompareError(ValueError):
    """An invalid comparison config or results folder; the message names the fix."""


@dataclass
class Cell:
    """One run of the grid.

    Attributes:
        cell_id: folder name, unique in the grid, for example `bystander+public__arcface__fresh__s0`.
        kind: "federated", "centralized" or "pretrain".
        source, loss, design: the grid coordinates ("-" where they do not apply).
        overrides: `key=value` items applied to the base config after the global overrides.
        depends_on: cell ids that must finish first (the pre-training of its seed).
    """

    cell_id: str
    kind: str
    source: str
    loss: str
    design: str
    seed: int
    overrides: list[str]
    depends_on: list[str] = field(default_factory=list)


@dataclass
class CompareConfig:
    """A parsed comparison config; see the module docstring for the keys."""

    path: Path
    base: Path
    overrides: list[str]
    sources: list[list[str]]
    losses: list[str]
    designs: list[str]
    seeds: list[int]
    centralized: bool
    fedaws: bool
    pretrain_steps: int
    results_dir: Path
    report_dir: Path
    max_parallel: int | None
    cell_timeout: float

    def fingerprint(self) -> str:
        """Hash of everything that decides the grid's cells and their results."""
        identity = {
            "base": self.base.read_text() if self.base.is_file() else str(self.base),
            "overrides": self.overrides,
            "sources": self.sources,
            "losses": self.losses,
            "designs": self.designs,
            "seeds": self.seeds,
            "centralized": self.centralized,
            "fedaws": self.fedaws,
            "pretrain_steps": self.pretrain_steps,
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def source_label(sources: list[str]) -> str:
    return "+".join(sources)


def _as_list(values: object, key: str) -> list:
    if values is None:
        return []
    if not isinstance(values, list):
        raise CompareError(f"invalid value for {key}: {values!r}; expected a list")
    return values


def parse_compare_config(path: Path, overrides: list[str] | None = None) -> CompareConfig:
    """Read and validate a comparison config; every name is checked before anything runs.

    Raises:
        CompareError: the file is missing, the grid is empty, or a name is unknown.
    """
    if not path.is_file():
        raise CompareError(f"comparison config not found: {path}; pass an existing YAML file, for example configs/compare-negatives.yaml")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise CompareError(f"comparison config {path} is not valid YAML: {error}") from error
    for text in overrides or []:
        key, _, raw = text.partition("=")
        values[key] = yaml.safe_load(raw)

    known = {"name", "base", "overrides", "grid", "baselines", "pretrain_steps", "results_dir", "report_dir", "max_parallel", "cell_timeout"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CompareError(f"unknown key(s) in {path}: {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")

    grid = values.get("grid") or {}
    sources = [[entry] if isinstance(entry, str) else list(entry) for entry in _as_list(grid.get("sources"), "grid.sources")]
    losses = [str(item) for item in _as_list(grid.get("losses"), "grid.losses")]
    designs = [str(item) for item in _as_list(grid.get("designs"), "grid.designs")]
    seeds = _as_list(grid.get("seeds", [0]), "grid.seeds")
    empty = [name for name, items in (("grid.sources", sources), ("grid.losses", losses), ("grid.designs", designs), ("grid.seeds", seeds)) if not items]
    if empty:
        raise CompareError(f"the grid in {path} is empty: {', '.join(empty)} has no entries; list at least one value for each")

    registered = available_sources()
    for entry in sources:
        for name in entry:
            if name not in registered:
                raise CompareError(f"unknown negative source {name!r} in grid.sources; allowed: {', '.join(registered)}")
    for loss in losses:
        if loss not in OBJECTIVES or loss == "fedaws":
            allowed = ", ".join(name for name in OBJECTIVES if name != "fedaws")
            raise CompareError(f"unknown loss {loss!r} in grid.losses; allowed: {allowed} (FedAwS is a baseline: baselines.fedaws)")
    for design in designs:
        if design not in DESIGNS:
            raise CompareError(f"unknown round design {design!r} in grid.designs; allowed: {', '.join(DESIGNS)}")
    for seed in seeds:
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise CompareError(f"invalid seed {seed!r} in grid.seeds; expected integers >= 0")

    folder = path.parent
    base = Path(values.get("base", "default.yaml"))
    base = base if base.is_absolute() else (folder / base)
    global_overrides = values.get("overrides") or []
    if isinstance(global_overrides, dict):
        global_overrides = [f"{key}={json.dumps(value)}" for key, value in global_overrides.items()]
    baselines = values.get("baselines") or {}
    max_parallel = values.get("max_parallel")
    if max_parallel is not None and (not isinstance(max_parallel, int) or max_parallel < 1):
        raise CompareError(f"invalid value for max_parallel: {max_parallel!r}; expected an integer >= 1 or null")

    config = CompareConfig(
        path=path,
        base=base,
        overrides=[str(item) for item in global_overrides],
        sources=sources,
        losses=losses,
        designs=designs,
        seeds=[int(seed) for seed in seeds],
        centralized=bool(baselines.get("centralized", True)),
        fedaws=bool(baselines.get("fedaws", True)),
        pretrain_steps=int(values.get("pretrain_steps", 100)),
        results_dir=Path(values.get("results_dir", f"runs/{path.stem}")),
        report_dir=Path(values.get("report_dir", f"runs/{path.stem}-report")),
        max_parallel=max_parallel,
        cell_timeout=float(values.get("cell_timeout", 3600)),
    )
    try:
        load_config(config.base, config.overrides)
    except ConfigError as error:
        raise CompareError(f"the base config with the global overrides is invalid: {error}") from error
    return config


def build_cells(config: CompareConfig) -> tuple[list[Cell], list[tuple[str, str]]]:
    """Expand the grid into cells; return them and the skipped combinations with the reason."""
    cells: list[Cell] = []
    skipped: list[tuple[str, str]] = []
    checkpoints = config.results_dir / CHECKPOINTS_DIR

    for seed in config.seeds:
        if "pretrained" in config.designs and any("bystander" in sources for sources in config.sources):
            cells.append(Cell(f"pretrain__s{seed}", "pretrain", "public", "-", "pretrained", seed, [f"seed={seed}"]))
        for sources in config.sources:
            label = source_label(sources)
            for loss in config.losses:
                for design in config.designs:
                    cell_id = f"{label}__{loss}__{design}__s{seed}"
                    overrides = [f"seed={seed}", f"negatives.sources={json.dumps(sources)}", f"train.loss={loss}"]
                    depends: list[str] = []
                    if design == "persistent":
                        if not OBJECTIVES[loss].has_classifier:
                            skipped.append((cell_id, f"the persistent design needs a loss with a classifier; {loss} has none"))
                            continue
                        overrides.append("federation.classifier=persistent")
                    if design == "pretrained":
                        if "bystander" not in sources:
                            skipped.append((cell_id, "the pretrained design adapts with on-device clustering, so its sources must include bystander"))
                            continue
                        overrides.append(f"model.init_checkpoint={checkpoints / f'pretrain-s{seed}.safetensors'}")
                        depends.append(f"pretrain__s{seed}")
                    cells.append(Cell(cell_id, "federated", label, loss, design, seed, overrides, depends))
        if config.fedaws:
            cells.append(Cell(f"none__fedaws__persistent__s{seed}", "federated", "none", "fedaws", "persistent", seed, [f"seed={seed}", 'negatives.sources=["none"]', "train.loss=fedaws", "federation.strategy=fedaws", "federation.classifier=persistent"]))
        if config.centralized:
            pooled = sorted({name for entry in config.sources for name in entry if name != "none"}) or ["bystander"]
            for loss in config.losses:
                cells.append(Cell(f"centralized__{loss}__s{seed}", "centralized", "centralized", loss, "-", seed, [f"seed={seed}", f"negatives.sources={json.dumps(pooled)}", f"train.loss={loss}"]))
    return cells, skipped


def cell_command(config: CompareConfig, cell: Cell, config_file: Path) -> list[str]:
    run_dir = config.results_dir / RUNS_DIR / cell.cell_id
    if cell.kind == "pretrain":
        output = config.results_dir / CHECKPOINTS_DIR / f"pretrain-s{cell.seed}.safetensors"
        return [sys.executable, "-m", "fedneg.pretrain", "--config", str(config_file), "--output", str(output), "--steps", str(config.pretrain_steps)]
    module = "fedneg.centralized" if cell.kind == "centralized" else "fedneg.simulate"
    return [sys.executable, "-m", module, "--config", str(config_file), "--run-dir", str(run_dir)]


def cell_finished(config: CompareConfig, cell: Cell) -> bool:
    """True when the cell's status is ok and its output exists."""
    status = read_status(config.results_dir, cell.cell_id)
    if status is None or status.get("status") != "ok":
        return False
    if cell.kind == "pretrain":
        return (config.results_dir / CHECKPOINTS_DIR / f"pretrain-s{cell.seed}.safetensors").is_file()
    return (config.results_dir / RUNS_DIR / cell.cell_id / SUMMARY_FILE).is_file()


def read_status(results_dir: Path, cell_id: str) -> dict | None:
    path = results_dir / STATUS_DIR / f"{cell_id}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_status(results_dir: Path, cell: Cell, status: str, seconds: float, error: str = "") -> None:
    record = {"cell": cell.cell_id, "status": status, "seconds": round(seconds, 1), "error": error, **{key: value for key, value in asdict(cell).items() if key != "cell_id"}}
    folder = results_dir / STATUS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{cell.cell_id}.json").write_text(json.dumps(record, indent=1))


def check_results_dir(config: CompareConfig) -> None:
    """Create the results folder's manifest, or check that it belongs to this grid.

    Raises:
        CompareError: the folder contains results of a different grid.
    """
    manifest = config.results_dir / MANIFEST_FILE
    fingerprint = config.fingerprint()
    if manifest.is_file():
        stored = json.loads(manifest.read_text())
        if stored.get("fingerprint") != fingerprint:
            raise CompareError(
                f"results folder {config.results_dir} contains another grid (fingerprint {stored.get('fingerprint')}, "
                f"from {stored.get('config')}; this grid is {fingerprint}); set results_dir to a new folder or delete the old one"
            )
        return
    config.results_dir.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"fingerprint": fingerprint, "config": str(config.path)}, indent=1))


def write_cell_config(config: CompareConfig, cell: Cell) -> Path:
    """Resolve the cell's experiment config and write it to `<results>/configs/<cell>.yaml`."""
    overrides = list(config.overrides) + cell.overrides + [f"name={cell.cell_id}"]
    checkpoint = [item.partition("=")[2] for item in overrides if item.startswith("model.init_checkpoint=")]
    resolved = load_config(config.base, [item for item in overrides if not item.startswith("model.init_checkpoint=")])
    values = resolved.to_dict()
    if checkpoint:
        # The checkpoint exists only after the pre-training cell ran, so it is set after validation.
        values["model"]["init_checkpoint"] = checkpoint[-1]

    folder = config.results_dir / CONFIGS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{cell.cell_id}.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def run_cell(config: CompareConfig, cell: Cell) -> str:
    """Run one cell as a subprocess; record and return its status ("ok" or "failed")."""
    config_file = config.results_dir / CONFIGS_DIR / f"{cell.cell_id}.yaml"
    for dependency in cell.depends_on:
        status = read_status(config.results_dir, dependency)
        if status is None or status.get("status") != "ok":
            write_status(config.results_dir, cell, "failed", 0.0, f"dependency {dependency} did not finish")
            logger.error("cell %s: not run, dependency %s did not finish", cell.cell_id, dependency)
            return "failed"

    command = cell_command(config, cell, config_file)
    environment = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", RAY_USAGE_STATS_ENABLED="0")
    log_path = config.results_dir / STATUS_DIR / f"{cell.cell_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logger.info("cell %s: starting", cell.cell_id)
    started = time.perf_counter()
    try:
        with open(log_path, "w") as log_file:
            completed = subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT, env=environment, timeout=config.cell_timeout, check=False)
        returncode = completed.returncode
        error = ""
    except subprocess.TimeoutExpired:
        returncode = -1
        error = f"timed out after {config.cell_timeout:.0f} s"
    except OSError as exception:
        returncode = -1
        error = f"failed to start: {exception}"
    seconds = time.perf_counter() - started

    if returncode == 0 and cell_output_exists(config, cell):
        write_status(config.results_dir, cell, "ok", seconds)
        logger.info("cell %s: finished in %.0f s", cell.cell_id, seconds)
        return "ok"

    tail = log_path.read_text(errors="replace").splitlines()[-ERROR_TAIL_LINES:] if log_path.is_file() else []
    error = error or f"exit status {returncode}: " + "\n".join(tail)
    write_status(config.results_dir, cell, "failed", seconds, error)
    logger.error("cell %s: failed after %.0f s; log %s", cell.cell_id, seconds, log_path)
    return "failed"


def cell_output_exists(config: CompareConfig, cell: Cell) -> bool:
    if cell.kind == "pretrain":
        return (config.results_dir / CHECKPOINTS_DIR / f"pretrain-s{cell.seed}.safetensors").is_file()
    return (config.results_dir / RUNS_DIR / cell.cell_id / SUMMARY_FILE).is_file()


def default_parallel(config: CompareConfig) -> int:
    base = load_config(config.base, config.overrides)
    per_cell = base.federation.num_cpus or max(1, int(base.federation.client_cpus))
    return max(1, (os.cpu_count() or 1) // per_cell)


def run_grid(config: CompareConfig) -> dict[str, str]:
    """Run every unfinished cell, pre-training first; return cell id -> status.

    Statuses: "ok", "failed", "skipped" (finished in an earlier call).
    """
    check_results_dir(config)
    cells, not_applicable = build_cells(config)
    for cell_id, reason in not_applicable:
        logger.info("cell %s: not applicable (%s)", cell_id, reason)
    for cell in cells:
        write_cell_config(config, cell)

    statuses: dict[str, str] = {}
    pending = []
    for cell in cells:
        if cell_finished(config, cell):
            statuses[cell.cell_id] = "skipped"
        else:
            pending.append(cell)
    logger.info("%d cells: %d finished earlier, %d to run", len(cells), len(cells) - len(pending), len(pending))

    workers = config.max_parallel or default_parallel(config)
    stages = [[cell for cell in pending if cell.kind == "pretrain"], [cell for cell in pending if cell.kind != "pretrain"]]
    for stage in stages:
        if not stage:
            continue
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for cell, status in zip(stage, pool.map(lambda item: run_cell(config, item), stage), strict=True):
                statuses[cell.cell_id] = status
    (config.results_dir / "not_applicable.json").write_text(json.dumps(dict(not_applicable), indent=1))
    return statuses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedneg.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/compare-negatives.yaml", help="comparison YAML file (default: %(default)s)")
    parser.add_argument("--report-only", action="store_true", help="write the report from finished cells without running any")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="top-level comparison keys, e.g. results_dir=/tmp/cmp max_parallel=1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    from fedneg.report import write_report

    try:
        config = parse_compare_config(Path(args.config), args.overrides)
        statuses = {} if args.report_only else run_grid(config)
        if args.report_only:
            check_results_dir(config)
        report = write_report(config)
    except CompareError as error:
        logger.error("%s", error)
        return 2
    failed = sorted(cell for cell, status in statuses.items() if status == "failed")
    if failed:
        logger.error("%d cell(s) failed: %s; see %s", len(failed), ", ".join(failed), config.results_dir / STATUS_DIR)
    logger.info("report in %s", report)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
