"""Image loading, unreadable files, and LFW's pairs.txt restricted to untrained people."""

from __future__ import annotations

import logging

import numpy as np
import torch

from fedneg.config import load_config
from fedneg.data import augment, load_faces, normalize
from fedneg.evaluation import Evaluator, balanced_pairs, lfw_pairs
from fedneg.model import build_model
from fedneg.split import split_people


def test_load_faces_crops_and_resizes(identities):
    paths = identities["Aaron_Peirsol"]
    images, kept = load_faces(paths, crop_size=128, image_size=48)
    assert images.shape == (len(paths), 3, 48, 48)
    assert images.dtype == torch.uint8
    assert kept == list(range(len(paths)))


def test_unreadable_images_skipped_with_count(tmp_path, identities, caplog):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG body")
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    paths = [identities["Aaron_Peirsol"][0], str(corrupt), identities["Aaron_Peirsol"][1], str(text)]

    with caplog.at_level(logging.WARNING, logger="fedneg.data"):
        images, kept = load_faces(paths, crop_size=128, image_size=32)

    assert images.shape[0] == 2
    assert kept == [0, 2]
    assert "skipped 2 unreadable image(s) of 4" in caplog.text
    assert "corrupt.jpg" in caplog.text


def test_augment_is_seeded_and_keeps_shape(identities):
    images, _ = load_faces(identities["Aaron_Peirsol"], 128, 32)
    first = augment(images, torch.Generator().manual_seed(0))
    second = augment(images, torch.Generator().manual_seed(0))
    assert torch.equal(first, second)
    assert first.shape == images.shape
    assert normalize(first).abs().max() <= 1.0


def test_lfw_pairs_restricted_to_allowed_people(data_root):
    everyone = {path.name for path in data_root.iterdir() if path.is_dir()}
    full = lfw_pairs(data_root.parent / "pairs.txt", data_root, everyone)
    assert len(full) == 6000
    assert int(full.labels.sum()) == 3000
    assert sorted(set(full.folds.tolist())) == list(range(10))
    assert full.first[0].endswith("_0001.jpg") or full.first[0].endswith(".jpg")

    without_bush = everyone - {"George_W_Bush"}
    restricted = lfw_pairs(data_root.parent / "pairs.txt", data_root, without_bush)
    assert len(restricted) < 6000
    assert not any("George_W_Bush" in path for path in restricted.first + restricted.second)
    assert "of 6000 pairs.txt pairs kept" in restricted.note


def test_balanced_pairs_are_balanced_and_seeded(identities):
    config = load_config("configs/default.yaml")
    people = split_people(identities, config).evaluation
    pairs = balanced_pairs(identities, people, count=300, folds=10, seed=0)
    assert int(pairs.labels.sum()) == 300
    assert int((pairs.labels == 0).sum()) == 300
    assert pairs.first == balanced_pairs(identities, people, count=300, folds=10, seed=0).first
    for first, second, label in zip(pairs.first, pairs.second, pairs.labels):
        same_person = first.rsplit("/", 2)[1] == second.rsplit("/", 2)[1]
        assert same_person == bool(label)


def test_evaluator_reports_pair_counts(identities):
    config = load_config("configs/default.yaml", ["data.image_size=32"])
    people = split_people(identities, config).evaluation
    evaluator = Evaluator([balanced_pairs(identities, people, count=50, folds=5, seed=0)], 128, 32)
    result = evaluator.evaluate(build_model(config.model, seed=0))
    metrics = result.metrics["pairs"]
    assert (metrics.genuine, metrics.impostor) == (50, 50)
    assert 0.0 <= metrics.roc_auc <= 1.0
    assert np.isfinite(result.as_record()["pairs.tar@far=1e-02"])
