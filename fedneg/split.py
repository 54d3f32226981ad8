"""Identity-disjoint split of a data set's people, and the phones built from it.

Roles:
- owner: one phone each; enrollment photos plus more photos in the phone's gallery;
- bystander: appears in owners' galleries, as a recurring friend or a one-off stranger;
- public: held by the server (real-face reference negatives);
- evaluation: never trained on; verification pairs come from these people.

Everything here is a pure function of the scanned identities, the config and the seed.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fedneg.config import Config, ConfigError


@dataclass
class Split:
    """People per role; names are identity folder names."""

    owners: list[str]
    bystanders: list[str]
    public: list[str]
    evaluation: list[str]

    def role_of(self) -> dict[str, str]:
        roles = {}
        for role in ("owners", "bystanders", "public", "evaluation"):
            for name in getattr(self, role):
                roles[name] = role
        return roles


@dataclass
class Phone:
    """Photos stored on one phone. Identities in `gallery_identities` never leave the phone.

    They are ground truth for measuring bystander mining, not input to training.
    """

    phone_id: int
    owner: str
    enrollment: list[str]
    gallery: list[str]
    gallery_identities: list[str] = field(default_factory=list)


def split_people(identities: dict[str, list[str]], config: Config) -> Split:
    """Draw owners, bystanders, public and evaluation people, disjointly, by `config.seed`.

    Raises:
        ConfigError: the data set has too few people for a requested role.
    """
    rng = random.Random(config.seed)
    names = sorted(identities)
    rng.shuffle(names)

    owner_min = config.phone.enrollment + config.phone.owner_gallery
    eligible = [name for name in names if len(identities[name]) >= owner_min]
    if len(eligible) < config.split.owners:
        raise ConfigError(
            f"invalid value for split.owners: {config.split.owners}; the data root has only "
            f"{len(eligible)} people with at least {owner_min} photos (phone.enrollment + "
            "phone.owner_gallery); lower split.owners or the per-phone photo counts"
        )
    owners = eligible[: config.split.owners]
    taken = set(owners)

    # Friends recur in a gallery, so the bystander pool draws people with 2+ photos first.
    remaining = [name for name in names if name not in taken]
    friend_slots = config.split.owners * config.phone.friends
    multi = [name for name in remaining if len(identities[name]) >= 2]
    pool = multi[: min(friend_slots, config.split.bystanders)]
    in_pool = set(pool)
    rest = [name for name in remaining if name not in in_pool]
    bystanders = pool + rest[: config.split.bystanders - len(pool)]
    if len(bystanders) < config.split.bystanders:
        raise ConfigError(
            f"invalid value for split.bystanders: {config.split.bystanders}; only "
            f"{len(remaining)} people are left after the owners; lower split.bystanders"
        )
    taken.update(bystanders)

    remaining = [name for name in names if name not in taken]
    public = remaining[: config.split.public]
    if len(public) < config.split.public:
        raise ConfigError(
            f"invalid value for split.public: {config.split.public}; only {len(remaining)} people "
            "are left after owners and bystanders; lower split.public or split.bystanders"
        )
    taken.update(public)

    remaining = [name for name in names if name not in taken]
    evaluation = remaining if config.split.evaluation == 0 else remaining[: config.split.evaluation]
    with_pairs = [name for name in evaluation if len(identities[name]) >= 2]
    if len(with_pairs) < 2 or len(evaluation) < config.split.evaluation:
        raise ConfigError(
            f"invalid value for split.evaluation: {config.split.evaluation}; after the other roles "
            f"{len(remaining)} people are left and {len(with_pairs)} of the chosen have 2+ photos "
            "(at least 2 such people are needed for genuine pairs); lower split.owners, "
            "split.bystanders or split.public"
        )

    return Split(
        owners=sorted(owners),
        bystanders=sorted(bystanders),
        public=sorted(public),
        evaluation=sorted(evaluation),
    )


def build_phone(phone_id: int, identities: dict[str, list[str]], split: Split, config: Config) -> Phone:
    """Build phone `phone_id` (0-based index into `split.owners`): enrollment plus a mixed gallery.

    The gallery mixes `phone.owner_gallery` further owner photos, `phone.friends` recurring
    bystanders (2 to `phone.friend_photos` photos each) and `phone.strangers` bystanders seen
    once. Phones draw their bystanders from a seeded rotation of the bystander list, so with
    enough bystanders no two phones share one.
    """
    if not 0 <= phone_id < len(split.owners):
        raise ConfigError(f"invalid phone id {phone_id}; this split has {len(split.owners)} phones (0..{len(split.owners) - 1})")
    rng = random.Random(f"{config.seed}-phone-{phone_id}")
    owner = split.owners[phone_id]

    owner_photos = list(identities[owner])
    rng.shuffle(owner_photos)
    enrollment = owner_photos[: config.phone.enrollment]
    owner_gallery = owner_photos[config.phone.enrollment : config.phone.enrollment + config.phone.owner_gallery]

    gallery = [(path, owner) for path in owner_gallery]
    friend_pool = [name for name in split.bystanders if len(identities[name]) >= 2]
    stranger_pool = [name for name in split.bystanders if name not in set(friend_pool[: len(split.owners) * config.phone.friends])]
    friends = _rotate(friend_pool, phone_id * config.phone.friends, config.phone.friends)
    strangers = _rotate(stranger_pool or split.bystanders, phone_id * config.phone.strangers, config.phone.strangers)
    strangers = [name for name in strangers if name not in set(friends)]

    for name in friends:
        photos = list(identities[name])
        rng.shuffle(photos)
        count = rng.randint(2, max(2, min(config.phone.friend_photos, len(photos))))
        gallery.extend((path, name) for path in photos[:count])
    for name in strangers:
        gallery.append((rng.choice(identities[name]), name))

    rng.shuffle(gallery)
    return Phone(
        phone_id=phone_id,
        owner=owner,
        enrollment=enrollment,
        gallery=[path for path, _ in gallery],
        gallery_identities=[name for _, name in gallery],
    )


def _rotate(names: list[str], start: int, count: int) -> list[str]:
    """Take `count` distinct names from `names` starting at `start`, wrapping around."""
    if not names or count == 0:
        return []
    count = min(count, len(names))
    return [names[(start + offset) % len(names)] for offset in range(count)]


def write_split(path: Path, split: Split, phones: list[Phone], data_root: Path) -> None:
    """Write the split and every phone's contents (paths relative to `data_root`) as JSON."""

    def relative(item: str) -> str:
        return str(Path(item).relative_to(data_root))

    record = {
        "data_root": str(data_root),
        "counts": {role: len(names) for role, names in asdict(split).items()},
        **asdict(split),
        "phones": [
            {
                "phone_id": phone.phone_id,
                "owner": phone.owner,
                "enrollment": [relative(item) for item in phone.enrollment],
                "gallery": [relative(item) for item in phone.gallery],
                "gallery_identities": phone.gallery_identities,
            }
            for phone in phones
        ],
    }
    path.write_text(json.dumps(record, indent=1))
