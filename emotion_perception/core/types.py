"""Value objects passed between the core stages and the ROS adapters.

Box convention everywhere: ``xyxy`` in pixels of the full image, floats, x to the right and y
down, (x1, y1) the top-left corner and (x2, y2) the bottom-right corner (exclusive).
Images are numpy arrays of shape (H, W, 3), dtype uint8, channel order RGB.
"""
from __future__ import annotations

import enum
import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Iterator

import numpy as np

from .categories import EMOTIC_CATEGORIES, NUM_CATEGORIES, VAD_NAMES


class BoxError(ValueError):
    """A box that cannot be used (NaN, inverted, zero area or entirely outside the image)."""


@dataclass(frozen=True)
class BBox:
    """Axis-aligned box, ``xyxy`` in pixels (floats)."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    @property
    def center(self) -> tuple[float, float]:
        return (self.x1 + self.x2) / 2.0, (self.y1 + self.y2) / 2.0

    def xyxy(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]

    @classmethod
    def from_xywh(cls, x: float, y: float, w: float, h: float) -> 'BBox':
        return cls(float(x), float(y), float(x) + float(w), float(y) + float(h))

    def clipped(self, width: int, height: int) -> 'BBox':
        """This box clipped to an image of ``width`` x ``height`` pixels, with integer corners.

        Raises:
            BoxError: NaN/inf coordinates, inverted or zero-area box, or no overlap with the image.
        """
        coords = (self.x1, self.y1, self.x2, self.y2)
        if not all(math.isfinite(c) for c in coords):
            raise BoxError(f'box has non-finite coordinates {coords}')
        if self.x2 <= self.x1 or self.y2 <= self.y1:
            raise BoxError(f'box is inverted or has zero area: xyxy={coords}')
        x1 = min(max(int(math.floor(self.x1)), 0), width)
        y1 = min(max(int(math.floor(self.y1)), 0), height)
        x2 = min(max(int(math.ceil(self.x2)), 0), width)
        y2 = min(max(int(math.ceil(self.y2)), 0), height)
        if x2 <= x1 or y2 <= y1:
            raise BoxError(f'box xyxy={coords} lies outside the {width}x{height} image')
        return BBox(float(x1), float(y1), float(x2), float(y2))

    def iou(self, other: 'BBox') -> float:
        ix = max(0.0, min(self.x2, other.x2) - max(self.x1, other.x1))
        iy = max(0.0, min(self.y2, other.y2) - max(self.y1, other.y1))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class PersonDetection:
    """One person box from the detector. ``track_id`` is '' when not tracked."""

    bbox: BBox
    confidence: float = 1.0
    track_id: str = ''
    class_id: int = 0


@dataclass
class Timings:
    """Per-stage wall-clock times in milliseconds."""

    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return self.preprocess_ms + self.inference_ms + self.postprocess_ms

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        """``with timings.measure('inference'): ...`` adds the elapsed time to ``<stage>_ms``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            attr = f'{stage}_ms'
            setattr(self, attr, getattr(self, attr) + (time.perf_counter() - t0) * 1e3)


@dataclass
class DetectionResult:
    """All persons found in one image, with the detector's per-stage timings."""

    detections: list[PersonDetection]
    image_width: int
    image_height: int
    timings: Timings = field(default_factory=Timings)


class Status(enum.IntEnum):
    """Outcome for one person; values equal ``PersonEmotion.STATUS_*``."""

    OK = 0
    CACHED = 1
    SKIPPED = 2
    ERROR = 3


def nan_scores() -> np.ndarray:
    return np.full(NUM_CATEGORIES, np.nan, dtype=np.float32)


NAN_VAD: tuple[float, float, float] = (math.nan, math.nan, math.nan)


@dataclass
class EmotionResult:
    """How one person feels, as produced by an emotion backend.

    Attributes:
        scores: shape (26,) float32 in [0, 1], ``EMOTIC_CATEGORIES`` order; NaN when not OK.
        labels: predicted categories (above threshold), highest score first.
        vad: (valence, arousal, dominance) on the 1-10 scale; NaN where the backend gives none.
        status: OK / CACHED / SKIPPED / ERROR; ``reason`` says why when not OK.
        text: the model's raw answer when the backend generated text (else '').
        latency_ms: this person's share of the backend call.
        cache_age_s: age of a CACHED result in seconds.
    """

    scores: np.ndarray = field(default_factory=nan_scores)
    labels: list[str] = field(default_factory=list)
    vad: tuple[float, float, float] = NAN_VAD
    status: Status = Status.OK
    reason: str = ''
    backend: str = ''
    model: str = ''
    text: str = ''
    latency_ms: float = 0.0
    cache_age_s: float = 0.0
    timings: Timings = field(default_factory=Timings)

    @classmethod
    def failed(cls, status: Status, reason: str, backend: str = '', model: str = ''
               ) -> 'EmotionResult':
        """A result with no scores (NaN), for SKIPPED or ERROR."""
        return cls(status=status, reason=reason, backend=backend, model=model)

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` highest-scoring categories as (name, score); empty when scores are NaN."""
        if not np.isfinite(self.scores).any():
            return []
        order = np.argsort(-np.nan_to_num(self.scores, nan=-1.0), kind='stable')[:k]
        return [(EMOTIC_CATEGORIES[i], float(self.scores[i])) for i in order]

    def to_dict(self) -> dict:
        """JSON-serialisable dict (NaN becomes None)."""
        def num(x: float) -> float | None:
            return None if x is None or not math.isfinite(x) else round(float(x), 6)
        return {
            'scores': {n: num(s) for n, s in zip(EMOTIC_CATEGORIES, self.scores.tolist())},
            'labels': list(self.labels),
            'vad': {n: num(v) for n, v in zip(VAD_NAMES, self.vad)},
            'status': self.status.name.lower(),
            'reason': self.reason,
            'backend': self.backend,
            'model': self.model,
            'text': self.text,
            'latency_ms': num(self.latency_ms),
            'cache_age_s': num(self.cache_age_s),
            'timings': {k: num(v) for k, v in asdict(self.timings).items()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())
