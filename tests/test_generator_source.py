"""The `synthetic` negative source against real face banks of real LFW faces."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from fedneg.config import ConfigError, config_from_dict
from fedneg.data import PhoneImages
from fedneg.negatives import ServerResources, source_class
from generator.bank import BankCorruptError, BankEmptyError, BankNotFoundError, FaceBank
from generator.source import SyntheticNegatives, parse_settings
from generator.testing import real_faces


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """24 real faces at 48 px, so the source has to resize them to the experiment's 64 px."""
    return real_faces(24, image_size=48)


def make_config(bank: Path | str | None, **extra):
    plugin = {} if bank is None else {"bank": str(bank)}
    plugin.update(extra)
    return config_from_dict({"negatives": {"sources": ["bystander", "synthetic"], "plugins": {"synthetic": plugin}}})


def resources(config) -> ServerResources:
    return ServerResources(config=config, data_root=Path("."), identities={}, public_people=[])


def empty_phone(image_size: int) -> PhoneImages:
    empty = torch.empty((0, 3, image_size, image_size), dtype=torch.uint8)
    return PhoneImages(phone_id=0, enrollment=empty, gallery=empty, gallery_identities=[], owner="nobody")


def test_registry_finds_synthetic_entry_point():
    assert source_class("synthetic") is SyntheticNegatives


def test_round_payload_samples_newest_version(tmp_path, faces):
    bank = FaceBank(tmp_path / "bank", create=True)
    bank.publish(faces[:12], {"backend": "test"})
    bank.publish(faces[12:], {"backend": "test"})
    config = make_config(tmp_path / "bank", per_round=5)
    source = SyntheticNegatives(config)
    source.prepare_server(resources(config))

    payload = source.round_payload(1, np.random.default_rng(0))

    assert payload.info == {"bank_version": "v000002", "faces": 5}
    assert payload.arrays["images"].shape == (5, 3, 64, 64)
    assert payload.arrays["images"].dtype == np.uint8
    assert payload.arrays["groups"].tolist() == [0, 1, 2, 3, 4]


def test_per_round_capped_by_bank_size(tmp_path, faces):
    FaceBank(tmp_path / "bank", create=True).publish(faces[:3], {})
    config = make_config(tmp_path / "bank", per_round=64)
    source = SyntheticNegatives(config)
    source.prepare_server(resources(config))

    payload = source.round_payload(1, np.random.default_rng(0))

    assert payload.info["faces"] == 3


def test_phone_negatives_one_group_per_face(tmp_path, faces):
    FaceBank(tmp_path / "bank", create=True).publish(faces, {})
    config = make_config(tmp_path / "bank", per_round=8)
    source = SyntheticNegatives(config)
    source.prepare_server(resources(config))
    payload = source.round_payload(1, np.random.default_rng(0))

    negatives = source.phone_negatives(payload, empty_phone(64), torch.nn.Identity(), np.random.default_rng(0))

    assert negatives.images.shape == (8, 3, 64, 64)
    assert negatives.groups.tolist() == list(range(8))
    assert negatives.positives is None


def test_phone_negatives_without_payload_raises(tmp_path, faces):
    FaceBank(tmp_path / "bank", create=True).publish(faces, {})
    source = SyntheticNegatives(make_config(tmp_path / "bank"))
    with pytest.raises(ValueError, match="carries no synthetic faces"):
        source.phone_negatives(None, empty_phone(64), torch.nn.Identity(), np.random.default_rng(0))


def test_follows_new_version_between_rounds(tmp_path, faces):
    bank = FaceBank(tmp_path / "bank", create=True)
    bank.publish(faces[:12], {})
    config = make_config(tmp_path / "bank", per_round=4)
    source = SyntheticNegatives(config)
    source.prepare_server(resources(config))
    assert source.round_payload(1, np.random.default_rng(0)).info["bank_version"] == "v000001"

    bank.publish(faces[12:], {})

    assert source.round_payload(2, np.random.default_rng(0)).info["bank_version"] == "v000002"


def test_keeps_last_good_when_newest_corrupt(tmp_path, faces, caplog):
    bank = FaceBank(tmp_path / "bank", create=True)
    bank.publish(faces[:12], {})
    config = make_config(tmp_path / "bank", per_round=4)
    source = SyntheticNegatives(config)
    source.prepare_server(resources(config))
    broken = bank.publish(faces[12:], {})
    shard = broken.path / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))

    with caplog.at_level(logging.ERROR, logger="generator.source"):
        payload = source.round_payload(2, np.random.default_rng(0))

    assert payload.info["bank_version"] == "v000001"
    assert "v000002 is unusable" in caplog.text
    assert "checksum" in caplog.text


def test_keeps_last_good_when_bank_emptied(tmp_path, faces):
    bank = FaceBank(tmp_path / "bank", create=True)
    bank.publish(faces, {})
    config = make_config(tmp_path / "bank", per_round=4)
    source = SyntheticNegatives(config)
    source.prepare_server(resources(config))

    bank.prune(keep=1)
    for version in bank.versions():
        (tmp_path / "bank" / version / "manifest.json").unlink()

    assert source.round_payload(2, np.random.default_rng(0)).info["bank_version"] == "v000001"


def test_prepare_falls_back_to_older_version(tmp_path, faces):
    bank = FaceBank(tmp_path / "bank", create=True)
    bank.publish(faces[:12], {})
    broken = bank.publish(faces[12:], {})
    (broken.path / "manifest.json").write_text("{not json")
    config = make_config(tmp_path / "bank")
    source = SyntheticNegatives(config)

    source.prepare_server(resources(config))

    assert source.current.version == "v000001"


def test_prepare_missing_bank_names_path_and_fix(tmp_path):
    config = make_config(tmp_path / "absent")
    source = SyntheticNegatives(config)
    with pytest.raises(BankNotFoundError) as caught:
        source.prepare_server(resources(config))
    assert str(tmp_path / "absent") in str(caught.value)
    assert "python -m generator.serve" in str(caught.value)


def test_prepare_empty_bank_names_path_and_fix(tmp_path):
    (tmp_path / "bank").mkdir()
    config = make_config(tmp_path / "bank")
    source = SyntheticNegatives(config)
    with pytest.raises(BankEmptyError) as caught:
        source.prepare_server(resources(config))
    assert str(tmp_path / "bank") in str(caught.value)
    assert "--once" in str(caught.value)


def test_prepare_all_versions_corrupt_raises(tmp_path, faces):
    bank = FaceBank(tmp_path / "bank", create=True)
    version = bank.publish(faces, {})
    (version.path / "shard-00000.safetensors").write_bytes(b"\0" * 64)
    config = make_config(tmp_path / "bank")
    with pytest.raises(BankCorruptError, match="checksum"):
        SyntheticNegatives(config).prepare_server(resources(config))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (None, "missing negatives.plugins.synthetic"),
        ("bank", "expected a mapping"),
        ({}, "negatives.plugins.synthetic.bank: None"),
        ({"bank": ""}, "negatives.plugins.synthetic.bank"),
        ({"bank": "/b", "per_round": 0}, "negatives.plugins.synthetic.per_round: 0"),
        ({"bank": "/b", "per_round": "8"}, "negatives.plugins.synthetic.per_round: '8'"),
        ({"bank": "/b", "verify": "yes"}, "negatives.plugins.synthetic.verify"),
        ({"bank": "/b", "size": 64}, "unknown config key 'negatives.plugins.synthetic.size'"),
    ],
)
def test_settings_validation(values, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_settings(values)


def test_constructor_rejects_missing_settings():
    config = config_from_dict({"negatives": {"sources": ["synthetic"]}})
    with pytest.raises(ConfigError, match="missing negatives.plugins.synthetic"):
        SyntheticNegatives(config)
