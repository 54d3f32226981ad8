"""The face bank service: one-shot and scheduled refreshes, SIGTERM, failed refreshes, bad input."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from generator import serve
from generator.backends.base import FaceGenerator
from generator.bank import FaceBank
from generator.testing import real_faces, save_tiny_ddpm_pipeline

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def run_serve(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "generator.serve", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("30s", 30.0), ("10m", 600.0), ("2h", 7200.0), ("0.5s", 0.5)])
def test_parse_duration(text, seconds):
    assert serve.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "-5m", "0", "m"])
def test_parse_duration_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError, match="invalid duration"):
        serve.parse_duration(text)


@pytest.mark.slow
def test_once_publishes_filtered_version(tmp_path):
    pytest.importorskip("gan_face_generate", reason="install the dcgan extra: pip install --no-deps gan-face-generate")
    pytest.importorskip("facenet_pytorch", reason="the face check needs facenet-pytorch")
    bank_dir = tmp_path / "bank"

    completed = run_serve("--bank", str(bank_dir), "--backend", "dcgan", "--count", "30", "--once", "--threads", "1")

    assert completed.returncode == 0, completed.stderr
    assert "refresh: version v000001" in completed.stderr
    manifest = FaceBank(bank_dir).read_latest().manifest
    assert manifest["backend"] == "dcgan"
    assert 0 < manifest["count"] <= 30
    assert manifest["generated"] == 33
    assert manifest["filter"]["detector"] == "mtcnn"
    passed = manifest["generated"] - manifest["filter"]["dropped_not_face"] - manifest["filter"]["dropped_duplicate"]
    assert manifest["count"] == min(30, passed)
    assert -1.0 <= manifest["diversity"]["mean_pairwise_cosine"] <= 1.0
    assert manifest["quality"]["kernel_distance"] > -1.0
    assert len(manifest["model"]["sha256"]) == 64


@pytest.mark.slow
def test_sigterm_stops_after_current_write(tmp_path):
    model = save_tiny_ddpm_pipeline(tmp_path / "model")
    bank_dir = tmp_path / "bank"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "generator.serve", "--bank", str(bank_dir), "--backend", "ddpm", "--model", str(model),
            "--steps", "2", "--count", "8", "--every", "0.05s", "--keep", "3", "--no-face-check", "--no-quality", "--threads", "1",
        ],
        cwd=PROJECT_ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (bank_dir / "v000002").exists() and process.poll() is None:
            time.sleep(0.02)
        assert process.poll() is None, process.stderr.read()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()

    assert process.returncode == 0, stderr
    assert "received SIGTERM" in stderr
    assert "face bank service stopped" in stderr
    bank = FaceBank(bank_dir)
    assert bank.read_latest().manifest["count"] == 8
    assert not [name for name in os.listdir(bank_dir) if name.startswith(".tmp-")]


class FailingGenerator(FaceGenerator):
    """Error-handling double: a generator whose sampling fails like an out-of-memory error."""

    name = "failing"
    model_path = None

    def generate(self, count: int, size: int, seed: int) -> np.ndarray:
        raise MemoryError("simulated out of memory while sampling")

    def save(self, directory):
        raise NotImplementedError

    @classmethod
    def load(cls, directory, **settings):
        return cls()

    def settings(self):
        return {}


def test_failed_refresh_keeps_previous_version(tmp_path, monkeypatch, caplog):
    bank = FaceBank(tmp_path / "bank", create=True)
    faces = real_faces(6)
    bank.publish(faces, {"backend": "earlier"})
    monkeypatch.setattr(serve, "load_backend", lambda name, model, **settings: FailingGenerator())

    with caplog.at_level(logging.INFO):
        code = serve.main(["--bank", str(bank.root), "--backend", "ddpm", "--count", "4", "--once", "--no-face-check", "--no-quality"])

    assert code == 1
    assert "refresh failed (1 so far); the bank keeps its previous versions" in caplog.text
    assert "simulated out of memory" in caplog.text
    assert bank.versions() == ["v000001"]
    assert np.array_equal(bank.read_latest().images, faces)


def test_unknown_backend_exits_with_message(tmp_path, caplog):
    code = serve.main(["--bank", str(tmp_path / "bank"), "--backend", "stylegan", "--once"])

    assert code == 2
    assert "unknown generator backend: 'stylegan'; allowed: dcgan, ddpm, pretrained" in caplog.text


def test_not_a_model_dir_exits_with_path(tmp_path, caplog):
    folder = tmp_path / "weights"
    folder.mkdir()

    code = serve.main(["--bank", str(tmp_path / "bank"), "--backend", "pretrained", "--model", str(folder), "--once"])

    assert code == 2
    assert f"not a diffusers model: {folder} has no model_index.json" in caplog.text


def test_invalid_count_exits(tmp_path, caplog):
    assert serve.main(["--bank", str(tmp_path / "bank"), "--backend", "dcgan", "--count", "0", "--once"]) == 2
    assert "invalid --count: 0" in caplog.text


class NoFaceDetector:
    """Error-handling double: a detector that finds no face in any image."""

    name = "none-found"

    def face_probabilities(self, images: np.ndarray) -> np.ndarray:
        return np.zeros(images.shape[0])


def test_refresh_all_filtered_publishes_nothing(tmp_path):
    from generator.backends import GeneratorError, load_backend
    from generator.quality import build_embedder
    from generator.refresh import RefreshSettings, refresh_bank

    model = load_backend("pretrained", str(save_tiny_ddpm_pipeline(tmp_path / "tiny")), steps=2)
    bank = FaceBank(tmp_path / "bank", create=True)
    bank.publish(real_faces(4), {"backend": "earlier"})

    with pytest.raises(GeneratorError, match="passed the filter"):
        refresh_bank(bank, model, RefreshSettings(count=4), build_embedder(), NoFaceDetector())

    assert bank.versions() == ["v000001"]
