"""Server side of one federated run: evaluation, round records and the final artefacts."""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from safetensors.torch import save as save_safetensors
from sklearn.metrics import roc_curve

from fedneg.config import Config
from fedneg.evaluation import EvaluationResult, Evaluator, PairProtocol, balanced_pairs, lfw_pairs
from fedneg.model import build_model
from fedneg.negatives import ServerResources, build_sources
from fedneg.runfolder import CHECKPOINT_FILE, ROC_FILE, SUMMARY_FILE, MetricsLog, PreparedRun, write_atomic
from fedneg.centralized import load_fe_checkpoint
from fedneg.server.fedaws import strategy_class, strategy_options

logger = logging.getLogger("fedneg.server")

# Keys of the per-round summary line, in order, with their short labels.
SUMMARY_KEYS = (
    ("train_loss", "loss"),
    ("pairs.roc_auc", "AUC"),
    ("pairs.eer", "EER"),
    ("pairs.tar@far=1e-02", "TAR@FAR=1e-2"),
    ("lfw.accuracy", "LFW acc"),
    ("mining_purity", "purity"),
)


def build_protocols(prepared: PreparedRun) -> list[PairProtocol]:
    """Balanced pairs over evaluation people, plus LFW's pairs.txt restricted to them."""
    config = prepared.config
    protocols = [balanced_pairs(prepared.identities, prepared.split.evaluation, config.eval.pairs, config.eval.folds, config.seed)]
    if config.eval.lfw_pairs and config.data.pairs_file:
        pairs_file = Path(config.data.pairs_file)
        if pairs_file.is_file():
            protocols.append(lfw_pairs(pairs_file, prepared.data_root, set(prepared.split.evaluation)))
        else:
            logger.warning("eval.lfw_pairs is on but data.pairs_file %s does not exist; LFW protocol skipped", pairs_file)
    return protocols


class RoundFailedError(RuntimeError):
    """No phone of a round returned weights, so the run cannot go on."""


class FederatedServer:
    """Runs the strategy and records every round in the run folder as it finishes."""

    def __init__(self, prepared: PreparedRun) -> None:
        self.prepared = prepared
        self.config: Config = prepared.config
        self.run_dir = prepared.run_dir
        self.metrics_log = MetricsLog(self.run_dir)
        self.evaluations: dict[int, EvaluationResult] = {}
        self.started = time.perf_counter()
        self.round_started = self.started

        self.sources = build_sources(self.config)
        resources = ServerResources(
            config=self.config,
            data_root=prepared.data_root,
            identities=prepared.identities,
            public_people=prepared.split.public,
            run_dir=self.run_dir,
        )
        for source in self.sources:
            source.prepare_server(resources)

        self.evaluator = Evaluator(build_protocols(prepared), self.config.data.crop_size, self.config.data.image_size, self.config.eval.batch_size)
        self.model = build_model(self.config.model, seed=self.config.seed)
        if self.config.model.init_checkpoint:
            load_fe_checkpoint(self.model, self.config.model.init_checkpoint)
        self.strategy = strategy_class(self.config)(
            sources=self.sources,
            clients_per_round=self.config.federation.clients_per_round,
            seed=self.config.seed,
            min_available_nodes=len(prepared.split.owners),
            **strategy_options(self.config),
        )

    def run(self, grid: Grid) -> None:
        federation = self.config.federation
        self.strategy.discover_phones(grid, expected=len(self.prepared.split.owners), timeout=federation.round_timeout)
        initial = ArrayRecord(self.model.state_dict())
        self.strategy.start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=federation.rounds,
            timeout=federation.round_timeout,
            train_config=ConfigRecord({"fedneg-config": self.config.to_json()}),
            evaluate_fn=self.end_of_round,
        )
        self.finish()

    def should_evaluate(self, server_round: int) -> bool:
        return server_round == 0 or server_round % self.config.eval.every == 0 or server_round == self.config.federation.rounds

    def end_of_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Evaluate when due, save the FE, write the round's record and its summary line."""
        self.model.load_state_dict(arrays.to_torch_state_dict())
        record: dict[str, float | int | str | bool] = {"round": server_round}
        train_metrics = self.strategy.train_metrics.get(server_round)
        if train_metrics is not None and train_metrics.get("clients", 0.0) == 0.0:
            raise RoundFailedError(
                f"round {server_round}: every sampled phone failed ({train_metrics.get('failed_clients', 0):.0f}); "
                f"the first error is logged above and in {self.run_dir / 'run.log'}"
            )
        record.update(self.strategy.train_metrics.get(server_round, {}))
        record.update(self.strategy.round_info.get(server_round, {}))
        if server_round in self.strategy.round_phones:
            record["phones"] = " ".join(str(phone) for phone in self.strategy.round_phones[server_round])

        evaluation_metrics: dict[str, float] = {}
        if self.should_evaluate(server_round):
            evaluation = self.evaluator.evaluate(self.model)
            self.evaluations[server_round] = evaluation
            evaluation_metrics = evaluation.as_record()
            record.update(evaluation_metrics)

        now = time.perf_counter()
        record["round_seconds"] = round(now - self.round_started, 3)
        record["elapsed_seconds"] = round(now - self.started, 3)
        self.round_started = now

        self.save_checkpoint()
        self.metrics_log.append(record)
        logger.info(self.summary_line(record))
        return MetricRecord(evaluation_metrics) if evaluation_metrics else None

    def summary_line(self, record: dict) -> str:
        parts = [f"round {record['round']}/{self.config.federation.rounds}"]
        for key, label in SUMMARY_KEYS:
            if key in record:
                parts.append(f"{label} {record[key]:.4f}")
        parts.append(f"({record['round_seconds']:.1f} s)")
        return " | ".join(parts)

    def save_checkpoint(self) -> None:
        state = {key: value.detach().contiguous() for key, value in self.model.state_dict().items()}
        metadata = {"arch": self.config.model.arch, "width": str(self.config.model.width), "embedding_dim": str(self.config.model.embedding_dim)}
        write_atomic(self.run_dir / CHECKPOINT_FILE, save_safetensors(state, metadata=metadata))

    def finish(self) -> None:
        """Write the final ROC plot and a summary of round 0 against the last round.

        The FE is already saved: `end_of_round` loads and saves the global FE every round.
        """
        first, last = min(self.evaluations), max(self.evaluations)
        plot_roc({f"round {first}": self.evaluations[first], f"round {last}": self.evaluations[last]}, self.run_dir / ROC_FILE)

        summary = {
            "rounds": self.config.federation.rounds,
            "seconds": round(time.perf_counter() - self.started, 1),
            f"round_{first}": self.evaluations[first].as_record(),
            f"round_{last}": self.evaluations[last].as_record(),
        }
        write_atomic(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=1))
        logger.info("run folder: %s", self.run_dir)


def format_roc_axis(axis, min_far: float, legend_size: int) -> None:
    """Give a ROC axis its log FAR scale from `min_far` to 1, labels, grid and legend."""
    axis.set_xscale("log")
    axis.set_xlim(min_far, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("FAR (false accept rate)")
    axis.set_ylabel("TAR (true accept rate)")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=legend_size, loc="lower right")


def plot_roc(evaluations: dict[str, EvaluationResult], path: Path) -> None:
    """Plot TAR against FAR (log scale) for every protocol of every labelled evaluation."""
    figure = Figure(figsize=(6, 4.5))
    axis = figure.subplots()
    for label, evaluation in evaluations.items():
        for protocol, scores in evaluation.scores.items():
            far, tar, _ = roc_curve(evaluation.labels[protocol], scores)
            metrics = evaluation.metrics[protocol]
            axis.plot(np.clip(far, 1e-4, 1), tar, label=f"{label}, {protocol} (AUC {metrics.roc_auc:.3f}, {metrics.genuine}+{metrics.impostor} pairs)")
    format_roc_axis(axis, min_far=1e-4, legend_size=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    write_atomic(path, buffer.getvalue())
