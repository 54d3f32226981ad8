"""Face generator backends, by name: `ddpm`, `pretrained` and `dcgan`."""

from __future__ import annotations

import importlib
from typing import Any

from generator.backends.base import FaceGenerator, GeneratorError

BACKENDS = {
    "ddpm": "generator.backends.ddpm:DDPMGenerator",
    "pretrained": "generator.backends.pretrained:PretrainedGenerator",
    "dcgan": "generator.backends.dcgan:DCGANGenerator",
}


def backend_class(name: str) -> type[FaceGenerator]:
    """Import the backend class registered under `name`.

    Raises:
        GeneratorError: no backend has that name.
    """
    if name not in BACKENDS:
        raise GeneratorError(f"unknown generator backend: {name!r}; allowed: {', '.join(sorted(BACKENDS))}")
    module_name, _, attribute = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def load_backend(name: str, model: str | None, **settings: Any) -> FaceGenerator:
    """Load backend `name` from `model` (a folder, a hub id, or None where the backend has a default).

    Raises:
        GeneratorError: unknown backend, or the model is missing or not of that backend.
    """
    cls = backend_class(name)
    if model is None and name != "dcgan":
        raise GeneratorError(f"the {name} backend needs a model: pass --model <folder> (for ddpm, the output_dir of generator.train)")
    return cls.load(model, **settings)


__all__ = ["BACKENDS", "FaceGenerator", "GeneratorError", "backend_class", "load_backend"]
