"""Find EMOTIC categories in free text written by a language model (the paper's protocol).

The paper reads a generated answer by finding each label name in it. Models rarely answer with
the exact nouns, so each category also matches its usual adjective, verb and synonym forms
(``'happy'`` -> Happiness, ``'angry'`` -> Anger, ``'scared'`` -> Fear, ``'confused'`` ->
Doubt/Confusion, ...). Rules, in order:

1. Matching is case-insensitive and on whole words only: a form never matches inside a longer
   word (``'pain'`` does not match ``'painting'``, ``'happy'`` does not match ``'unhappy'``,
   which is itself a form of Sadness). Hyphens and slashes separate words.
2. Negation: a match is ignored when one of the ``NEGATIONS`` words (or a word ending in
   ``n't``) is among the ``NEGATION_WINDOW`` (3) words just before it *within the same clause*.
   A clause ends at ``. , ; : ! ?``, a newline, or the words 'but', 'however', 'although',
   'though', 'yet'. So ``'not happy'``, ``'does not feel any fear'`` and ``'no anger'`` are
   ignored, while ``'not happy, but sad'`` gives Sadness. A category is found when at least
   one of its matches is not negated.
3. Labels are returned in EMOTIC order (``EMOTIC_CATEGORIES``), each at most once.
"""
from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

from .categories import CATEGORY_INDEX, EMOTIC_CATEGORIES, NUM_CATEGORIES

#: word forms per category (regular expressions for one word; matched whole-word, any case)
CATEGORY_FORMS: dict[str, tuple[str, ...]] = {
    'Affection': (r'affections?', r'affectionate(ly)?', r'loving(ly)?', r'tender(ness|ly)?',
                  r'fond(ness)?'),
    'Anger': (r'anger(ed)?', r'angry', r'angrily', r'furious(ly)?', r'enraged', r'rage', r'irate',
              r'outraged'),
    'Annoyance': (r'annoyance', r'annoyed', r'annoying', r'irritated', r'irritation', r'irritable',
                  r'frustrated', r'frustration', r'impatient', r'impatience', r'bothered'),
    'Anticipation': (r'anticipation', r'anticipating', r'anticipates?', r'anticipatory',
                     r'expectant(ly)?', r'expectation'),
    'Aversion': (r'aversion', r'averse', r'disgust(ed|ing)?', r'repulsed', r'repelled'),
    'Confidence': (r'confidence', r'confident(ly)?', r'self-assured', r'assertive'),
    'Disapproval': (r'disapproval', r'disapproving(ly)?', r'disapproves?', r'disapproved'),
    'Disconnection': (r'disconnection', r'disconnected', r'detached', r'detachment',
                      r'disengaged', r'indifferent', r'indifference', r'uninterested',
                      r'distracted'),
    'Disquietment': (r'disquietment', r'disquiet(ed)?', r'uneasy', r'unease', r'nervous(ness)?',
                     r'worried', r'worry', r'anxious', r'anxiety', r'restless(ness)?'),
    'Doubt/Confusion': (r'doubts?', r'doubtful', r'doubting', r'confusion', r'confused',
                        r'puzzled', r'perplexed', r'uncertain', r'uncertainty'),
    'Embarrassment': (r'embarrassment', r'embarrassed', r'ashamed', r'shame', r'self-conscious'),
    'Engagement': (r'engagement', r'engaged', r'absorbed', r'focused', r'attentive',
                   r'interested', r'involved'),
    'Esteem': (r'esteem', r'admiration', r'admiring', r'admires?', r'respect', r'respectful'),
    'Excitement': (r'excitement', r'excited(ly)?', r'thrilled', r'enthusiastic', r'enthusiasm',
                   r'eager(ness)?'),
    'Fatigue': (r'fatigue', r'fatigued', r'tired(ness)?', r'exhausted', r'exhaustion', r'weary',
                r'sleepy'),
    'Fear': (r'fears?', r'fearful', r'afraid', r'scared', r'frightened', r'terrified', r'terror'),
    'Happiness': (r'happiness', r'happy', r'happily', r'joy', r'joyful', r'cheerful', r'glad'),
    'Pain': (r'pain', r'painful', r'hurt', r'hurting', r'aching'),
    'Peace': (r'peace', r'peaceful(ly)?', r'calm(ly|ness)?', r'serene', r'serenity', r'relaxed',
              r'tranquil'),
    'Pleasure': (r'pleasure', r'pleased', r'enjoying', r'enjoyment', r'delight(ed)?'),
    'Sadness': (r'sadness', r'sad', r'sadly', r'unhappy', r'unhappiness', r'sorrow(ful)?',
                r'depressed', r'gloomy', r'melancholy'),
    'Sensitivity': (r'sensitivity', r'sensitive', r'vulnerable', r'vulnerability'),
    'Suffering': (r'suffering', r'suffers?', r'suffered', r'distress(ed)?', r'anguish(ed)?',
                  r'misery', r'miserable'),
    'Surprise': (r'surprise', r'surprised', r'surprising', r'astonished', r'astonishment',
                 r'amazed', r'shocked', r'startled'),
    'Sympathy': (r'sympathy', r'sympathetic', r'sympathi[sz]ing', r'compassion(ate)?',
                 r'empathy', r'empathetic'),
    'Yearning': (r'yearning', r'yearns?', r'longing', r'wistful'),
}

#: words that negate a following label within ``NEGATION_WINDOW`` words of the same clause
NEGATIONS: frozenset[str] = frozenset({
    'not', 'no', 'never', 'without', 'nor', 'neither', 'none', 'lacks', 'lacking', 'hardly',
    'cannot', 'nothing', 'isnt', 'doesnt', 'dont', 'arent', 'wasnt'})
NEGATION_WINDOW = 3

_CLAUSE_BREAK = re.compile(r"[.,;:!?\n]|\b(?:but|however|although|though|yet)\b", re.IGNORECASE)
_WORD = re.compile(r"[a-z']+")
# (?<!\w) / (?!\w): whole words only (a hyphen or slash ends a word)
_PATTERNS: dict[str, re.Pattern[str]] = {
    cat: re.compile(r'(?<![\w])(?:' + '|'.join(forms) + r')(?![\w])', re.IGNORECASE)
    for cat, forms in CATEGORY_FORMS.items()
}
assert set(_PATTERNS) == set(EMOTIC_CATEGORIES)


class ParsedLabels(NamedTuple):
    """What ``parse_labels`` found.

    Attributes:
        labels: categories found, in EMOTIC order.
        found: True when at least one category was found.
        negated: categories that only appeared negated (e.g. 'not happy'), EMOTIC order.
    """

    labels: list[str]
    found: bool
    negated: list[str]


def _is_negated(text: str, start: int) -> bool:
    """True when a negation word is among the 3 words before ``start`` in the same clause."""
    before = text[max(0, start - 120):start]
    breaks = list(_CLAUSE_BREAK.finditer(before))
    if breaks:
        before = before[breaks[-1].end():]
    words = _WORD.findall(before.lower().replace('\u2019', "'"))[-NEGATION_WINDOW:]
    return any(w.replace("'", '') in NEGATIONS or w.endswith("n't") for w in words)


def parse_labels(text: str) -> ParsedLabels:
    """The EMOTIC categories named in ``text`` (see the module docstring for the rules).

    Example:
        >>> parse_labels('The man looks happy and a bit confused, not angry.').labels
        ['Doubt/Confusion', 'Happiness']
    """
    labels: list[str] = []
    negated: list[str] = []
    for cat in EMOTIC_CATEGORIES:
        matches = list(_PATTERNS[cat].finditer(text))
        if not matches:
            continue
        if any(not _is_negated(text, m.start()) for m in matches):
            labels.append(cat)
        else:
            negated.append(cat)
    return ParsedLabels(labels, bool(labels), negated)


def labels_to_scores(labels: list[str]) -> np.ndarray:
    """Binary scores, shape (26,) float32: 1.0 for each label in ``labels``, else 0.0."""
    scores = np.zeros(NUM_CATEGORIES, dtype=np.float32)
    for name in labels:
        scores[CATEGORY_INDEX[name]] = 1.0
    return scores


__all__ = ['CATEGORY_FORMS', 'NEGATIONS', 'NEGATION_WINDOW', 'ParsedLabels', 'labels_to_scores',
           'parse_labels']
