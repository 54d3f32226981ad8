"""Flower ServerApp: `fedneg.server.app:app`.

Run configuration keys (from `python -m fedneg.simulate`, or `[tool.flwr.app.config]` and
`flwr run --run-config` on a deployment):
- `config-json`: the resolved experiment config as JSON (what `fedneg.simulate` passes);
- `config`: else, a YAML config path, with `overrides`: space-separated `key=value` items;
- `run-dir`: the run folder (default: `output.runs_dir/<name>-<timestamp>`).
"""

from __future__ import annotations

import json
import logging
import random
import shlex
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedneg.config import Config, config_from_dict, load_config
from fedneg.runfolder import prepare_run
from fedneg.server.run import FederatedServer

logger = logging.getLogger("fedneg.server")

app = ServerApp()


def config_from_run_config(run_config: dict) -> Config:
    """Build the experiment config from a Flower run config (see the module docstring)."""
    if "config-json" in run_config:
        return config_from_dict(json.loads(str(run_config["config-json"])))
    overrides = shlex.split(str(run_config.get("overrides", "")))
    return load_config(str(run_config["config"]) if "config" in run_config else None, overrides)


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = config_from_run_config(dict(context.run_config))
    run_dir = Path(str(context.run_config["run-dir"])) if "run-dir" in context.run_config else None
    random.seed(config.seed)

    prepared = prepare_run(config, run_dir)
    logger.info("run %s: %d phones, %d rounds, negatives %s", prepared.run_dir, len(prepared.phones), config.federation.rounds, config.negatives.sources)
    FederatedServer(prepared).run(grid)
