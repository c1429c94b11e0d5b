"""Find EMOTIC categories in free text written by a language model (the paper's protocol).

The paper reads a generated answer by finding each label name in it. Models rarely answer with
the exact nouns, so each category also matches its usual adjective, verb and synonym forms
(``'happy'`` -> Happiness, ``'angry'`` -> Anger, ``'scared'`` -> Fear, ``'confused'`` ->
Doubt/Confusion, ...). Rules, in order:

1. Matching is case-insensitive and on whole words only: a form never matches inside a longer
   word (``'pain'`` does not match ``'painting'``, ``'happy'`` does not match ``'unhappy'``,
   which is itself a form of Sadness). Hyphens and slashes separate words.
2. Negation scope: a match is ignored when a negation cue (``NEGATIONS``, or a word ending in
   ``n't``) governs it: reading backwards from the match, only verb-phrase filler
   (``SCOPE_WORDS``: 'seem to feel', 'appear to be', 'any signs of', 'in', ...), list
   connectors ('and', 'or', 'nor', commas) and other category words may stand between the cue
   and the match. Any other word, a clause break (``. ; : ! ?``, a newline) or a contrast word
   ('but', 'however', 'although', 'though', 'yet', 'rather', 'instead', 'while') ends the
   scope, and it reaches at most ``NEGATION_SCOPE`` words back. So ``'does not seem to feel
   anger or fear'``, ``'no signs of pain, suffering or fatigue'``, ``'lacks confidence'`` and
   ``"doesn't appear to be sad at all"`` name none of those, while ``'not happy, but sad'`` gives
   Sadness and ``'not only happy'`` gives Happiness. A category is found when at least one of
   its matches is not negated.
3. Labels are returned in EMOTIC order (``EMOTIC_CATEGORIES``), each at most once.

``parse_labels_paper`` is the authors' released protocol instead (no forms, no negation): a
category counts when its lower-case name occurs anywhere in the lower-cased answer. Numbers
meant to sit beside the paper's Table I are computed with it.
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

#: negation cues
NEGATIONS: frozenset[str] = frozenset({
    'not', 'no', 'never', 'without', 'nor', 'neither', 'none', 'lacks', 'lack', 'lacking',
    'hardly', 'cannot', 'nothing', 'isnt', 'doesnt', 'dont', 'arent', 'wasnt', 'free'})
#: words a negation scope passes over (verb phrases, quantifiers, prepositions)
SCOPE_WORDS: frozenset[str] = frozenset({
    'seem', 'seems', 'seemed', 'seeming', 'appear', 'appears', 'appeared', 'appearing',
    'look', 'looks', 'looked', 'looking', 'feel', 'feels', 'felt', 'feeling', 'feelings',
    'show', 'shows', 'showed', 'showing', 'display', 'displays', 'displaying', 'express',
    'expresses', 'expressing', 'exhibit', 'exhibits', 'exhibiting', 'have', 'has', 'had',
    'having', 'be', 'is', 'are', 'was', 'were', 'been', 'being', 'to', 'any', 'sign', 'signs',
    'of', 'evidence', 'hint', 'hints', 'trace', 'traces', 'indication', 'indications', 'a',
    'an', 'the', 'at', 'all', 'very', 'particularly', 'really', 'too', 'overly', 'especially',
    'much', 'so', 'in', 'bit', 'little', 'slightly', 'visibly', 'obviously', 'clearly',
    'necessarily', 'even', 'remotely', 'from', 'either', 'sense', 'emotion', 'emotions',
    'expression', 'expressions', 'kind', 'sort', 'form', 'type', 'more', 'less', 'overtly',
    'currently', 'entirely', 'completely', 'totally', 'seemingly', 'does', 'do', 'did',
    'will', 'would', 'can', 'could'})
#: connectors that continue a list under one negation
_CONNECTORS = frozenset({'and', 'or', 'nor', ','})
#: words that cancel a negation right after it ('not only happy')
_CANCEL = frozenset({'only', 'just', 'merely'})
#: how many words back a negation cue may govern a match
NEGATION_SCOPE = 10

_CONTRAST = frozenset({'but', 'however', 'although', 'though', 'yet', 'rather', 'instead',
                       'while', 'whereas'})
_TOKEN = re.compile(r"[a-z][a-z'’]*|[.;:!?\n]|,", re.IGNORECASE)
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


def _is_cue(word: str) -> bool:
    w = word.lower().replace('\u2019', "'")
    return w.replace("'", '') in NEGATIONS or w.endswith("n't")


def _is_negated(tokens: list[re.Match[str]], label_spans: list[tuple[int, int]],
                start: int) -> bool:
    """True when a negation cue governs the match starting at ``start`` (rule 2)."""
    before = [t for t in tokens if t.end() <= start]
    words = 0
    after_cue: str | None = None
    for tok in reversed(before):
        text = tok.group(0).lower()
        if any(a <= tok.start() and tok.end() <= b for a, b in label_spans):
            after_cue = text
            continue  # another category word of the same list
        if text in '.;:!?\n' or text in _CONTRAST:
            return False
        if _is_cue(text):
            return after_cue not in _CANCEL
        if text not in SCOPE_WORDS and text not in _CONNECTORS:
            return False
        after_cue = text
        words += 1
        if words > NEGATION_SCOPE:
            return False
    return False


def parse_labels(text: str) -> ParsedLabels:
    """The EMOTIC categories named in ``text`` (see the module docstring for the rules).

    Example:
        >>> parse_labels('The man looks happy and a bit confused, not angry.').labels
        ['Doubt/Confusion', 'Happiness']
    """
    matches = {cat: list(_PATTERNS[cat].finditer(text)) for cat in EMOTIC_CATEGORIES}
    spans = [(m.start(), m.end()) for ms in matches.values() for m in ms]
    tokens = list(_TOKEN.finditer(text))
    labels: list[str] = []
    negated: list[str] = []
    for cat in EMOTIC_CATEGORIES:
        if not matches[cat]:
            continue
        if any(not _is_negated(tokens, spans, m.start()) for m in matches[cat]):
            labels.append(cat)
        else:
            negated.append(cat)
    return ParsedLabels(labels, bool(labels), negated)


def parse_labels_paper(text: str) -> ParsedLabels:
    """The authors' protocol: every category whose lower-case name occurs in the lower-cased
    ``text`` (substring, no word forms, no negation), in EMOTIC order.

    Example:
        >>> parse_labels_paper('Not happy; Happiness? unhappiness').labels
        ['Happiness']
    """
    low = text.lower()
    labels = [c for c in EMOTIC_CATEGORIES if c.lower() in low]
    return ParsedLabels(labels, bool(labels), [])


def labels_to_scores(labels: list[str]) -> np.ndarray:
    """Binary scores, shape (26,) float32: 1.0 for each label in ``labels``, else 0.0."""
    scores = np.zeros(NUM_CATEGORIES, dtype=np.float32)
    for name in labels:
        scores[CATEGORY_INDEX[name]] = 1.0
    return scores


__all__ = ['CATEGORY_FORMS', 'NEGATIONS', 'NEGATION_SCOPE', 'ParsedLabels', 'SCOPE_WORDS',
           'labels_to_scores', 'parse_labels', 'parse_labels_paper']
