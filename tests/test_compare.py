"""`fedneg.compare` and `fedneg.report`: a real smoke grid, resume, and bad input."""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from pathlib import Path

import pytest
import yaml

from _compare_smoke import SMOKE_CONFIG, smoke_grid
from fedneg import compare
from fedneg.compare import CompareError, build_cells, parse_compare_config, run_grid
from fedneg.report import METRICS, last_evaluated, summarize
from fedneg.runfolder import read_metrics


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    return smoke_grid(tmp_path_factory.getbasetemp() / "compare-smoke")


def write_compare(tmp_path: Path, **changes) -> Path:
    values = yaml.safe_load(SMOKE_CONFIG.read_text())
    values["base"] = str(SMOKE_CONFIG.parent / "default.yaml")
    values["results_dir"] = str(tmp_path / "results")
    values["report_dir"] = str(tmp_path / "report")
    for key, value in changes.items():
        if key in ("sources", "losses", "designs", "seeds"):
            values["grid"][key] = value
        else:
            values[key] = value
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.slow
def test_smoke_grid_all_cells_ok(grid):
    config, statuses = grid
    cells, skipped = build_cells(config)
    assert {cell.cell_id for cell in cells} == set(statuses)
    assert all(status == "ok" for status in statuses.values()), statuses
    assert skipped == []


@pytest.mark.slow
def test_report_numbers_equal_run_metrics(grid):
    config, _ = grid
    with open(config.report_dir / "table.csv") as handle:
        rows = {(row["source"], row["loss"], row["design"]): row for row in csv.DictReader(handle)}

    upper = last_evaluated(read_metrics(config.results_dir / "runs" / "centralized__arcface__s0"))
    fresh = read_metrics(config.results_dir / "runs" / "bystander__arcface__fresh__s0")
    for cell_id, key in (
        ("bystander__arcface__fresh__s0", ("bystander", "arcface", "fresh")),
        ("bystander__arcface__persistent__s0", ("bystander", "arcface", "persistent")),
        ("bystander__arcface__pretrained__s0", ("bystander", "arcface", "pretrained")),
        ("none__fedaws__persistent__s0", ("none", "fedaws", "persistent")),
        ("centralized__arcface__s0", ("centralized", "arcface", "-")),
    ):
        final = last_evaluated(read_metrics(config.results_dir / "runs" / cell_id))
        row = rows[key]
        for metric, _ in METRICS:
            assert float(row[f"{metric}.mean"]) == pytest.approx(final[metric]), (cell_id, metric)
            if upper[metric]:
                assert float(row[f"{metric}.of_upper.mean"]) == pytest.approx(final[metric] / upper[metric]), (cell_id, metric)

    round_zero = rows[("round 0", "-", "before training")]
    assert float(round_zero["pairs.roc_auc.mean"]) == pytest.approx(fresh[0]["pairs.roc_auc"])
    assert "±" not in (config.report_dir / "table.md").read_text().split("\n")[2]
    for name in ("table.md", "auc_per_round.png", "roc_overlay.png", "mining_quality.png", "cells.json"):
        assert (config.report_dir / name).is_file(), name
    assert (config.report_dir / "configs" / "bystander__arcface__fresh__s0.yaml").is_file()


@pytest.mark.slow
def test_resume_skips_finished_cells(grid):
    config, _ = grid
    started = time.perf_counter()
    statuses = run_grid(config)
    assert set(statuses.values()) == {"skipped"}
    assert time.perf_counter() - started < 30


def test_summary_uses_t_interval():
    summary = summarize([0.8, 0.9, 1.0])
    # t_{0.975, 2} = 4.3027; sample standard deviation 0.1; n = 3.
    assert summary.mean == pytest.approx(0.9)
    assert summary.half_width == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
    assert math.isnan(summarize([0.5]).half_width)
    assert summarize([]).n == 0


def test_empty_grid_rejected(tmp_path):
    with pytest.raises(CompareError, match="empty: grid.losses"):
        parse_compare_config(write_compare(tmp_path, losses=[]))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"losses": ["arcfase"]}, "unknown loss 'arcfase'"),
        ({"sources": ["bystanders"]}, "unknown negative source 'bystanders'"),
        ({"designs": ["frozen"]}, "unknown round design 'frozen'"),
        ({"seeds": [-1]}, "invalid seed -1"),
    ],
)
def test_unknown_names_rejected(tmp_path, change, message):
    with pytest.raises(CompareError, match=message):
        parse_compare_config(write_compare(tmp_path, **change))


def test_missing_config_file_rejected(tmp_path):
    with pytest.raises(CompareError, match="not found"):
        parse_compare_config(tmp_path / "absent.yaml")


def test_results_dir_of_other_grid_rejected(tmp_path):
    first = parse_compare_config(write_compare(tmp_path, seeds=[0]))
    compare.check_results_dir(first)
    second = parse_compare_config(write_compare(tmp_path, seeds=[0, 1]))
    with pytest.raises(CompareError, match="contains another grid"):
        compare.check_results_dir(second)


def test_crashing_cell_recorded_rest_runs(tmp_path, monkeypatch):
    config = parse_compare_config(write_compare(tmp_path, designs=["fresh"]), ["baselines={centralized: true, fedaws: false}"])
    crashing = "bystander__arcface__fresh__s0"

    # Stand-in commands: the crashing cell exits with an error; the others write the summary
    # file a finished run leaves, so the grid's bookkeeping runs without training.
    def fake_command(config_, cell, config_file):
        if cell.cell_id == crashing:
            return [sys.executable, "-c", "import sys; print('training diverged'); sys.exit(3)"]
        run_dir = config_.results_dir / "runs" / cell.cell_id
        script = f"import pathlib; p = pathlib.Path({str(run_dir)!r}); p.mkdir(parents=True, exist_ok=True); (p / 'summary.json').write_text('{{}}')"
        return [sys.executable, "-c", script]

    monkeypatch.setattr(compare, "cell_command", fake_command)
    statuses = run_grid(config)

    assert statuses[crashing] == "failed"
    assert statuses["centralized__arcface__s0"] == "ok"
    status = json.loads((config.results_dir / "status" / f"{crashing}.json").read_text())
    assert "exit status 3" in status["error"]
    assert "training diverged" in status["error"]

    # A second call retries only the failed cell.
    statuses = run_grid(config)
    assert statuses[crashing] == "failed"
    assert statuses["centralized__arcface__s0"] == "skipped"
