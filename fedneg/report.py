"""The comparison report: table (CSV and Markdown), plots and resolved configs of a grid.

Numbers come from each finished cell's `metrics.json`, last round. For every group
(source, loss, design) a metric is given as mean ± half-width of the 95 % confidence
interval over seeds, t-distribution with n - 1 degrees of freedom (no interval for n = 1),
and as a fraction of the centralized upper bound: per seed, the cell's value divided by the
centralized run's value with the same loss and seed (the first listed loss when that loss
has no centralized run), then mean ± CI of those ratios. For EER a fraction above 1 means
worse than the upper bound.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy import stats

from fedneg.compare import CONFIGS_DIR, RUNS_DIR, Cell, CompareConfig, build_cells, read_status
from fedneg.runfolder import read_metrics

logger = logging.getLogger(__name__)

# (metrics.json key, table label). Higher is better except for EER.
METRICS = (
    ("pairs.roc_auc", "ROC AUC"),
    ("pairs.eer", "EER"),
    ("pairs.tar@far=1e-02", "TAR@FAR=1e-2"),
    ("pairs.tar@far=1e-03", "TAR@FAR=1e-3"),
    ("pairs.accuracy", "accuracy"),
)
MINING_METRICS = ("mining_purity", "mining_ari", "owner_precision", "owner_recall")
TABLE_CSV = "table.csv"
TABLE_MD = "table.md"


@dataclass
class Summary:
    """Mean and 95 % CI half-width over n values (half-width NaN for n < 2)."""

    mean: float
    half_width: float
    n: int

    def text(self, digits: int = 3) -> str:
        if math.isnan(self.mean):
            return "–"
        if self.n < 2 or math.isnan(self.half_width):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def summarize(values: list[float]) -> Summary:
    """Return mean ± t_{0.975, n-1} * s / sqrt(n) of finite `values`."""
    finite = np.asarray([value for value in values if value is not None and np.isfinite(value)], dtype=float)
    if finite.size == 0:
        return Summary(float("nan"), float("nan"), 0)
    if finite.size == 1:
        return Summary(float(finite[0]), float("nan"), 1)
    half_width = float(stats.t.ppf(0.975, finite.size - 1) * finite.std(ddof=1) / math.sqrt(finite.size))
    return Summary(float(finite.mean()), half_width, int(finite.size))


def last_evaluated(records: list[dict]) -> dict:
    """Return the last round record that carries evaluation metrics ({} when none does)."""
    evaluated = [record for record in records if "pairs.roc_auc" in record]
    return evaluated[-1] if evaluated else {}


def group_key(cell: Cell) -> tuple[str, str, str]:
    return (cell.source, cell.loss, cell.design)


def collect(config: CompareConfig) -> tuple[list[Cell], dict[str, list[dict]], dict[str, dict]]:
    """Return the grid's cells, metrics records of finished runs, and status records."""
    cells, _ = build_cells(config)
    records: dict[str, list[dict]] = {}
    statuses: dict[str, dict] = {}
    for cell in cells:
        status = read_status(config.results_dir, cell.cell_id)
        if status is not None:
            statuses[cell.cell_id] = status
        if cell.kind == "pretrain" or status is None or status.get("status") != "ok":
            continue
        records[cell.cell_id] = read_metrics(config.results_dir / RUNS_DIR / cell.cell_id)
    return cells, records, statuses


def table_rows(config: CompareConfig, cells: list[Cell], records: dict[str, list[dict]]) -> list[dict]:
    """Build one row per group: per metric its mean, CI half-width and fraction of the upper bound."""
    upper: dict[tuple[str, int], dict] = {}
    for cell in cells:
        if cell.kind == "centralized" and cell.cell_id in records:
            upper[(cell.loss, cell.seed)] = last_evaluated(records[cell.cell_id])

    groups: dict[tuple[str, str, str], list[Cell]] = {}
    round_zero: dict[int, dict] = {}
    for cell in cells:
        if cell.kind == "pretrain":
            continue
        groups.setdefault(group_key(cell), []).append(cell)
        if cell.kind == "federated" and cell.design == "fresh" and cell.cell_id in records and records[cell.cell_id]:
            round_zero.setdefault(cell.seed, records[cell.cell_id][0])

    rows = []
    baseline_cells = {("round 0", "-", "before training"): [(seed, record) for seed, record in sorted(round_zero.items())]}
    for key, members in list(groups.items()) + [(key, None) for key in baseline_cells]:
        if members is None:
            finals = baseline_cells[key]
            failed = 0
        else:
            finals = [(cell.seed, last_evaluated(records[cell.cell_id])) for cell in members if cell.cell_id in records]
            failed = sum(1 for cell in members if cell.cell_id not in records)
        if not finals and failed == 0:
            continue
        row: dict = {"source": key[0], "loss": key[1], "design": key[2], "seeds": len(finals), "failed": failed}
        pair_counts = {int(record.get("pairs.genuine", 0) + record.get("pairs.impostor", 0)) for _, record in finals if record}
        row["pairs"] = "/".join(str(count) for count in sorted(pair_counts)) or "–"
        for metric, _ in METRICS:
            summary = summarize([record.get(metric, float("nan")) for _, record in finals])
            row[f"{metric}.mean"] = summary.mean
            row[f"{metric}.ci95"] = summary.half_width
            ratios = []
            for seed, record in finals:
                reference = upper.get((key[1], seed)) or next((upper[(loss, seed)] for loss in config.losses if (loss, seed) in upper), None)
                if reference and reference.get(metric) and metric in record:
                    ratios.append(record[metric] / reference[metric])
            fraction = summarize(ratios)
            row[f"{metric}.of_upper.mean"] = fraction.mean
            row[f"{metric}.of_upper.ci95"] = fraction.half_width
            row[f"_{metric}"] = summary
            row[f"_{metric}.of_upper"] = fraction
        rows.append(row)
    return rows


def write_tables(rows: list[dict], folder: Path) -> None:
    columns = [key for key in rows[0] if not key.startswith("_")] if rows else ["source", "loss", "design"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    (folder / TABLE_CSV).write_text(buffer.getvalue())

    header = ["source", "loss", "design", "seeds", "pairs"] + [label for _, label in METRICS] + [f"{label} / upper" for _, label in METRICS if label in ("ROC AUC", "EER")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["source"], row["loss"], row["design"], f"{row['seeds']}" + (f" ({row['failed']} failed)" if row["failed"] else ""), row["pairs"]]
        cells += [row[f"_{metric}"].text() for metric, _ in METRICS]
        cells += [row[f"_{metric}.of_upper"].text(2) for metric, label in METRICS if label in ("ROC AUC", "EER")]
        lines.append("| " + " | ".join(cells) + " |")
    (folder / TABLE_MD).write_text("\n".join(lines) + "\n")


def plot_metric_per_round(cells: list[Cell], records: dict[str, list[dict]], path: Path, metric: str = "pairs.roc_auc") -> None:
    """Plot `metric` per round, mean over seeds: a panel per design, a line per (source, loss)."""
    designs = sorted({cell.design for cell in cells if cell.kind == "federated"})
    figure = Figure(figsize=(5 * max(1, len(designs)), 4))
    axes = np.atleast_1d(figure.subplots(1, max(1, len(designs)), squeeze=False)[0])
    for axis, design in zip(axes, designs, strict=False):
        series: dict[str, dict[int, list[float]]] = {}
        for cell in cells:
            if cell.design not in (design, "-") or cell.cell_id not in records:
                continue
            label = f"{cell.source} / {cell.loss}"
            for record in records[cell.cell_id]:
                if metric in record:
                    series.setdefault(label, {}).setdefault(int(record["round"]), []).append(float(record[metric]))
        for label, by_round in sorted(series.items()):
            rounds = sorted(by_round)
            axis.plot(rounds, [np.mean(by_round[item]) for item in rounds], marker="o", label=label)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(f"design: {design}")
        axis.set_xlabel("round")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def plot_roc_overlay(config: CompareConfig, cells: list[Cell], records: dict[str, list[dict]], path: Path) -> None:
    """ROC (TAR against FAR) of each group's final FE, first finished seed, re-evaluated.

    The run folders keep only the FE and summary metrics, so each chosen FE is evaluated
    again on its run's own pair protocol here.
    """
    from safetensors.torch import load_file
    from sklearn.metrics import roc_curve

    from fedneg.config import load_config
    from fedneg.evaluation import Evaluator
    from fedneg.model import build_model
    from fedneg.runfolder import prepare_run
    from fedneg.server.run import build_protocols, format_roc_axis

    figure = Figure(figsize=(7, 5))
    axis = figure.subplots()
    seen: set[tuple[str, str, str]] = set()
    for cell in cells:
        if cell.kind == "pretrain" or cell.cell_id not in records or group_key(cell) in seen:
            continue
        run_dir = config.results_dir / RUNS_DIR / cell.cell_id
        checkpoint = run_dir / "fe.safetensors"
        if not checkpoint.is_file():
            continue
        seen.add(group_key(cell))
        run_config = load_config(run_dir / "config.yaml")
        run_config.model.init_checkpoint = None
        run_config.eval.lfw_pairs = False
        prepared = prepare_run(run_config, run_dir, write=False)
        model = build_model(run_config.model)
        model.load_state_dict(load_file(str(checkpoint)))
        evaluation = Evaluator(build_protocols(prepared)[:1], run_config.data.crop_size, run_config.data.image_size, run_config.eval.batch_size).evaluate(model)
        for protocol, scores in evaluation.scores.items():
            far, tar, _ = roc_curve(evaluation.labels[protocol], scores)
            axis.plot(np.clip(far, 1e-3, 1), tar, label=f"{cell.source} / {cell.loss} / {cell.design} (seed {cell.seed})")
    format_roc_axis(axis, min_far=1e-3, legend_size=6)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def plot_mining(cells: list[Cell], records: dict[str, list[dict]], path: Path) -> None:
    """Bystander-mining quality per group: mean over rounds and seeds of each mining metric."""
    groups: dict[str, dict[str, list[float]]] = {}
    for cell in cells:
        if cell.cell_id not in records or cell.kind != "federated":
            continue
        label = f"{cell.source}\n{cell.loss}/{cell.design}"
        for record in records[cell.cell_id]:
            for metric in MINING_METRICS:
                if metric in record:
                    groups.setdefault(label, {}).setdefault(metric, []).append(float(record[metric]))
    figure = Figure(figsize=(max(6, 1.2 * len(groups) + 2), 4))
    axis = figure.subplots()
    labels = sorted(groups)
    width = 0.8 / len(MINING_METRICS)
    for offset, metric in enumerate(MINING_METRICS):
        values = [np.mean(groups[label].get(metric, [np.nan])) for label in labels]
        axis.bar(np.arange(len(labels)) + offset * width, values, width=width, label=metric)
    axis.set_xticks(np.arange(len(labels)) + 0.4 - width / 2)
    axis.set_xticklabels(labels, fontsize=6)
    axis.set_ylim(-0.1, 1.05)
    axis.set_ylabel("mean over rounds and seeds")
    axis.set_title("bystander mining quality" if labels else "bystander mining quality (no run mined bystanders)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def write_report(config: CompareConfig, roc: bool = True) -> Path:
    """Write table.csv, table.md, plots, cells.json and the resolved configs to the report folder."""
    folder = config.report_dir
    folder.mkdir(parents=True, exist_ok=True)
    cells, records, statuses = collect(config)
    rows = table_rows(config, cells, records)
    write_tables(rows, folder)

    plot_metric_per_round(cells, records, folder / "auc_per_round.png")
    plot_mining(cells, records, folder / "mining_quality.png")
    if roc and records:
        plot_roc_overlay(config, cells, records, folder / "roc_overlay.png")

    configs = folder / "configs"
    configs.mkdir(exist_ok=True)
    for cell in cells:
        source = config.results_dir / CONFIGS_DIR / f"{cell.cell_id}.yaml"
        if source.is_file():
            shutil.copyfile(source, configs / source.name)

    cell_records = {cell.cell_id: {"status": statuses.get(cell.cell_id, {}).get("status", "not run"), "error": statuses.get(cell.cell_id, {}).get("error", ""), "seconds": statuses.get(cell.cell_id, {}).get("seconds"), "final": last_evaluated(records.get(cell.cell_id, []))} for cell in cells}
    not_applicable = config.results_dir / "not_applicable.json"
    summary = {"cells": cell_records, "not_applicable": json.loads(not_applicable.read_text()) if not_applicable.is_file() else {}}
    (folder / "cells.json").write_text(json.dumps(summary, indent=1, default=float))
    logger.info("report: %d groups, %d finished runs, %d failed", len(rows), len(records), sum(1 for item in cell_records.values() if item["status"] == "failed"))
    return folder
