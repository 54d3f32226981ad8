"""Margin-softmax objectives: value and embedding gradient against closed forms.

Every case uses a 2-D embedding x = (cos phi, sin phi) with phi = 60 degrees, two classes
with unit columns w0 = (1, 0) (the owner, the true class) and w1 = (0, 1), and scale s = 2.
Then theta_0 = phi and cos(theta_1) = sin(phi). With logits z0 (true) and z1 and
p1 = softmax(z)[1], the loss is log(1 + exp(z1 - z0)) and dL/dz0 = -p1, dL/dz1 = p1.
On the unit circle d/dphi moves x along t = (-sin phi, cos phi); a logit that scales with
the embedding norm r also has a radial part along x.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedneg.config import TrainConfig
from fedneg.fedaws import FedAwSObjective, spreadout_penalty, spreadout_step
from fedneg.losses import OBJECTIVES, build_objective
from fedneg.margin import (
    OWNER_CENTER,
    OWNER_WEIGHT,
    ArcFaceObjective,
    CenterObjective,
    CosFaceObjective,
    SphereFaceObjective,
)

PHI = math.pi / 3
SCALE = 2.0


def make_config(loss: str, margin: float | None = None, center_weight: float = 0.1) -> TrainConfig:
    config = TrainConfig(loss=loss)
    config.classifier.scale = SCALE
    config.classifier.margin = margin
    config.classifier.center_weight = center_weight
    return config


def two_class_case(objective) -> tuple[torch.Tensor, torch.Tensor]:
    """Set the classifier to w0 = (1, 0), w1 = (0, 1); return (loss, gradient wrt x)."""
    with torch.no_grad():
        objective.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    x = torch.tensor([[math.cos(PHI), math.sin(PHI)]], requires_grad=True)
    loss = objective(x, torch.tensor([0]))
    loss.backward()
    return loss.detach(), x.grad[0]


def softmax_tail(z0: float, z1: float) -> tuple[float, float]:
    """Return (log(1 + exp(z1 - z0)), p1) for two logits."""
    p1 = 1.0 / (1.0 + math.exp(z0 - z1))
    return math.log1p(math.exp(z1 - z0)), p1


def tangent() -> torch.Tensor:
    return torch.tensor([-math.sin(PHI), math.cos(PHI)])


def radial() -> torch.Tensor:
    return torch.tensor([math.cos(PHI), math.sin(PHI)])


def test_arcface_value_and_gradient():
    margin = 0.5
    loss, gradient = two_class_case(ArcFaceObjective(make_config("arcface", margin), 2, embedding_dim=2))

    z0, z1 = SCALE * math.cos(PHI + margin), SCALE * math.sin(PHI)
    expected_loss, p1 = softmax_tail(z0, z1)
    # dz0/dphi = -s sin(phi + m), dz1/dphi = s cos(phi).
    d_phi = p1 * SCALE * (math.sin(PHI + margin) + math.cos(PHI))

    assert float(loss) == pytest.approx(expected_loss, rel=1e-5)
    assert torch.allclose(gradient, d_phi * tangent(), atol=1e-5)


def test_cosface_value_and_gradient():
    margin = 0.35
    loss, gradient = two_class_case(CosFaceObjective(make_config("cosface", margin), 2, embedding_dim=2))

    z0, z1 = SCALE * (math.cos(PHI) - margin), SCALE * math.sin(PHI)
    expected_loss, p1 = softmax_tail(z0, z1)
    d_phi = p1 * SCALE * (math.sin(PHI) + math.cos(PHI))

    assert float(loss) == pytest.approx(expected_loss, rel=1e-5)
    assert torch.allclose(gradient, d_phi * tangent(), atol=1e-5)


def test_sphereface_value_and_gradient():
    # m = 2 and phi = 60 degrees give k = floor(2 phi / pi) = 0, so psi = cos(2 phi) = -0.5.
    loss, gradient = two_class_case(SphereFaceObjective(make_config("sphereface", 2.0), 2, embedding_dim=2))

    psi = math.cos(2 * PHI)
    z0, z1 = SCALE * psi, SCALE * math.sin(PHI)
    expected_loss, p1 = softmax_tail(z0, z1)
    # Logits scale with r = ||x||: dz0/dr = s psi, dz1/dr = s sin(phi) at r = 1.
    d_r = p1 * SCALE * (math.sin(PHI) - psi)
    d_phi = p1 * SCALE * (2 * math.sin(2 * PHI) + math.cos(PHI))

    assert psi == pytest.approx(-0.5)
    assert float(loss) == pytest.approx(expected_loss, rel=1e-5)
    assert torch.allclose(gradient, d_r * radial() + d_phi * tangent(), atol=1e-5)


def test_sphereface_rejects_fractional_margin():
    with pytest.raises(ValueError, match="integer"):
        SphereFaceObjective(make_config("sphereface", 1.5), 2, embedding_dim=2)


def test_center_value_and_gradient():
    weight = 0.1
    objective = CenterObjective(make_config("center", center_weight=weight), 2, embedding_dim=2)
    center = torch.tensor([1.0, 0.0])
    with torch.no_grad():
        objective.centers[0] = center
    loss, gradient = two_class_case(objective)

    x = radial()
    # Softmax part: z_j = s * cos(x, w_j). The library normalises x, so only the tangential
    # part of d/dx = s * p1 * (w1 - w0) remains: (I - x x^T) applied to it.
    z0, z1 = SCALE * math.cos(PHI), SCALE * math.sin(PHI)
    softmax_loss, p1 = softmax_tail(z0, z1)
    unprojected = SCALE * p1 * (torch.tensor([0.0, 1.0]) - torch.tensor([1.0, 0.0]))
    softmax_gradient = unprojected - (unprojected @ x) * x
    squared_distance = float(((x - center) ** 2).sum())

    assert float(loss) == pytest.approx(softmax_loss + weight * 0.5 * squared_distance, rel=1e-5)
    assert torch.allclose(gradient, softmax_gradient + weight * (x - center), atol=1e-5)


def test_center_gradient_moves_center_to_members():
    objective = CenterObjective(make_config("center", center_weight=1.0), 2, embedding_dim=2)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    labels = torch.tensor([0, 0, 1])
    objective.center_term(x, labels).backward()

    # d/dc_0 of 0.5 * mean ||x_i - c||^2 over B = 3 is -(x_0 + x_1 - 2 c_0) / 3 with c_0 = 0.
    assert torch.allclose(objective.centers.grad[0], -(x[0] + x[1]) / 3)
    assert torch.allclose(objective.centers.grad[1], -x[2] / 3)


def test_fedaws_positive_and_negative_hinges():
    config = make_config("fedaws")
    config.classifier.margin = None
    objective = FedAwSObjective(config, 2, embedding_dim=2)
    with torch.no_grad():
        objective.weight.copy_(torch.tensor([[1.0], [0.0]]))
    x = torch.tensor([[math.cos(PHI), math.sin(PHI)], [0.0, 1.0], [math.cos(PHI), math.sin(PHI)]], requires_grad=True)
    labels = torch.tensor([0, 0, 1])
    loss = objective(x, labels)
    loss.backward()

    positive, negative = objective.positive_margin, objective.negative_margin
    # Owners: cos 0.5 and 0.0 to the owner column; negative: cos 0.5, above the negative margin.
    expected = ((positive - 0.5) ** 2 + (positive - 0.0) ** 2) / 2 + (0.5 - negative) ** 2
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)

    # Positive term of x_1 = (0, 1): d/dx of (pos - x . w)^2 / 2 is -(pos - 0) * w, plus a
    # normalisation part along x that is zero here, because w is orthogonal to x_1.
    assert torch.allclose(x.grad[1], torch.tensor([-positive, 0.0]), atol=1e-5)


def test_spreadout_penalty_by_hand():
    # Two unit columns 90 degrees apart are sqrt(2) apart; with nu = 1.6 the hinge is active.
    columns = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    nu = 1.6
    distance = math.sqrt(2.0)
    # Each unordered pair counts twice in the double sum over c != c'.
    assert float(spreadout_penalty(columns, nu)) == pytest.approx(2 * (nu - distance) ** 2, rel=1e-5)
    assert float(spreadout_penalty(columns, 1.0)) == 0.0

    moved = spreadout_step(columns.numpy(), nu=nu, learning_rate=0.1)
    after = np.linalg.norm(moved[0] - moved[1])
    assert after > distance


def test_objectives_registered_and_trainable():
    for name in ("arcface", "cosface", "sphereface", "center", "fedaws"):
        assert name in OBJECTIVES
        objective = build_objective(make_config(name), 3, embedding_dim=8)
        embeddings = torch.nn.functional.normalize(torch.randn(6, 8), dim=1).requires_grad_()
        loss = objective(embeddings, torch.tensor([0, 0, 1, 1, 2, 2]))
        loss.backward()
        assert torch.isfinite(loss)
        assert embeddings.grad is not None
        assert len(list(objective.parameters())) >= 1


def test_persistent_state_round_trip():
    first = CenterObjective(make_config("center"), 3, embedding_dim=4)
    with torch.no_grad():
        first.weight.fill_(0.5)
        first.centers.fill_(0.25)
    state = first.export_state()

    second = CenterObjective(make_config("center"), 5, embedding_dim=4)
    second.import_state(state)
    assert torch.allclose(second.weight[:, 0], torch.full((4,), 0.5))
    assert torch.allclose(second.centers[0], torch.full((4,), 0.25))
    assert state[OWNER_WEIGHT].shape == (4,)
    assert state[OWNER_CENTER].shape == (4,)

    with pytest.raises(ValueError, match="embedding_dim"):
        ArcFaceObjective(make_config("arcface"), 2, embedding_dim=3).import_state(state)


def test_labels_out_of_range_rejected():
    objective = CosFaceObjective(make_config("cosface"), 2, embedding_dim=2)
    with pytest.raises(ValueError, match="labels must lie"):
        objective(torch.tensor([[1.0, 0.0]]), torch.tensor([2]))
