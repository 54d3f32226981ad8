"""Bystander mining: cluster a phone's gallery embeddings with HDBSCAN, find the owner, score it.

Gallery identities are used only for scoring (`mining_quality`), and `mine_gallery`
receives embeddings alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import HDBSCAN
from sklearn.metrics import adjusted_rand_score

logger = logging.getLogger(__name__)

NOISE = -1


@dataclass
class MiningResult:
    """Outcome of clustering one gallery.

    Attributes:
        labels: int (N,) HDBSCAN cluster per gallery photo, -1 for noise.
        owner_cluster: the cluster taken as the owner, or None when there is no cluster.
        negative_indices: gallery indices mined as negatives.
        negative_groups: int (len(negative_indices),) group per negative: the cluster id,
            or a fresh id per noise point under the "singleton" noise policy.
        owner_indices: gallery indices in the owner cluster.
    """

    labels: np.ndarray
    owner_cluster: int | None
    negative_indices: np.ndarray
    negative_groups: np.ndarray
    owner_indices: np.ndarray

    @property
    def num_clusters(self) -> int:
        return len(set(self.labels.tolist()) - {NOISE})


def cluster_embeddings(embeddings: np.ndarray, min_cluster_size: int = 2, min_samples: int | None = 1) -> np.ndarray:
    """Cluster unit-norm embeddings (N, D) with HDBSCAN on cosine distance.

    Returns int labels (N,), -1 for noise. Fewer than `min_cluster_size` points, or points
    with no dense region, come back as all noise; callers must handle that.
    """
    if embeddings.shape[0] < max(2, min_cluster_size):
        return np.full(embeddings.shape[0], NOISE, dtype=np.int64)
    clusterer = HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples, metric="cosine", copy=True)
    return clusterer.fit_predict(embeddings.astype(np.float64)).astype(np.int64)


def mine_gallery(
    gallery: np.ndarray,
    enrollment: np.ndarray,
    min_cluster_size: int = 2,
    min_samples: int | None = 1,
    noise: str = "drop",
) -> MiningResult:
    """Split a gallery into the owner's photos and bystander negatives.

    Args:
        gallery: (N, D) unit-norm embeddings of the gallery photos.
        enrollment: (E, D) unit-norm embeddings of the owner's enrollment photos.
        noise: "drop" leaves noise points out; "singleton" makes each noise point a negative
            of its own, except points at least as close to the enrollment centroid as the
            least similar member of the owner cluster (they may be the owner).

    The owner cluster is the cluster whose normalised centroid has the highest cosine
    similarity to the normalised enrollment centroid; every other cluster is a negative group.
    """
    labels = cluster_embeddings(gallery, min_cluster_size, min_samples)
    centroid = enrollment.mean(axis=0)
    centroid /= max(np.linalg.norm(centroid), 1e-12)
    similarity = gallery @ centroid if gallery.shape[0] else np.empty(0)

    clusters = sorted(set(labels.tolist()) - {NOISE})
    owner_cluster = None
    if clusters:
        scores = []
        for cluster in clusters:
            members = gallery[labels == cluster].mean(axis=0)
            scores.append(float(members @ centroid / max(np.linalg.norm(members), 1e-12)))
        owner_cluster = clusters[int(np.argmax(scores))]

    owner_indices = np.flatnonzero(labels == owner_cluster) if owner_cluster is not None else np.empty(0, dtype=np.int64)
    negative_mask = (labels != NOISE) & (labels != (owner_cluster if owner_cluster is not None else NOISE))
    negative_indices = np.flatnonzero(negative_mask)
    negative_groups = labels[negative_indices]

    if noise == "singleton":
        noise_indices = np.flatnonzero(labels == NOISE)
        if owner_indices.size:
            # Noise points as close to the owner as the owner cluster's farthest member may be the owner.
            noise_indices = noise_indices[similarity[noise_indices] < similarity[owner_indices].min()]
        first_id = (max(clusters) + 1) if clusters else 0
        negative_indices = np.concatenate([negative_indices, noise_indices])
        negative_groups = np.concatenate([negative_groups, first_id + np.arange(noise_indices.size)])

    return MiningResult(
        labels=labels,
        owner_cluster=owner_cluster,
        negative_indices=negative_indices.astype(np.int64),
        negative_groups=negative_groups.astype(np.int64),
        owner_indices=owner_indices.astype(np.int64),
    )


def mining_quality(result: MiningResult, identities: list[str], owner: str) -> dict[str, float]:
    """Score a mining result against the true gallery identities.

    Returns (keys always present, each in [0, 1] unless named a count):
        mining_clusters: number of clusters (count).
        mining_no_cluster: 1.0 when HDBSCAN found no cluster at all.
        mining_noise_fraction: fraction of gallery photos labelled noise.
        mining_purity: clustered photos whose identity is their cluster's majority identity,
            over all clustered photos (1.0 when there is no cluster, since nothing is mixed).
        mining_ari: adjusted Rand index between identities and clusters, each noise point
            counted as its own cluster (range [-0.5, 1]).
        owner_precision: owner-cluster photos that show the owner (1.0 without an owner cluster).
        owner_recall: owner gallery photos that landed in the owner cluster.
        negative_precision: mined negatives that are not the owner (1.0 when none are mined).
        mined_negatives: number of negatives mined (count).
    """
    labels = result.labels
    truth = np.asarray(identities)
    is_owner = truth == owner

    clustered = labels != NOISE
    majority_total = 0
    for cluster in set(labels[clustered].tolist()):
        _, counts = np.unique(truth[labels == cluster], return_counts=True)
        majority_total += int(counts.max())
    purity = majority_total / int(clustered.sum()) if clustered.any() else 1.0

    # Noise points become singletons so that "all noise" is not scored as one big cluster.
    singleton_labels = labels.copy()
    noise_positions = np.flatnonzero(labels == NOISE)
    singleton_labels[noise_positions] = labels.max(initial=0) + 1 + np.arange(noise_positions.size)
    ari = float(adjusted_rand_score(truth, singleton_labels)) if len(truth) > 1 else 1.0

    owner_members = is_owner[result.owner_indices] if result.owner_indices.size else np.empty(0, dtype=bool)
    owner_precision = float(owner_members.mean()) if owner_members.size else 1.0
    owner_recall = float(owner_members.sum() / is_owner.sum()) if is_owner.any() else 1.0
    negatives_not_owner = ~is_owner[result.negative_indices] if result.negative_indices.size else np.empty(0, dtype=bool)
    negative_precision = float(negatives_not_owner.mean()) if negatives_not_owner.size else 1.0

    return {
        "mining_clusters": float(result.num_clusters),
        "mining_no_cluster": float(result.num_clusters == 0),
        "mining_noise_fraction": float((~clustered).mean()) if len(labels) else 0.0,
        "mining_purity": float(purity),
        "mining_ari": ari,
        "owner_precision": owner_precision,
        "owner_recall": owner_recall,
        "negative_precision": negative_precision,
        "mined_negatives": float(result.negative_indices.size),
    }
