"""The run folder: resolved config, split, per-round metrics, ROC plot, FE checkpoint, log.

Every file is written to a temporary name and renamed into place, so an interrupted run
leaves each file either in its previous complete state or in its new one.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from fedneg.config import Config
from fedneg.data import resolve_data_root, scan_identities
from fedneg.split import Phone, Split, build_phone, split_people, write_split

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
SPLIT_FILE = "split.json"
METRICS_JSON = "metrics.json"
METRICS_CSV = "metrics.csv"
CHECKPOINT_FILE = "fe.safetensors"
ROC_FILE = "roc.png"
LOG_FILE = "run.log"
SUMMARY_FILE = "summary.json"


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write `data` to `path` through a temporary file and an atomic rename."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


@dataclass
class PreparedRun:
    """Everything resolved before training starts."""

    config: Config
    run_dir: Path
    data_root: Path
    identities: dict[str, list[str]]
    split: Split
    phones: list[Phone]


def default_run_dir(config: Config) -> Path:
    name = config.output.name or f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(config.output.runs_dir) / name


def prepare_run(config: Config, run_dir: Path | None = None, write: bool = True) -> PreparedRun:
    """Resolve the data root, split the people, build the phones and write config and split.

    The data root is written into the saved config as an absolute path, so the saved
    `config.yaml` reproduces the run by itself.

    Raises:
        ConfigError: the data root is missing or too small for the requested split.
    """
    data_root = resolve_data_root(config.data.root)
    config.data.root = str(data_root)
    if config.data.pairs_file is None and (data_root.parent / "pairs.txt").is_file():
        config.data.pairs_file = str(data_root.parent / "pairs.txt")

    identities = scan_identities(data_root)
    split = split_people(identities, config)
    phones = [build_phone(index, identities, split, config) for index in range(len(split.owners))]

    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / CONFIG_FILE, yaml.safe_dump(config.to_dict(), sort_keys=False))
        write_split(run_dir / SPLIT_FILE, split, phones, data_root)
    return PreparedRun(config=config, run_dir=run_dir, data_root=data_root, identities=identities, split=split, phones=phones)


class MetricsLog:
    """Per-round records, rewritten as JSON and CSV after every round."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.records: list[dict[str, float | int | str | bool]] = []

    def append(self, record: dict[str, float | int | str | bool]) -> None:
        self.records.append(record)
        write_atomic(self.run_dir / METRICS_JSON, json.dumps(self.records, indent=1, default=_to_builtin))

        columns: list[str] = []
        for item in self.records:
            columns.extend(key for key in item if key not in columns)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.records)
        write_atomic(self.run_dir / METRICS_CSV, buffer.getvalue())


def _to_builtin(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def read_metrics(run_dir: Path) -> list[dict]:
    """Read a run folder's per-round records (empty when no round has finished)."""
    path = Path(run_dir) / METRICS_JSON
    return json.loads(path.read_text()) if path.is_file() else []
