"""Face bank store: atomic publish, retention, verified reads and their error messages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from generator.bank import BankCorruptError, BankEmptyError, BankNotFoundError, FaceBank
from generator.testing import real_faces

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return real_faces(40, image_size=32)


def start_publisher(bank: Path, faces: np.ndarray, script: str) -> subprocess.Popen:
    """Run `script` in a child Python process with `bank` (a FaceBank) and `faces` defined."""
    faces_file = bank.parent / "faces.npy"
    np.save(faces_file, faces)
    prelude = textwrap.dedent(
        f"""
        import numpy as np
        from generator.bank import FaceBank
        faces = np.load({str(faces_file)!r})
        bank = FaceBank({str(bank)!r}, create=True)
        """
    )
    return subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(script)], cwd=PROJECT_ROOT)


def test_publish_then_read_round_trip(tmp_path, faces):
    bank = FaceBank(tmp_path / "bank", create=True)
    published = bank.publish(faces, {"backend": "test", "seed": 3}, shard_size=16)

    read = FaceBank(tmp_path / "bank").read_latest()

    assert read.version == published.version == "v000001"
    assert np.array_equal(read.images, faces)
    assert read.manifest["count"] == 40
    assert read.manifest["image_size"] == 32
    assert read.manifest["seed"] == 3
    assert [shard["count"] for shard in read.manifest["shards"]] == [16, 16, 8]
    assert all(len(shard["sha256"]) == 64 for shard in read.manifest["shards"])
    assert read.manifest["created"].endswith("+00:00")


def test_retention_keeps_newest(tmp_path, faces):
    bank = FaceBank(tmp_path / "bank", create=True)
    for start in range(0, 40, 8):
        bank.publish(faces[start : start + 8], {}, keep=2)

    assert bank.versions() == ["v000004", "v000005"]
    assert np.array_equal(bank.read_latest().images, faces[32:])
    assert not [entry for entry in os.listdir(bank.root) if entry.startswith((".tmp-", ".trash-"))]


def test_versions_sort_numerically(tmp_path, faces):
    bank = FaceBank(tmp_path / "bank", create=True)
    bank.publish(faces[:2], {})
    os.rename(bank.root / "v000001", bank.root / "v000009")
    bank.publish(faces[2:4], {})

    assert bank.versions() == ["v000009", "v000010"]
    assert bank.read_latest().version == "v000010"


def test_checksum_mismatch_detected(tmp_path, faces):
    bank = FaceBank(tmp_path / "bank", create=True)
    version = bank.publish(faces, {}, shard_size=16)
    shard = version.path / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0x01
    shard.write_bytes(bytes(data))

    with pytest.raises(BankCorruptError) as caught:
        bank.read_version("v000001")

    message = str(caught.value)
    assert str(shard) in message
    assert "failed its checksum" in message
    assert "delete" in message
    assert "python -m generator.serve" in message


def test_corrupt_shard_reported_unreadable(tmp_path, faces):
    bank = FaceBank(tmp_path / "bank", create=True)
    version = bank.publish(faces, {})
    shard = version.path / "shard-00000.safetensors"
    shard.write_bytes(b"not a safetensors file")

    with pytest.raises(BankCorruptError) as caught:
        bank.read_version("v000001", verify=False)

    assert str(shard) in str(caught.value)
    assert "unreadable" in str(caught.value)


def test_missing_manifest_reported(tmp_path, faces):
    bank = FaceBank(tmp_path / "bank", create=True)
    version = bank.publish(faces, {})
    (version.path / "manifest.json").unlink()

    with pytest.raises(BankCorruptError, match="has no manifest.json"):
        bank.read_version("v000001")


def test_reader_falls_back_and_logs(tmp_path, faces, caplog):
    bank = FaceBank(tmp_path / "bank", create=True)
    bank.publish(faces[:20], {})
    broken = bank.publish(faces[20:], {})
    (broken.path / "shard-00000.safetensors").write_bytes(b"\0" * 100)

    read = bank.read_latest()

    assert read.version == "v000001"
    assert np.array_equal(read.images, faces[:20])
    assert "skipping corrupt version v000002" in caplog.text
    assert "falling back to version v000001" in caplog.text


def test_missing_bank_dir_names_path_and_fix(tmp_path):
    with pytest.raises(BankNotFoundError) as caught:
        FaceBank(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(caught.value)
    assert "python -m generator.serve --bank" in str(caught.value)


def test_empty_bank_dir_names_path_and_fix(tmp_path):
    (tmp_path / "bank").mkdir()
    with pytest.raises(BankEmptyError) as caught:
        FaceBank(tmp_path / "bank").read_latest()
    assert str(tmp_path / "bank") in str(caught.value)
    assert "--once" in str(caught.value)


def test_publish_rejects_bad_images(tmp_path):
    bank = FaceBank(tmp_path / "bank", create=True)
    with pytest.raises(ValueError, match="expected uint8"):
        bank.publish(np.zeros((2, 3, 8, 8), dtype=np.float32), {})
    with pytest.raises(ValueError, match="expected uint8"):
        bank.publish(np.zeros((2, 8, 8, 3), dtype=np.uint8), {})


def test_publish_killed_mid_write_keeps_old_version(tmp_path, faces):
    bank_dir = tmp_path / "bank"
    old = FaceBank(bank_dir, create=True).publish(faces[:10], {"backend": "old"})

    # One face per shard and 4,000 faces: the child fsyncs thousands of files, so it is
    # still writing when the parent kills it.
    child = start_publisher(bank_dir, faces, "bank.publish(np.concatenate([faces] * 100), {'backend': 'new'}, shard_size=1)")
    try:
        deadline = time.monotonic() + 60
        staged = []
        while time.monotonic() < deadline and child.poll() is None:
            staged = [path for path in bank_dir.glob(".tmp-*/shard-*.safetensors")]
            if len(staged) >= 5:
                break
            time.sleep(0.01)
        assert child.poll() is None, "the publisher finished before it could be killed"
        assert len(staged) >= 5, "the publisher never started writing shards"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    bank = FaceBank(bank_dir)
    assert bank.versions() == ["v000001"]
    read = bank.read_latest()
    assert read.version == old.version
    assert read.manifest["backend"] == "old"
    assert np.array_equal(read.images, faces[:10])
    assert list(bank_dir.glob(".tmp-*")), "the killed publish should have left its staging folder"

    bank.publish(faces[10:20], {"backend": "next"})
    assert bank.versions() == ["v000001", "v000002"]
    assert not list(bank_dir.glob(".tmp-*"))


def test_reader_during_refresh_sees_complete_versions(tmp_path, faces):
    bank_dir = tmp_path / "bank"
    FaceBank(bank_dir, create=True).publish(faces, {"round": 0})
    child = start_publisher(
        bank_dir,
        faces,
        """
        import time
        for round_index in range(1, 11):
            bank.publish(np.roll(faces, round_index, axis=0), {'round': round_index}, shard_size=4, keep=2)
            time.sleep(0.05)
        """,
    )

    reader = FaceBank(bank_dir)
    seen = set()
    try:
        while child.poll() is None:
            version = reader.read_latest()
            expected = np.roll(faces, version.manifest["round"], axis=0)
            assert np.array_equal(version.images, expected), f"version {version.version} differs from what was published"
            seen.add(version.version)
    finally:
        child.wait(timeout=60)

    assert child.returncode == 0
    assert reader.read_latest().manifest["round"] == 10
    assert len(seen) >= 2, "the reader should have seen the bank change while it ran"
    assert len(reader.versions()) == 2


def test_manifest_is_json_with_store_fields(tmp_path, faces):
    bank = FaceBank(tmp_path / "bank", create=True)
    version = bank.publish(faces[:4], {"backend": "ddpm", "model": {"path": "/m", "sha256": "ab"}})
    manifest = json.loads((version.path / "manifest.json").read_text())
    for key in ("format", "version", "count", "image_size", "created", "shards", "backend", "model"):
        assert key in manifest, key
