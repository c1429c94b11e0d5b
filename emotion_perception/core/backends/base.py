"""The one small interface every emotion backend implements.

A backend turns an RGB image and person boxes into one ``EmotionResult`` per box, in three
stages (as transformers pipelines and ultralytics predictors do):

* ``preprocess(image, boxes)``: crops, resizing, prompts, tensors. No model calls.
* ``forward(batch)``: model calls only (this is what runs on the GPU).
* ``postprocess(outputs, batch)``: scores, VAD, text parsing -> ``EmotionResult`` per box.

``predict`` (implemented here, not by backends) validates the inputs, clips boxes, runs the
three stages with per-stage timings, isolates per-person failures and fills labels from the
per-category thresholds. A CUDA out-of-memory error during a batch is retried with the batch
split in halves, down to single persons; a person that still does not fit gets
``Status.ERROR`` with the reason :data:`OUT_OF_GPU_MEMORY`. Adding a model family means adding one module and one line in
``emotion_perception.core.backends.BACKENDS``; nodes and tools never change.
"""
from __future__ import annotations

import abc
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from ..categories import EMOTIC_CATEGORIES, NUM_CATEGORIES, labels_from_scores, thresholds_array
from ..types import BBox, BoxError, EmotionResult, Status, Timings


class BackendError(RuntimeError):
    """A backend failed at run time (the message says what and, where possible, what to do)."""


class ModelLoadError(BackendError):
    """The model could not be loaded: wrong id/path, no network, unsupported model, bad weights."""


class ImageError(ValueError):
    """An image the core cannot use (wrong dtype, shape or size)."""


#: Reason of a person that did not fit in GPU memory even alone.
OUT_OF_GPU_MEMORY = 'out of GPU memory'


def is_out_of_memory(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) is a CUDA out-of-memory error:
    ``torch.cuda.OutOfMemoryError``, or a RuntimeError saying 'out of memory' (older torch,
    other accelerators)."""
    torch = sys.modules.get('torch')
    oom_type = getattr(getattr(torch, 'cuda', None), 'OutOfMemoryError', None)
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if oom_type is not None and isinstance(e, oom_type):
            return True
        if isinstance(e, RuntimeError) and 'out of memory' in str(e).lower():
            return True
        e = e.__cause__ or e.__context__
    return False


def free_gpu_cache() -> None:
    """Release cached GPU blocks (no-op without torch or CUDA)."""
    torch = sys.modules.get('torch')
    try:
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort
        pass


def validate_image(image: Any) -> np.ndarray:
    """Check that ``image`` is an RGB uint8 array of shape (H, W, 3) with H, W > 0.

    Raises:
        ImageError: with the offending property in the message.
    """
    if not isinstance(image, np.ndarray):
        raise ImageError(f'image must be a numpy array, got {type(image).__name__}')
    if image.dtype != np.uint8:
        raise ImageError(f'image must be uint8, got {image.dtype}')
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f'image must have shape (H, W, 3) (RGB), got {image.shape}')
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f'image has zero size: {image.shape}')
    return image


@dataclasses.dataclass
class BackendOptions:
    """Options every backend understands; backends subclass this with their own fields.

    Attributes:
        model: model id or path ('' = the backend's offline default).
        device: torch device ('cpu', 'cuda', 'cuda:0'); 'auto' picks cuda when available.
        thresholds: per-category decision thresholds: a number, 26 numbers, a mapping
            name -> value, or the path of a JSON file holding one of those (as written by
            ``emotion-perception evaluate --tune-thresholds``).
    """

    model: str = ''
    device: str = 'auto'
    thresholds: Any = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> 'BackendOptions':
        """Build the options from a mapping, refusing unknown keys with the list of valid ones."""
        values = dict(values or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f'{cls.__name__}: unknown option(s) {unknown}; valid: {sorted(names)}')
        return cls(**values)


def load_thresholds(spec: Any) -> np.ndarray:
    """Thresholds array (26,) from a number, sequence, mapping, or JSON file path (see above)."""
    if isinstance(spec, (str, Path)) and str(spec):
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f'thresholds file {path} does not exist')
        data = json.loads(path.read_text())
        if isinstance(data, Mapping) and 'thresholds' in data:
            data = data['thresholds']
        return thresholds_array(data)
    if isinstance(spec, str):  # ''
        return thresholds_array(None)
    return thresholds_array(spec)


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' if a GPU is available, else 'cpu'; anything else unchanged."""
    if device in ('', 'auto'):
        import torch
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    return device


class EmotionBackend(abc.ABC):
    """Base class of all emotion backends (see the module docstring for the contract).

    Subclasses set ``name`` and ``Options`` and implement ``load``, ``preprocess``, ``forward``
    and ``postprocess``. ``sets_labels`` is True when ``postprocess`` decides the label set
    itself (text generation) instead of thresholding the scores.
    """

    name: ClassVar[str] = ''
    Options: ClassVar[type[BackendOptions]] = BackendOptions
    #: True when ``preprocess`` takes a third argument ``context``: the frame's other person
    #: boxes (not answered in this call, e.g. answered from the track cache), for backends that
    #: must know who else is in the picture (the face baseline gives each face to one person).
    uses_context: ClassVar[bool] = False
    #: True when ``preprocess`` takes a keyword ``faces``: per box, its face as the pipeline's
    #: face stage (``core.faces.FaceFinder``) found it already, so a backend that needs faces
    #: does not search them a second time; ``predict`` passes them only when given.
    uses_faces: ClassVar[bool] = False
    #: True when ``unload`` makes a running ``predict`` call return at once (queued and in
    #: flight alike) and frees nothing that the call still uses (a remote client: no weights
    #: here). A node then unloads at once; for the others it waits until a straggling call has
    #: returned (nodes.base ``_free_model``).
    unload_cancels_calls: ClassVar[bool] = False
    #: Defaults by the backend's cost (README "How each person feels over time"): seconds a
    #: steady track's result is reused (``reuse.max_age_s`` < 0) and the half-life of the
    #: per-person state (``state.half_life_s`` < 0). Here for expensive models (a VLM: hundreds
    #: of ms per person on a GPU): re-run a steady person every 2 s, smooth over about as long.
    reuse_max_age_s: ClassVar[float] = 2.0
    state_half_life_s: ClassVar[float] = 2.0

    def __init__(self, options: BackendOptions | Mapping[str, Any] | None = None) -> None:
        if not isinstance(options, BackendOptions):
            options = self.Options.from_mapping(options)
        self.options = options
        self.thresholds = load_thresholds(options.thresholds)
        self.sets_labels = False
        self._loaded = False
        #: number of batches split because of CUDA out-of-memory (for diagnostics)
        self.oom_retries = 0

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        """What produced the scores (model id or path), for messages and logs."""
        return self.options.model

    @property
    def loaded(self) -> bool:
        return self._loaded

    @abc.abstractmethod
    def load(self) -> None:
        """Load weights. Raises ``ModelLoadError`` with the reason; must be idempotent."""

    def unload(self) -> None:
        """Free the model (and GPU memory). Safe to call when not loaded."""
        self._loaded = False

    def cancel_calls(self, reason: str = 'the call was cancelled') -> None:
        """Make the ``predict`` calls in flight return soon, their unanswered persons ERROR
        'cancelled: ``reason``' (any thread; the model stays loaded). Default: nothing (a
        local model call runs to its end); the remote backend ends its waits at once."""

    def diagnostics(self) -> dict[str, Any]:
        """Backend state worth a key in /diagnostics (the node prefixes them 'backend.')."""
        return {}

    # -- the three stages --------------------------------------------------------------------
    @abc.abstractmethod
    def preprocess(self, image: np.ndarray, boxes: Sequence[BBox]) -> Any:
        """Prepare a batch for ``boxes`` (clipped, valid) on ``image`` (H, W, 3) RGB uint8."""

    @abc.abstractmethod
    def forward(self, batch: Any) -> Any:
        """Model calls only."""

    @abc.abstractmethod
    def postprocess(self, outputs: Any, batch: Any) -> list[EmotionResult]:
        """One ``EmotionResult`` per box of the batch, in order."""

    # -- the entry point ---------------------------------------------------------------------
    def predict(self, image: np.ndarray, boxes: Sequence[BBox],
                context: Sequence[BBox] = (), faces: Sequence[Any] | None = None
                ) -> list[EmotionResult]:
        """Emotions of the persons in ``boxes`` (xyxy pixels) on ``image`` (H, W, 3) RGB uint8.

        Returns one result per box, in order. Boxes partly outside the image are clipped;
        unusable boxes (NaN, inverted, zero area, outside) get ``Status.ERROR`` with the reason,
        and the other persons are still evaluated. ``context``: the frame's other person boxes,
        not answered here (used by backends with ``uses_context``; unusable ones are ignored).
        ``faces``: per box, its ``core.faces.Face`` or None, found by the pipeline's face stage
        (used by backends with ``uses_faces``; None: the backend finds them itself).

        Raises:
            ImageError: the image is unusable (every person would fail the same way).
            BackendError: the backend is not loaded or the model call failed.
        """
        if not self._loaded:
            raise BackendError(f'backend {self.name!r} is not loaded; call load() first')
        validate_image(image)
        h, w = image.shape[:2]
        if faces is not None and len(faces) != len(boxes):
            raise ValueError(f'{len(faces)} faces for {len(boxes)} boxes')
        results: list[EmotionResult | None] = [None] * len(boxes)
        valid_idx: list[int] = []
        valid_boxes: list[BBox] = []
        for i, box in enumerate(boxes):
            try:
                valid_boxes.append(box.clipped(w, h))
                valid_idx.append(i)
            except BoxError as exc:
                results[i] = EmotionResult.failed(Status.ERROR, f'bad box: {exc}',
                                                  self.name, self.model_id)
        others: list[BBox] = []
        for box in context if self.uses_context else ():
            try:
                others.append(box.clipped(w, h))
            except BoxError:
                pass
        given = ([faces[i] for i in valid_idx] if faces is not None and self.uses_faces
                 else None)
        if valid_boxes:
            for i, res in zip(valid_idx, self._predict_split(image, valid_boxes, others, given)):
                results[i] = res
        return [r for r in results if r is not None]

    def _predict_split(self, image: np.ndarray, boxes: list[BBox],
                       context: list[BBox] | None = None, faces: list[Any] | None = None
                       ) -> list[EmotionResult]:
        """The three stages on ``boxes`` (``faces``: theirs, or None); on CUDA out-of-memory,
        the two halves separately (recursively; each half has the other in its context), and
        ERROR ``OUT_OF_GPU_MEMORY`` for a single box that does not fit."""
        context = context or []
        try:
            return self._run_stages(image, boxes, context, faces)
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
        self.oom_retries += 1
        free_gpu_cache()
        if len(boxes) == 1:
            return [EmotionResult.failed(Status.ERROR, OUT_OF_GPU_MEMORY, self.name,
                                         self.model_id)]
        mid = len(boxes) // 2
        first, second = (None, None) if faces is None else (faces[:mid], faces[mid:])
        return (self._predict_split(image, boxes[:mid], boxes[mid:] + context, first)
                + self._predict_split(image, boxes[mid:], boxes[:mid] + context, second))

    def _run_stages(self, image: np.ndarray, boxes: list[BBox],
                    context: list[BBox] | None = None, faces: list[Any] | None = None
                    ) -> list[EmotionResult]:
        t0 = time.perf_counter()
        timings = Timings()
        args = (image, boxes, context or []) if self.uses_context else (image, boxes)
        with timings.measure('preprocess'):
            batch = (self.preprocess(*args, faces=faces) if faces is not None
                     else self.preprocess(*args))
        with timings.measure('inference'):
            outputs = self.forward(batch)
        with timings.measure('postprocess'):
            produced = self.postprocess(outputs, batch)
        if len(produced) != len(boxes):
            raise BackendError(f'backend {self.name!r} returned {len(produced)} results '
                               f'for {len(boxes)} boxes')
        share = (time.perf_counter() - t0) * 1e3 / len(boxes)
        for res in produced:
            res.backend = res.backend or self.name
            res.model = res.model or self.model_id
            res.latency_ms = share
            res.timings = timings
            self._finish(res)
        return produced

    def _finish(self, res: EmotionResult) -> None:
        """Sanity-check scores and fill labels from the thresholds."""
        if res.status not in (Status.OK, Status.CACHED):
            res.scores = np.full(NUM_CATEGORIES, np.nan, dtype=np.float32)
            return
        scores = np.asarray(res.scores, dtype=np.float32).reshape(-1)
        if scores.shape != (NUM_CATEGORIES,) or not np.isfinite(scores).all():
            res.status, res.reason = Status.ERROR, (
                f'backend returned invalid scores (shape {scores.shape}, '
                f'{int((~np.isfinite(scores)).sum())} non-finite values)')
            res.scores = np.full(NUM_CATEGORIES, np.nan, dtype=np.float32)
            res.labels = []
            return
        res.scores = np.clip(scores, 0.0, 1.0)
        if not self.sets_labels:
            res.labels = labels_from_scores(res.scores, self.thresholds)


__all__ = ['BackendError', 'BackendOptions', 'EmotionBackend', 'ImageError', 'ModelLoadError',
           'EMOTIC_CATEGORIES', 'OUT_OF_GPU_MEMORY', 'free_gpu_cache', 'is_out_of_memory',
           'load_thresholds', 'resolve_device', 'validate_image']
