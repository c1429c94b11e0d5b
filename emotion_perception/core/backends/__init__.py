"""Emotion backends behind one interface (``EmotionBackend``), created by name.

Adding a model family = one module with an ``EmotionBackend`` subclass + one line below.
A ``'package.module:ClassName'`` spec also works, for backends that live outside this package.
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping

from .base import BackendError, BackendOptions, EmotionBackend, ImageError, ModelLoadError

#: backend name -> 'module:Class' (imported lazily: torch/transformers only load when used)
BACKENDS: dict[str, str] = {
    'face_baseline': 'emotion_perception.core.backends.face_baseline:FaceBaselineBackend',
    'vlm': 'emotion_perception.core.backends.vlm:VLMBackend',
    'caption_llm': 'emotion_perception.core.backends.caption_llm:CaptionLLMBackend',
    'remote': 'emotion_perception.core.backends.remote:RemoteBackend',
}


def backend_class(name: str) -> type[EmotionBackend]:
    """The backend class for a registered name or a 'module:Class' spec."""
    spec = BACKENDS.get(name, name)
    if ':' not in spec:
        raise ValueError(f'unknown emotion backend {name!r}; choose one of {sorted(BACKENDS)} '
                         f"or give 'package.module:ClassName'")
    module_name, _, class_name = spec.partition(':')
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, EmotionBackend)):
        raise ValueError(f'{spec} is not an EmotionBackend subclass')
    return cls


def create_backend(name: str, options: Mapping[str, Any] | None = None) -> EmotionBackend:
    """Instantiate (not load) the backend ``name`` with ``options`` (see each backend's Options)."""
    return backend_class(name)(options)


__all__ = ['BACKENDS', 'BackendError', 'BackendOptions', 'EmotionBackend', 'ImageError',
           'ModelLoadError', 'backend_class', 'create_backend']
