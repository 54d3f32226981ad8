"""Shared test setup: telemetry off, Ray on loopback, the real LFW data root."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

import pytest  # noqa: E402

# Helper modules in this folder (for example `_compare_smoke`) import as top-level modules.
sys.path.insert(0, str(Path(__file__).parent))

from fedneg.config import ConfigError  # noqa: E402
from fedneg.data import resolve_data_root, scan_identities  # noqa: E402

PROJECT_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The identity-folder data set the tests run on (LFW); see the README to get it."""
    try:
        return resolve_data_root(None)
    except ConfigError as error:
        pytest.fail(f"the tests need real face photos: {error}")


@pytest.fixture(scope="session")
def identities(data_root: Path) -> dict[str, list[str]]:
    return scan_identities(data_root)


@pytest.fixture(autouse=True)
def _project_cwd(monkeypatch):
    """Run every test from the project folder, so `configs/...` paths resolve."""
    monkeypatch.chdir(PROJECT_DIR)
