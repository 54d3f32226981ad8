"""Built-in negative sources: `none`, `bystander` and `public`."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from fedneg.data import PhoneImages, load_faces
from fedneg.mining import mine_gallery, mining_quality
from fedneg.model import embed
from fedneg.negatives.base import NegativeSet, NegativeSource, ServerResources, SourcePayload

logger = logging.getLogger(__name__)


class NoNegatives(NegativeSource):
    """Positive-only training: the phone trains on its owner's photos alone (the collapse baseline)."""

    name = "none"

    def phone_negatives(self, payload: SourcePayload | None, phone: PhoneImages, model: nn.Module, rng: np.random.Generator) -> NegativeSet:
        return NegativeSet.empty(self.config.data.image_size)


class BystanderNegatives(NegativeSource):
    """Unlabelled negatives mined on the phone from the people in its gallery.

    The gallery is embedded with the round's FE and clustered with HDBSCAN; the cluster
    nearest the enrollment centroid is the owner, the other clusters are negative groups.
    Nothing leaves the phone except the mining-quality scalars.
    """

    name = "bystander"

    def phone_negatives(self, payload: SourcePayload | None, phone: PhoneImages, model: nn.Module, rng: np.random.Generator) -> NegativeSet:
        settings = self.config.negatives.bystander
        if phone.gallery.shape[0] == 0:
            logger.warning("phone %d: empty gallery, no bystander negatives this round", phone.phone_id)
            result = NegativeSet.empty(self.config.data.image_size)
            result.metrics = {"mining_no_cluster": 1.0, "mined_negatives": 0.0, "mining_empty_gallery": 1.0}
            return result

        gallery_embeddings = embed(model, phone.gallery).numpy()
        enrollment_embeddings = embed(model, phone.enrollment).numpy()
        mined = mine_gallery(
            gallery_embeddings,
            enrollment_embeddings,
            min_cluster_size=settings.min_cluster_size,
            min_samples=settings.min_samples,
            noise=settings.noise,
        )
        if mined.num_clusters == 0:
            logger.info("phone %d: HDBSCAN found no cluster in %d gallery photos", phone.phone_id, phone.gallery.shape[0])

        positives = phone.gallery[torch.from_numpy(mined.owner_indices)] if settings.owner_positives else None
        metrics = mining_quality(mined, phone.gallery_identities, phone.owner)
        metrics["mining_empty_gallery"] = 0.0
        return NegativeSet(
            images=phone.gallery[torch.from_numpy(mined.negative_indices)],
            groups=torch.from_numpy(mined.negative_groups),
            positives=positives,
            metrics=metrics,
        )


class PublicNegatives(NegativeSource):
    """Real faces of public people, held by the server; each round ships a fresh sample.

    A face's group is its person, so two photos of one public person form one group.
    """

    name = "public"

    def prepare_server(self, resources: ServerResources) -> None:
        paths: list[str] = []
        people: list[int] = []
        for index, name in enumerate(resources.public_people):
            for path in resources.identities[name]:
                paths.append(path)
                people.append(index)

        images, kept = load_faces(paths, self.config.data.crop_size, self.config.data.image_size)
        self.images = images.numpy()
        self.people = np.asarray(people, dtype=np.int64)[kept]
        logger.info("public source: %d faces of %d people loaded", len(self.people), len(resources.public_people))

    def round_payload(self, server_round: int, rng: np.random.Generator) -> SourcePayload | None:
        count = min(self.config.negatives.public.per_round, len(self.people))
        chosen = np.sort(rng.choice(len(self.people), size=count, replace=False))
        return SourcePayload(
            arrays={"images": self.images[chosen], "groups": self.people[chosen]},
            info={"faces": int(count)},
        )

    def phone_negatives(self, payload: SourcePayload | None, phone: PhoneImages, model: nn.Module, rng: np.random.Generator) -> NegativeSet:
        if payload is None or "images" not in payload.arrays:
            raise ValueError("public source: the round message carries no public faces; the server's public source did not run")
        return NegativeSet(
            images=torch.from_numpy(np.ascontiguousarray(payload.arrays["images"])),
            groups=torch.from_numpy(np.asarray(payload.arrays["groups"], dtype=np.int64)),
        )
