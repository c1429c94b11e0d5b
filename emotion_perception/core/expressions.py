"""EMOTIC scores + VAD -> one facial-expression word of ROS4HRI's ``hri_msgs/Expression``.

REP-155 consumers (libhri / pyhri) read a face's expression as one of the ``Expression``
constants plus valence / arousal in [-1, 1]. ROS-free: the node fills the message from
:func:`to_expression`.

The table :data:`EXPRESSION_TABLE` gives each expression used here the EMOTIC categories that
are evidence for it and a prototype (valence, arousal) in [-1, 1]. Every one of the 26
categories is evidence for exactly one expression. The nearest expression is the one with the
highest ``evidence - VAD_WEIGHT * distance``: evidence = the highest score among its
categories, distance = the Euclidean distance between the person's (valence, arousal) and the
prototype divided by its maximum 2*sqrt(2) (the distance term is left out when the backend
gives no VAD). ``confidence`` = that expression's evidence (a score in [0, 1]).

valence / arousal = (v - 5.5) / 4.5 of EMOTIC's 1-10 scale, clipped to [-1, 1]; when the
backend gives no VAD they are the score-weighted mean of the prototypes of all expressions
(weights = their evidence), so a consumer still gets a direction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .categories import CATEGORY_INDEX, EMOTIC_CATEGORIES

#: expression word (hri_msgs/Expression constant value) -> (EMOTIC categories that are evidence
#: for it, prototype valence, prototype arousal in [-1, 1])
EXPRESSION_TABLE: dict[str, tuple[tuple[str, ...], float, float]] = {
    'happy': (('Happiness', 'Pleasure', 'Affection', 'Esteem'), 0.8, 0.4),
    'excited': (('Excitement', 'Anticipation'), 0.6, 0.8),
    'surprised': (('Surprise',), 0.2, 0.8),
    'neutral': (('Peace', 'Engagement', 'Confidence', 'Sympathy'), 0.1, -0.1),
    'sad': (('Sadness', 'Suffering', 'Pain'), -0.7, -0.3),
    'angry': (('Anger',), -0.7, 0.7),
    'annoyed': (('Annoyance', 'Disapproval'), -0.4, 0.3),
    'disgusted': (('Aversion',), -0.6, 0.3),
    'scared': (('Fear', 'Disquietment'), -0.7, 0.6),
    'embarrassed': (('Embarrassment',), -0.3, 0.3),
    'confused': (('Doubt/Confusion',), -0.1, 0.1),
    'tired': (('Fatigue',), -0.2, -0.7),
    'bored': (('Disconnection',), -0.3, -0.5),
    'pleading': (('Yearning',), -0.2, 0.2),
    'vulnerable': (('Sensitivity',), -0.3, 0.1),
}
#: how much a (valence, arousal) far from a prototype counts against that expression
VAD_WEIGHT = 0.5
_MAX_DIST = 2.0 * math.sqrt(2.0)

_NAMES = tuple(EXPRESSION_TABLE)
_CATS = [np.array([CATEGORY_INDEX[c] for c in EXPRESSION_TABLE[n][0]]) for n in _NAMES]
_PROTO = np.array([EXPRESSION_TABLE[n][1:] for n in _NAMES], dtype=np.float64)
assert sorted(c for n in _NAMES for c in EXPRESSION_TABLE[n][0]) == sorted(EMOTIC_CATEGORIES), \
    'every EMOTIC category must be evidence for exactly one expression'


@dataclass(frozen=True)
class ExpressionEstimate:
    """One ``hri_msgs/Expression`` worth: ``expression`` word, valence / arousal in [-1, 1],
    confidence in [0, 1]."""

    expression: str
    valence: float
    arousal: float
    confidence: float


def vad_to_unit(value: float) -> float:
    """EMOTIC's 1-10 scale -> [-1, 1] ((v - 5.5) / 4.5, clipped); NaN stays NaN."""
    if not math.isfinite(value):
        return math.nan
    return min(1.0, max(-1.0, (float(value) - 5.5) / 4.5))


def to_expression(scores: Sequence[float], vad: Sequence[float]) -> ExpressionEstimate:
    """The nearest expression of 26 category scores (in [0, 1], EMOTIC order) and VAD (1-10,
    NaN where unknown). See the module docstring for the rule.

    Raises:
        ValueError: not 26 scores, or no finite score.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (len(EMOTIC_CATEGORIES),):
        raise ValueError(f'expected {len(EMOTIC_CATEGORIES)} scores, got shape {s.shape}')
    if not np.isfinite(s).any():
        raise ValueError('no finite score')
    s = np.clip(np.nan_to_num(s, nan=0.0), 0.0, 1.0)
    evidence = np.array([s[idx].max() for idx in _CATS])
    v, a = vad_to_unit(vad[0]), vad_to_unit(vad[1])
    rank = evidence.copy()
    if math.isfinite(v) and math.isfinite(a):
        rank -= VAD_WEIGHT * np.linalg.norm(_PROTO - (v, a), axis=1) / _MAX_DIST
    else:
        w = evidence.sum()
        v, a = ((evidence @ _PROTO) / w).tolist() if w > 0 else (0.0, 0.0)
    best = int(np.argmax(rank))
    return ExpressionEstimate(_NAMES[best], float(v), float(a),
                              float(min(1.0, max(0.0, evidence[best]))))
