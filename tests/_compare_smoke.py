"""One real run of `configs/compare-smoke.yaml`, shared by the comparison and design tests.

The grid trains every round design, FedAwS and the centralized baseline for 2 rounds on
8 phones with 32 px faces: a few minutes on 2 CPU cores, paid once per test session.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedneg.compare import CompareConfig, parse_compare_config, run_grid
from fedneg.report import write_report

SMOKE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "compare-smoke.yaml"

_cache: dict[str, tuple[CompareConfig, dict[str, str]]] = {}


def smoke_grid(base_dir: Path) -> tuple[CompareConfig, dict[str, str]]:
    """Run the smoke grid once into `base_dir` and write its report; return config and statuses."""
    if "grid" not in _cache:
        os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        config = parse_compare_config(SMOKE_CONFIG, [f"results_dir={base_dir / 'results'}", f"report_dir={base_dir / 'report'}"])
        statuses = run_grid(config)
        write_report(config)
        _cache["grid"] = (config, statuses)
    return _cache["grid"]
