"""Face bank store: a folder of versioned, immutable sets of synthetic faces.

Layout of a bank folder:

    <bank>/v000001/manifest.json
    <bank>/v000001/shard-00000.safetensors   uint8 tensor "images" (n, 3, S, S), RGB
    <bank>/v000002/...
    <bank>/.publish.lock                     flock held by the one publisher at a time
    <bank>/.tmp-*                            staging folder of a publish in progress

A version is published atomically: shards and manifest are written and fsynced inside a
staging folder in the bank folder, then the staging folder is renamed to `v<number>` and the
bank folder is fsynced. A `v<number>` folder therefore exists only once it is complete, and
a publisher killed mid-write leaves only a `.tmp-*` folder, which the next publish removes.
Old versions are renamed to `.trash-*` before deletion, so a reader never lists a
half-deleted version.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from generator.backends.base import GeneratorError, hash_file

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
VERSION_PATTERN = re.compile(r"^v(\d{6,})$")
REFRESH_HELP = "python -m generator.serve --bank {bank} --once --backend <name> --model <folder>"


def version_number(version: str) -> int:
    """Sequence number of a version id: `version_number("v000012") == 12`."""
    match = VERSION_PATTERN.match(version)
    if match is None:
        raise ValueError(f"invalid face bank version id {version!r}; expected v followed by 6 or more digits")
    return int(match.group(1))


class BankError(GeneratorError):
    """A face bank is missing, empty or corrupt; the message names the path and the fix."""


class BankNotFoundError(BankError):
    """The bank folder does not exist."""


class BankEmptyError(BankError):
    """The bank folder contains no complete version."""


class BankCorruptError(BankError):
    """A version's manifest or shard fails to parse or to match its checksum."""


@dataclass
class BankVersion:
    """One complete, verified version of a face bank.

    Attributes:
        version: the version id, for example "v000003"; later versions sort higher.
        path: the version folder.
        manifest: the parsed manifest.json (see `FaceBank.publish` for its fields).
        images: uint8 (N, 3, S, S) RGB faces.
    """

    version: str
    path: Path
    manifest: dict[str, Any]
    images: np.ndarray


def _fsync_path(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


class FaceBank:
    """Reader and publisher of one bank folder.

    Args:
        root: the bank folder.
        create: make the folder if it is missing (publishers); readers pass False and get
            `BankNotFoundError` for a missing folder.
    """

    def __init__(self, root: str | os.PathLike[str], create: bool = False) -> None:
        self.root = Path(root).expanduser()
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise BankNotFoundError(f"face bank not found: {self.root} is not a folder; publish a first version with: {REFRESH_HELP.format(bank=self.root)}")

    # Reading.

    def versions(self) -> list[str]:
        """Ids of the complete versions on disk, oldest first."""
        found = []
        for entry in os.scandir(self.root):
            match = VERSION_PATTERN.match(entry.name)
            if match and entry.is_dir():
                found.append((int(match.group(1)), entry.name))
        return [name for _, name in sorted(found)]

    def read_version(self, version: str, verify: bool = True) -> BankVersion:
        """Read one version and, with `verify`, check every shard's SHA-256 against the manifest.

        Raises:
            BankCorruptError: the manifest or a shard is missing, unreadable or mismatched.
            FileNotFoundError: the version folder is gone (retention removed it meanwhile).
        """
        folder = self.root / version
        try:
            return self._read_folder(version, folder, verify)
        except BankCorruptError:
            if not folder.is_dir():
                raise FileNotFoundError(f"face bank version {folder} was removed while being read") from None
            raise

    def _read_folder(self, version: str, folder: Path, verify: bool) -> BankVersion:
        fix = f"delete {folder} and publish a new version with: {REFRESH_HELP.format(bank=self.root)}"
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except FileNotFoundError as error:
            raise BankCorruptError(f"face bank version {folder} has no {MANIFEST}; {fix}") from error
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise BankCorruptError(f"face bank manifest {folder / MANIFEST} is not valid JSON ({error}); {fix}") from error

        shards = manifest.get("shards")
        if not isinstance(shards, list) or (not shards and manifest.get("count", 0) != 0):
            raise BankCorruptError(f"face bank manifest {folder / MANIFEST} lists no shards; {fix}")

        parts = []
        for shard in shards:
            path = folder / shard["file"]
            if not path.is_file():
                raise BankCorruptError(f"face bank shard {path} is missing; {fix}")
            if verify:
                actual = hash_file(path)
                if actual != shard["sha256"]:
                    raise BankCorruptError(f"face bank shard {path} failed its checksum: manifest has sha256 {shard['sha256'][:16]}..., file has {actual[:16]}...; {fix}")
            try:
                images = load_file(path)["images"]
            except (SafetensorError, KeyError, OSError, ValueError) as error:
                raise BankCorruptError(f"face bank shard {path} is unreadable ({error.__class__.__name__}: {error}); {fix}") from error
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != shard["count"]:
                raise BankCorruptError(f"face bank shard {path} contains {images.dtype} {images.shape}, expected uint8 ({shard['count']}, 3, S, S); {fix}")
            parts.append(images)

        size = int(manifest.get("image_size", 0))
        images = np.concatenate(parts) if parts else np.empty((0, 3, size, size), dtype=np.uint8)
        return BankVersion(version=version, path=folder, manifest=manifest, images=images)

    def read_latest(self, verify: bool = True, attempts: int = 5) -> BankVersion:
        """Return the newest version that reads and verifies, logging an error for each newer corrupt one.

        Versions that retention deletes while this runs are skipped. When all listed versions
        vanished that way, the folder is listed again, up to `attempts` times.

        Raises:
            BankEmptyError: the bank has no version at all.
            BankCorruptError: every version is corrupt (the message is the newest one's error).
        """
        for _ in range(attempts):
            versions = self.versions()
            if not versions:
                raise BankEmptyError(f"face bank {self.root} has no complete version; publish one with: {REFRESH_HELP.format(bank=self.root)}")

            first_error: BankCorruptError | None = None
            for version in reversed(versions):
                try:
                    result = self.read_version(version, verify=verify)
                except BankCorruptError as error:
                    logger.error("face bank %s: skipping corrupt version %s: %s", self.root, version, error)
                    first_error = first_error or error
                    continue
                except FileNotFoundError:
                    logger.info("face bank %s: version %s was removed by retention while being read", self.root, version)
                    continue
                if first_error is not None:
                    logger.error("face bank %s: falling back to version %s", self.root, version)
                return result

            if first_error is not None:
                raise first_error
        raise BankEmptyError(f"face bank {self.root} has no readable version after {attempts} listings; publish one with: {REFRESH_HELP.format(bank=self.root)}")

    # Publishing.

    def publish(self, images: np.ndarray, manifest: dict[str, Any], shard_size: int = 256, keep: int | None = None) -> BankVersion:
        """Publish `images` as the next version, atomically, then keep only the newest `keep` versions.

        Args:
            images: uint8 (N, 3, S, S) RGB faces.
            manifest: fields recorded beside the bank's own (backend, model, settings, seed,
                filter, quality, ...); must be JSON-serialisable.
            shard_size: faces per safetensors shard.
            keep: versions to retain after publishing (None: all).

        Returns:
            The published version (its images are the array passed in).

        The manifest gets these fields from the store: `format`, `version`, `count`,
        `image_size`, `created` (UTC, ISO 8601) and `shards` (file, count, sha256 each).
        """
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
            raise ValueError(f"invalid bank images: {images.dtype} {images.shape}; expected uint8 (N, 3, S, S)")
        if keep is not None and keep < 1:
            raise ValueError(f"invalid retention keep={keep!r}; pass an integer >= 1 or None")

        with self._publish_lock():
            self._remove_staging_leftovers()
            staging = self.root / f".tmp-{uuid.uuid4().hex}"
            staging.mkdir()

            shards = []
            for index, start in enumerate(range(0, images.shape[0], shard_size)):
                name = f"shard-{index:05d}.safetensors"
                save_file({"images": np.ascontiguousarray(images[start : start + shard_size])}, str(staging / name))
                _fsync_path(staging / name)
                shards.append({"file": name, "count": int(min(shard_size, images.shape[0] - start)), "sha256": hash_file(staging / name)})

            version = self._next_version()
            record = dict(manifest)
            record.update(
                format=MANIFEST_FORMAT,
                version=version,
                count=int(images.shape[0]),
                image_size=int(images.shape[-1]),
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                shards=shards,
            )
            _write_synced(staging / MANIFEST, json.dumps(record, indent=2, sort_keys=True).encode())
            _fsync_path(staging)

            final = self.root / version
            os.rename(staging, final)
            _fsync_path(self.root)
            logger.info("face bank %s: published %s (%d faces)", self.root, version, images.shape[0])

            if keep is not None:
                self.prune(keep)
        return BankVersion(version=version, path=final, manifest=record, images=images)

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest `keep` versions; returns the deleted ids."""
        removed = []
        for version in self.versions()[:-keep]:
            trash = self.root / f".trash-{version}-{uuid.uuid4().hex[:8]}"
            os.rename(self.root / version, trash)
            shutil.rmtree(trash, ignore_errors=True)
            removed.append(version)
        if removed:
            logger.info("face bank %s: removed old versions %s (keeping %d)", self.root, ", ".join(removed), keep)
        return removed

    def _next_version(self) -> str:
        versions = self.versions()
        last = version_number(versions[-1]) if versions else 0
        return f"v{last + 1:06d}"

    def _remove_staging_leftovers(self) -> None:
        # Only the lock holder publishes, so any staging or trash folder left now belongs to
        # a publisher that died mid-write.
        for entry in os.scandir(self.root):
            if entry.name.startswith((".tmp-", ".trash-")) and entry.is_dir():
                logger.warning("face bank %s: removing %s left by an interrupted publish", self.root, entry.name)
                shutil.rmtree(entry.path, ignore_errors=True)

    class _Lock:
        def __init__(self, path: Path) -> None:
            self.path = path

        def __enter__(self) -> None:
            self.handle = self.path.open("a")
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX)

        def __exit__(self, *exc_info: object) -> None:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
            self.handle.close()

    def _publish_lock(self) -> "FaceBank._Lock":
        return FaceBank._Lock(self.root / ".publish.lock")

