"""Negative sources: the interface, the built-in sources and the registry of plugin sources."""

from fedneg.negatives.base import NegativeSet, NegativeSource, ServerResources, SourcePayload
from fedneg.negatives.registry import ENTRY_POINT_GROUP, available_sources, build_sources, source_class

__all__ = [
    "ENTRY_POINT_GROUP",
    "NegativeSet",
    "NegativeSource",
    "ServerResources",
    "SourcePayload",
    "available_sources",
    "build_sources",
    "source_class",
]
