"""Run a federated simulation: `python -m fedneg.simulate --config configs/default.yaml [key=value ...]`.

The ServerApp (`fedneg.server.app`) and ClientApp (`clients.client_app`) run on Flower's
simulation engine (Ray), one virtual SuperNode per phone. Everything the run produces lands
in its run folder; see the README for the files.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path

# Opt out of Flower telemetry and Ray usage reporting unless the user chose otherwise;
# this must happen before flwr or ray is imported.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Without this, Ray replaces 127.0.0.1 with the machine's reachable address (Ray 2.55).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

from tqdm import tqdm  # noqa: E402

from fedneg.config import Config, ConfigError, load_config  # noqa: E402
from fedneg.runfolder import LOG_FILE, SUMMARY_FILE, prepare_run, read_metrics  # noqa: E402

logger = logging.getLogger("fedneg.simulate")

EXIT_CONFIG_ERROR = 2
EXIT_INTERRUPTED = 130


class SimulationError(RuntimeError):
    """The simulation ended without finishing its rounds."""


def backend_config(config: Config) -> dict:
    """Ray settings: CPUs per client, no dashboard, the node bound to 127.0.0.1."""
    init_args: dict = {
        "include_dashboard": False,
        "_node_ip_address": "127.0.0.1",
        "log_to_driver": True,
    }
    if config.federation.num_cpus is not None:
        init_args["num_cpus"] = config.federation.num_cpus
    return {
        "client_resources": {"num_cpus": config.federation.client_cpus, "num_gpus": 0.0},
        "init_args": init_args,
    }


def route_flower_logs(verbose: bool) -> None:
    """Send Flower's log records through the root handlers only, at WARNING unless verbose.

    Flower installs its own console handler on the `flwr` logger at import time. Without
    this, every Flower line would print twice, and its per-round INFO lines would bury ours.
    """
    flower_logger = logging.getLogger("flwr")
    flower_logger.handlers = []
    flower_logger.propagate = True
    flower_logger.setLevel(logging.DEBUG if verbose else logging.WARNING)


def run_simulation_from_config(config: Config, run_dir: Path | None = None, verbose: bool = False) -> Path:
    """Prepare the run folder, run every round on the simulation engine, return the folder.

    Raises:
        ConfigError: the config or data root is invalid (raised before Ray starts).
        SimulationError: the run ended before its last round was recorded.
    """
    prepared = prepare_run(config, run_dir)
    run_dir = prepared.run_dir
    log_handler = attach_run_log(run_dir)
    try:
        from flwr.app import Context, RecordDict
        from flwr.simulation.run_simulation import _run_simulation
        from flwr.supercore.telemetry import EventType

        from clients.client_app import app as client_app
        from fedneg.server.app import app as server_app

        route_flower_logs(verbose)

        # NOTE: `_run_simulation` is Flower's internal entry (1.42); the public
        # `run_simulation` cannot pass a run config to the ServerApp. Revisit on upgrade.
        context = Context(
            run_id=0,
            node_id=0,
            node_config={},
            state=RecordDict(),
            run_config={"config-json": prepared.config.to_json(), "run-dir": str(run_dir.resolve())},
        )
        _run_simulation(
            num_supernodes=len(prepared.phones),
            exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
            client_app=client_app,
            server_app=server_app,
            backend_config=backend_config(prepared.config),
            server_app_context=context,
        )
    except (ConfigError, KeyboardInterrupt):
        raise
    except Exception as error:  # the ServerApp's own error arrives here from Flower's thread
        logger.exception("simulation failed")
        raise SimulationError(f"the simulation failed: {error}; the traceback is in {run_dir / LOG_FILE}") from error
    finally:
        logging.getLogger().removeHandler(log_handler)
        log_handler.close()

    if not (run_dir / SUMMARY_FILE).is_file():
        raise SimulationError(f"the simulation stopped before its last round; see {run_dir / LOG_FILE} for the error")
    return run_dir


class _TqdmHandler(logging.Handler):
    """Print log lines above the progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


LOG_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")


def attach_run_log(run_dir: Path) -> logging.Handler:
    """Copy every log record of the run into `<run_dir>/run.log` (appending on a rerun)."""
    handler = logging.FileHandler(run_dir / LOG_FILE)
    handler.setFormatter(LOG_FORMAT)
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    return handler


def setup_logging(verbose: bool) -> None:
    """Console logging for the command line, drawn above the progress bar."""
    console = _TqdmHandler()
    console.setFormatter(LOG_FORMAT)
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.handlers = [console]
    for noisy in ("matplotlib", "PIL", "filelock", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _watch_progress(run_dir: Path, rounds: int, stop: threading.Event) -> None:
    """Advance a progress bar as round records appear in the run folder."""
    with tqdm(total=rounds, desc="rounds", unit="round", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        while not stop.wait(1.0):
            done = max((record["round"] for record in read_metrics(run_dir)), default=0)
            bar.update(done - bar.n)
        done = max((record["round"] for record in read_metrics(run_dir)), default=0)
        bar.update(done - bar.n)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fedneg.simulate", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.yaml", help="experiment YAML file (default: %(default)s)")
    parser.add_argument("--run-dir", default=None, help="run folder (default: output.runs_dir/<config name>-<timestamp>)")
    parser.add_argument("--verbose", action="store_true", help="debug logging, Flower's round logs included")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. federation.rounds=4 negatives.sources=[public]")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, args.overrides)
        prepared = prepare_run(config, Path(args.run_dir) if args.run_dir else None)
    except ConfigError as error:
        logger.error("%s", error)
        return EXIT_CONFIG_ERROR

    run_dir = prepared.run_dir
    setup_logging(args.verbose)
    logger.info("run folder %s: %d phones, %d rounds, negatives %s", run_dir, len(prepared.phones), config.federation.rounds, config.negatives.sources)

    stop = threading.Event()
    watcher = threading.Thread(target=_watch_progress, args=(run_dir, config.federation.rounds, stop), daemon=True)
    watcher.start()
    started = time.perf_counter()
    try:
        run_simulation_from_config(config, run_dir, verbose=args.verbose)
    except KeyboardInterrupt:
        finished = [record["round"] for record in read_metrics(run_dir)]
        logger.warning("interrupted; %s keeps rounds %s", run_dir, finished or "none")
        stop.set()
        logging.shutdown()
        # The ServerApp thread still waits on the stopped simulation engine and would keep
        # the interpreter alive. Every run-folder file is replaced atomically, so exiting
        # here cannot leave a partial file.
        os._exit(EXIT_INTERRUPTED)
    except (SimulationError, ConfigError) as error:
        logger.error("%s", error)
        return 1
    finally:
        stop.set()
        watcher.join(timeout=5)

    logger.info("finished in %.0f s; results in %s", time.perf_counter() - started, run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
