"""Name -> negative-source class, for built-in sources and plugins.

Plugins register through the entry point group `fedneg.negative_sources`, for example in a
`pyproject.toml`:

    [project.entry-points."fedneg.negative_sources"]
    synthetic = "generator.source:SyntheticNegatives"
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points

from fedneg.config import Config, ConfigError
from fedneg.negatives.base import NegativeSource

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "fedneg.negative_sources"

_BUILTIN = {
    "none": "fedneg.negatives.builtin:NoNegatives",
    "bystander": "fedneg.negatives.builtin:BystanderNegatives",
    "public": "fedneg.negatives.builtin:PublicNegatives",
}


def _targets() -> dict[str, str]:
    targets = dict(_BUILTIN)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        targets.setdefault(entry.name, entry.value)
    return targets


def available_sources() -> list[str]:
    """Names of every negative source that can be configured, built-in and plugin."""
    return sorted(_targets())


def source_class(name: str) -> type[NegativeSource]:
    """Import the class registered under `name`.

    Raises:
        ConfigError: no source has that name, or its module fails to import.
    """
    targets = _targets()
    if name not in targets:
        raise ConfigError(f"invalid value for negatives.sources: {name!r}; allowed: {', '.join(sorted(targets))}")
    module_name, _, attribute = targets[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(
            f"negative source {name!r} is registered as {targets[name]} but fails to import: {error}; "
            "reinstall the package that provides it (for fedneg's own sources: pip install -e .)"
        ) from error
    return getattr(module, attribute)


def build_sources(config: Config) -> list[NegativeSource]:
    """Instantiate the sources listed in `config.negatives.sources`, in order."""
    return [source_class(name)(config) for name in config.negatives.sources]
