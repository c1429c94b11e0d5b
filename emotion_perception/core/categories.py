"""The EMOTIC label space: 26 discrete categories and valence/arousal/dominance (Kosti et al.)."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

#: The 26 EMOTIC categories, in the order used by every score vector of this package and by
#: ``PersonEmotion.CATEGORY_NAMES``.
EMOTIC_CATEGORIES: tuple[str, ...] = (
    'Affection', 'Anger', 'Annoyance', 'Anticipation', 'Aversion', 'Confidence', 'Disapproval',
    'Disconnection', 'Disquietment', 'Doubt/Confusion', 'Embarrassment', 'Engagement', 'Esteem',
    'Excitement', 'Fatigue', 'Fear', 'Happiness', 'Pain', 'Peace', 'Pleasure', 'Sadness',
    'Sensitivity', 'Suffering', 'Surprise', 'Sympathy', 'Yearning',
)
NUM_CATEGORIES = len(EMOTIC_CATEGORIES)
CATEGORY_INDEX: dict[str, int] = {name: i for i, name in enumerate(EMOTIC_CATEGORIES)}

#: Valence, arousal and dominance are on EMOTIC's 1-10 scale.
VAD_NAMES: tuple[str, str, str] = ('valence', 'arousal', 'dominance')
VAD_MIN, VAD_MAX = 1.0, 10.0

#: Default decision threshold on a category score.
DEFAULT_THRESHOLD = 0.5


def thresholds_array(thresholds: float | Sequence[float] | Mapping[str, float] | None = None
                     ) -> np.ndarray:
    """Per-category thresholds as a float32 array of shape (26,).

    Args:
        thresholds: one value for all categories, 26 values in category order, or a mapping
            category name -> value (missing categories keep ``DEFAULT_THRESHOLD``).

    Raises:
        ValueError: unknown category name, wrong length, or a value outside [0, 1].
    """
    out = np.full(NUM_CATEGORIES, DEFAULT_THRESHOLD, dtype=np.float32)
    if thresholds is None:
        return out
    if isinstance(thresholds, Mapping):
        unknown = sorted(set(thresholds) - set(CATEGORY_INDEX))
        if unknown:
            raise ValueError(f'unknown EMOTIC categories in thresholds: {unknown}; '
                             f'valid names: {", ".join(EMOTIC_CATEGORIES)}')
        for name, value in thresholds.items():
            out[CATEGORY_INDEX[name]] = float(value)
    elif isinstance(thresholds, (int, float)):
        out[:] = float(thresholds)
    else:
        values = np.asarray(thresholds, dtype=np.float32)
        if values.shape != (NUM_CATEGORIES,):
            raise ValueError(f'expected {NUM_CATEGORIES} thresholds, got shape {values.shape}')
        out[:] = values
    if not np.all((out >= 0.0) & (out <= 1.0)):
        raise ValueError(f'thresholds must lie in [0, 1], got {out.tolist()}')
    return out


def labels_from_scores(scores: np.ndarray, thresholds: np.ndarray | None = None) -> list[str]:
    """Categories whose score is >= their threshold, highest score first.

    Args:
        scores: shape (26,), values in [0, 1]; NaN scores never produce a label.
        thresholds: shape (26,) (see ``thresholds_array``); default 0.5 for all.
    """
    scores = np.asarray(scores, dtype=np.float32)
    thr = thresholds_array() if thresholds is None else thresholds
    hits = np.flatnonzero(np.nan_to_num(scores, nan=-1.0) >= thr)
    hits = hits[np.argsort(-scores[hits], kind='stable')]
    return [EMOTIC_CATEGORIES[i] for i in hits]
