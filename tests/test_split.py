"""The identity split and the phones built from it, on the real LFW folder."""

from __future__ import annotations

import json

from fedneg.config import load_config
from fedneg.runfolder import prepare_run
from fedneg.split import build_phone, split_people


def test_roles_are_identity_disjoint(identities):
    config = load_config("configs/default.yaml")
    split = split_people(identities, config)
    roles = [set(split.owners), set(split.bystanders), set(split.public), set(split.evaluation)]
    for index, first in enumerate(roles):
        for second in roles[index + 1 :]:
            assert not first & second
    assert len(split.owners) == 24
    assert len(split.bystanders) == 200
    assert len(split.public) == 300
    assert len(split.evaluation) == len(identities) - 524


def test_split_is_fixed_by_seed(identities):
    config = load_config("configs/default.yaml")
    other_seed = load_config("configs/default.yaml", ["seed=1"])
    assert split_people(identities, config) == split_people(identities, config)
    assert split_people(identities, config).owners != split_people(identities, other_seed).owners


def test_phone_gallery_mixes_owner_and_bystanders(identities):
    config = load_config("configs/default.yaml")
    split = split_people(identities, config)
    phone = build_phone(3, identities, split, config)

    assert len(phone.enrollment) == 3
    assert not set(phone.enrollment) & set(phone.gallery)
    assert phone.gallery_identities.count(phone.owner) == 7
    bystanders = [name for name in phone.gallery_identities if name != phone.owner]
    assert set(bystanders) <= set(split.bystanders)
    counts = {name: bystanders.count(name) for name in set(bystanders)}
    assert sum(1 for count in counts.values() if count >= 2) == 3  # friends recur
    assert sum(1 for count in counts.values() if count == 1) == 4  # strangers appear once
    for path, name in zip(phone.gallery, phone.gallery_identities):
        assert f"/{name}/" in path


def test_split_written_to_run_folder(tmp_path):
    config = load_config("configs/default.yaml", ["split.owners=4", "federation.clients_per_round=2"])
    prepared = prepare_run(config, tmp_path / "run")
    written = json.loads((tmp_path / "run" / "split.json").read_text())
    assert written["owners"] == prepared.split.owners
    assert written["counts"]["owners"] == 4
    assert len(written["phones"]) == 4
    assert written["phones"][0]["enrollment"][0].startswith(prepared.split.owners[0] + "/")
    assert (tmp_path / "run" / "config.yaml").is_file()
