"""Quality filter and figures: MTCNN face check, near-duplicates, diversity, kernel distance."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

from fedneg.config import ModelConfig
from fedneg.model import build_model, state_to_numpy
from generator.backends.base import GeneratorError
from generator.quality import (
    FaceDetector,
    FEEmbedder,
    OnetEmbedder,
    build_embedder,
    drop_near_duplicates,
    filter_faces,
    kernel_distance,
    mean_pairwise_cosine,
)
from generator.testing import real_faces


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return real_faces(12, image_size=64)


def unit_vectors(count: int, dimension: int, seed: int, shift: float = 0.0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, dimension)) + shift
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_mean_pairwise_cosine_matches_brute_force():
    vectors = unit_vectors(30, 8, seed=0)
    similarities = vectors @ vectors.T
    expected = similarities[~np.eye(30, dtype=bool)].mean()
    assert mean_pairwise_cosine(vectors) == pytest.approx(expected)


def test_drop_near_duplicates_keeps_first_copy():
    vectors = unit_vectors(5, 8, seed=1)
    with_copies = np.concatenate([vectors, vectors[[1, 3]]])
    assert drop_near_duplicates(with_copies, threshold=0.999).tolist() == [0, 1, 2, 3, 4]


def test_kernel_distance_orders_sets():
    reference = unit_vectors(200, 16, seed=2)
    same = unit_vectors(200, 16, seed=3)
    shifted = unit_vectors(200, 16, seed=4, shift=0.5)
    assert abs(kernel_distance(same, reference)) < kernel_distance(shifted, reference)
    assert kernel_distance(shifted, reference) > 0


def test_kernel_distance_needs_two_per_set():
    with pytest.raises(ValueError, match="at least 2 embeddings"):
        kernel_distance(unit_vectors(1, 4, seed=0), unit_vectors(5, 4, seed=0))


def test_filter_drops_noise_and_copies(faces):
    pytest.importorskip("facenet_pytorch", reason="the face check needs facenet-pytorch")
    noise = np.random.default_rng(0).integers(0, 256, size=(6, 3, 64, 64), dtype=np.uint8)
    flat = np.full((2, 3, 64, 64), 128, dtype=np.uint8)
    images = np.concatenate([faces, noise, flat, faces[:3]])

    result = filter_faces(images, OnetEmbedder(), FaceDetector())

    assert result.kept.tolist() == list(range(12))
    assert result.dropped_not_face == 8
    assert result.dropped_duplicate == 3
    assert result.details["detector"] == "mtcnn"
    assert -1.0 <= result.mean_pairwise_cosine <= 1.0


def test_filter_without_detector_keeps_non_faces(faces):
    noise = np.random.default_rng(1).integers(0, 256, size=(3, 3, 64, 64), dtype=np.uint8)
    result = filter_faces(np.concatenate([faces, noise]), FEEmbedder(), detector=None)
    assert result.dropped_not_face == 0
    assert result.details["detector"] is None


def test_embedder_loads_fe_weights(tmp_path, faces):
    model = build_model(ModelConfig(), seed=5)
    path = tmp_path / "fe.safetensors"
    save_file(dict(state_to_numpy(model)), str(path))

    embedder = FEEmbedder(str(path))

    assert str(path) in embedder.description
    embeddings = embedder(faces)
    assert embeddings.shape == (12, 128)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_embedder_missing_weights_names_path(tmp_path):
    with pytest.raises(GeneratorError, match=f"FE weights not found: {tmp_path / 'fe.safetensors'}"):
        FEEmbedder(str(tmp_path / "fe.safetensors"))


def test_embedder_mismatched_weights_rejected(tmp_path):
    path = tmp_path / "fe.safetensors"
    save_file({"head.weight": np.zeros((4, 4), dtype=np.float32)}, str(path))
    with pytest.raises(GeneratorError, match="do not fit the default FE"):
        FEEmbedder(str(path))


def test_onet_separates_copies_from_people():
    pytest.importorskip("facenet_pytorch", reason="the O-Net embedding needs facenet-pytorch")
    people = real_faces(40, image_size=64)
    noisy = np.clip(people.astype(np.float64) + np.random.default_rng(0).normal(0, 3, people.shape), 0, 255).astype(np.uint8)
    embedder = OnetEmbedder()

    clean, copies = embedder(people), embedder(noisy)

    copy_similarity = (clean * copies).sum(axis=1)
    distinct = clean @ clean.T
    assert copy_similarity.min() > 0.995
    assert distinct[~np.eye(40, dtype=bool)].max() < 0.995


def test_onet_kernel_distance_ranks_noise_worst():
    pytest.importorskip("facenet_pytorch", reason="the O-Net embedding needs facenet-pytorch")
    embedder = OnetEmbedder()
    reference = embedder.features(real_faces(60, image_size=64))
    other_people = embedder.features(real_faces(60, image_size=64, offset=60))
    noise = embedder.features(np.random.default_rng(0).integers(0, 256, size=(60, 3, 64, 64), dtype=np.uint8))

    assert kernel_distance(other_people, reference) < kernel_distance(noise, reference)


def test_build_embedder_prefers_fe_weights(tmp_path):
    model = build_model(ModelConfig(), seed=1)
    path = tmp_path / "fe.safetensors"
    save_file(dict(state_to_numpy(model)), str(path))
    assert isinstance(build_embedder(str(path)), FEEmbedder)
