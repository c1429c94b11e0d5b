"""Small ``EmotionBackend`` subclasses with scripted behaviour, for robustness tests and benches.

The emotion node takes them as ``backend.name:=emotion_perception.testing.fake_backends:Name``.
Node parameters only reach the backend options the node knows (``backend.model``,
``backend.batch_size``, ...), so the behaviour is set by the class (one class per fault) and can
be tuned through ``backend.model``, read as ``key=value`` pairs separated by commas, e.g.
``backend.model:='delay=0.3'`` or ``'oom_above=2'``. Keys:

=============  ======================================================================
delay          seconds each ``forward`` call sleeps (one call per frame batch)
raise          1: ``forward`` raises ``BackendError('scripted failure')``
nan            1: the scores of every person are NaN
no_label       1: like a VLM in generate mode whose answer names no known category
               (status SKIPPED, reason ``NO_LABEL_REASON``)
oom_above      ``forward`` raises ``torch.cuda.OutOfMemoryError`` for batches larger
               than this many persons (-1: never)
block          1: ``forward`` waits until ``release()`` is called (a stalled model)
load_error     'missing' | 'corrupt' | 'oom': ``load`` fails like a missing path, a
               corrupt weights file, or a GPU out of memory
load_block     1: ``load`` sets the class's ``load_entered`` event and waits until its
               ``load_release`` event is set (a slow model load; see ``SlowLoadBackend``)
=============  ======================================================================

The scores are deterministic (a function of the box), so cached and fresh results compare.
"""
from __future__ import annotations

import dataclasses
import sys
import threading
import time
from typing import Any, Sequence

import numpy as np

from ..core.backends import base as _backend_base
from ..core.backends.base import BackendError, BackendOptions, EmotionBackend, ModelLoadError
from ..core.categories import NUM_CATEGORIES
from ..core.types import BBox, EmotionResult, Status

NO_LABEL_REASON = 'no known label in answer'  # same text as backends.vlm.NO_LABEL_REASON


@dataclasses.dataclass
class FakeOptions(BackendOptions):
    """The options the node passes (a subset of its ``backend.*`` parameters)."""

    model: str = ''
    batch_size: int = 8


_DEFAULTS = {'delay': 0.0, 'raise': 0, 'nan': 0, 'no_label': 0, 'oom_above': -1, 'block': 0,
             'load_error': '', 'load_block': 0}


def parse_spec(spec: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """'delay=0.3,nan=1' -> settings, typed like ``defaults``; unknown keys are refused."""
    out = dict(defaults)
    for item in filter(None, (s.strip() for s in spec.split(','))):
        key, _, value = item.partition('=')
        if key not in defaults:
            raise ValueError(f'unknown fake backend setting {key!r}; valid: {sorted(defaults)}')
        kind = type(defaults[key])
        out[key] = kind(float(value)) if kind in (int, float) else value
    return out


class FakeBackend(EmotionBackend):
    """Deterministic scores from the box; behaviour from the class defaults and ``model``."""

    name = 'fake'
    Options = FakeOptions
    #: class-level behaviour, overridden by subclasses
    behaviour: dict[str, Any] = {}
    #: ids of the fake models loaded now, in this process (all classes): what would hold
    #: GPU memory; and per unload, whether a ``forward`` call was still running then
    loaded_now: set = set()
    most_loaded = 0
    unloads: list = []

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.settings = parse_spec(self.options.model or '', {**_DEFAULTS, **self.behaviour})
        self.sets_labels = bool(self.settings['no_label'])
        self.calls = 0                 # forward calls
        self.batch_sizes: list[int] = []
        self.released = threading.Event()
        self.entered = threading.Event()  # set when a blocking forward started waiting
        self.in_call = 0  # forward calls running now

    @property
    def model_id(self) -> str:
        return f'fake:{self.options.model}' if self.options.model else 'fake'

    @property
    def device(self) -> str:
        return 'cpu'

    def load(self) -> None:
        if self.settings['load_block']:
            cls = type(self)
            cls.load_entered.set()
            print(f'{cls.__name__}: load blocked', file=sys.stderr, flush=True)  # for processes
            if not cls.load_release.wait(120):
                raise ModelLoadError('scripted slow load was never released')
        error = self.settings['load_error']
        if error == 'missing':
            raise ModelLoadError('model file /nonexistent/fake_weights.bin does not exist')
        if error == 'corrupt':
            raise ModelLoadError('cannot read weights: file is corrupt (bad header)')
        if error == 'oom':
            import torch
            raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')
        if error:
            raise ValueError(f'unknown load_error {error!r}')
        self._loaded = True
        FakeBackend.loaded_now.add(id(self))
        FakeBackend.most_loaded = max(FakeBackend.most_loaded, len(FakeBackend.loaded_now))

    def unload(self) -> None:
        """Records (``unloads``) whether a call was still running, then frees the GPU cache
        (``free_gpu_cache``, looked up at call time so a test can observe it)."""
        if self._loaded:
            FakeBackend.unloads.append({'backend': id(self), 'in_call': self.in_call})
        FakeBackend.loaded_now.discard(id(self))
        super().unload()
        _backend_base.free_gpu_cache()

    def release(self) -> None:
        """Let blocked ``forward`` calls return."""
        self.released.set()

    def preprocess(self, image: np.ndarray, boxes: Sequence[BBox]) -> list[BBox]:
        return list(boxes)

    def forward(self, batch: list[BBox]) -> list[BBox]:
        self.in_call += 1
        try:
            return self._forward(batch)
        finally:
            self.in_call -= 1

    def _forward(self, batch: list[BBox]) -> list[BBox]:
        s = self.settings
        self.calls += 1
        self.batch_sizes.append(len(batch))
        if s['block']:
            self.entered.set()
            self.released.wait()
        if s['delay'] > 0:
            time.sleep(s['delay'])
        if s['raise']:
            raise BackendError('scripted failure of the fake backend')
        if 0 <= s['oom_above'] < len(batch):
            import torch
            raise torch.cuda.OutOfMemoryError(
                f'CUDA out of memory. Tried to allocate 1.00 GiB (batch of {len(batch)})')
        return batch

    def postprocess(self, outputs: list[BBox], batch: list[BBox]) -> list[EmotionResult]:
        out = []
        for box in outputs:
            if self.settings['nan']:
                scores = np.full(NUM_CATEGORIES, np.nan, dtype=np.float32)
            else:
                seed = int(box.x1 * 7 + box.y1 * 13 + box.x2 * 17 + box.y2 * 19) % 1000
                scores = np.linspace(0.0, 1.0, NUM_CATEGORIES, dtype=np.float32)
                scores = np.roll(scores, seed % NUM_CATEGORIES)
            if self.settings['no_label']:
                out.append(EmotionResult(scores=np.zeros(NUM_CATEGORIES, np.float32), labels=[],
                                         status=Status.SKIPPED, reason=NO_LABEL_REASON,
                                         text='I cannot tell.'))
            else:
                out.append(EmotionResult(scores=scores, vad=(5.0, 5.0, 5.0), status=Status.OK))
        return out


class SlowBackend(FakeBackend):
    """300 ms per model call (the overload bench's backend)."""

    behaviour = {'delay': 0.3}


class RaisingBackend(FakeBackend):
    behaviour = {'raise': 1}


class NaNBackend(FakeBackend):
    behaviour = {'nan': 1}


class NoLabelBackend(FakeBackend):
    """A VLM in generate mode whose answer names no known category."""

    behaviour = {'no_label': 1}


class OOMBackend(FakeBackend):
    """CUDA out of memory for batches of more than 1 person (tune with model 'oom_above=k')."""

    behaviour = {'oom_above': 1}


class BlockingBackend(FakeBackend):
    """``forward`` blocks until ``release()``: a stalled model."""

    behaviour = {'block': 1}


class SlowLoadBackend(FakeBackend):
    """``load`` blocks until ``SlowLoadBackend.load_release`` is set (a model load that takes
    long); ``load_entered`` is set when it started waiting. Class-level events: the test sees
    them before the node creates the backend. Clear both before use."""

    behaviour = {'load_block': 1}
    load_entered = threading.Event()
    load_release = threading.Event()


def spec(cls: type[FakeBackend]) -> str:
    """The ``backend.name`` value for ``cls``."""
    return f'{cls.__module__}:{cls.__name__}'
