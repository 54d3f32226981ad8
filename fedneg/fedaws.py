"""FedAwS's server-side spreadout step (Yu et al., "Federated Learning with Only Positive
Labels", ICML 2020); the phone half is `fedneg.margin.FedAwSObjective`.

Each phone has one class embedding, its owner column w (embedding_dim,), and pulls its
owner's embeddings towards it; nothing on the phone pushes other people away. The server
keeps every phone's class embedding and, after each round, takes a gradient step on the
spreadout penalty sum_{c != c'} max(0, nu - ||w_c - w_c'||)^2 over unit class embeddings, so
phones' classes separate although no phone sees another phone's class. The strategy that
runs this step is `fedneg.server.fedaws.FedAwS`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional

from fedneg.margin import FedAwSObjective

__all__ = ["FedAwSObjective", "spreadout_penalty", "spreadout_step"]


def spreadout_penalty(class_embeddings: torch.Tensor, nu: float) -> torch.Tensor:
    """Return sum over ordered pairs c != c' of max(0, nu - ||w_c - w_c'||)^2.

    Args:
        class_embeddings: (C, D) one row per phone; rows are L2-normalised first.
        nu: distance below which two classes are pushed apart, in [0, 2] for unit rows.
    """
    rows = functional.normalize(class_embeddings, dim=1)
    distances = torch.cdist(rows, rows)
    off_diagonal = ~torch.eye(rows.shape[0], dtype=torch.bool, device=rows.device)
    return functional.relu(nu - distances[off_diagonal]).pow(2).sum()


def spreadout_step(class_embeddings: np.ndarray, nu: float, learning_rate: float) -> np.ndarray:
    """Take one gradient step on `spreadout_penalty`; return the updated (C, D) rows, float32.

    Distances between identical rows have no gradient, so a duplicated row stays in place.
    """
    rows = torch.tensor(np.asarray(class_embeddings, dtype=np.float32), requires_grad=True)
    if rows.shape[0] < 2:
        return rows.detach().numpy()
    penalty = spreadout_penalty(rows, nu)
    if penalty.requires_grad:
        penalty.backward()
    gradient = rows.grad if rows.grad is not None else torch.zeros_like(rows)
    gradient = torch.nan_to_num(gradient)
    return (rows - learning_rate * gradient).detach().numpy()
