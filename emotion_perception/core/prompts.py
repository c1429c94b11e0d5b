"""Prompts and image marking for the vision-language approach of Etesam et al. (IROS 2024).

The paper marks the target person with a red box drawn on the *full* image (not a crop), lists
the 26 EMOTIC categories and asks which ones the person in the red bounding box feels. Its "*"
variant adds a short definition of each category. This module holds:

* ``mark_image``: the three ways of showing the model who the target is (``red_box`` on the full
  frame, the default; ``crop``; ``crop_context``: a crop with a margin and the red box drawn);
* ``build_prompt``: the paper's question (generate mode), with or without definitions;
* ``score_prefix`` / ``category_query`` / ``vad_query``: the shared part of the score-mode prompt
  and the per-category yes/no question and the 0-9 valence/arousal/dominance questions that
  follow it (see ``emotion_perception.core.backends.vlm`` for how they are scored).

Images are RGB uint8 arrays of shape (H, W, 3); boxes are ``BBox`` xyxy pixels.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .categories import EMOTIC_CATEGORIES
from .types import BBox

#: ways of showing the target person to the model
MARKINGS: tuple[str, ...] = ('red_box', 'crop', 'crop_context')

#: pure red (RGB) for the box, as in the paper
RED: tuple[int, int, int] = (255, 0, 0)

#: box line width as a fraction of the longer image side (at least ``MIN_LINE_WIDTH`` pixels)
LINE_WIDTH_FRACTION = 0.006
MIN_LINE_WIDTH = 2

#: margin added on each side of the box for ``crop_context``, as a fraction of the box size
CONTEXT_MARGIN = 0.5

#: One short definition per category (our own wording, after the EMOTIC category descriptions).
CATEGORY_DEFINITIONS: dict[str, str] = {
    'Affection': 'fond feelings, love, tenderness',
    'Anger': 'intense displeasure or rage; furious, resentful',
    'Annoyance': 'bothered or irritated; impatient, frustrated',
    'Anticipation': 'looking forward to or ready for something that is about to happen',
    'Aversion': 'dislike or disgust; wanting to avoid something',
    'Confidence': 'feeling sure, in control, self-assured',
    'Disapproval': 'thinking something is wrong or unacceptable; disagreeing',
    'Disconnection': 'not interested or not involved; detached, distracted, indifferent',
    'Disquietment': 'nervous, worried, uneasy, restless',
    'Doubt/Confusion': 'unsure, puzzled, hesitant, unable to decide or understand',
    'Embarrassment': 'ashamed or self-conscious; feeling awkward in front of others',
    'Engagement': 'paying attention, absorbed, interested in what is going on',
    'Esteem': 'respect or admiration for someone',
    'Excitement': 'enthusiastic, thrilled, energetic, eager',
    'Fatigue': 'tired, weary, sleepy, exhausted',
    'Fear': 'scared or afraid; feeling threatened or in danger',
    'Happiness': 'glad, cheerful, joyful, pleased',
    'Pain': 'physical suffering or hurt',
    'Peace': 'calm, relaxed, serene, without worry',
    'Pleasure': 'enjoying a sensation or activity; delight',
    'Sadness': 'unhappy, sorrowful, disappointed, depressed',
    'Sensitivity': 'feeling vulnerable or easily hurt; emotionally touched',
    'Suffering': 'psychological or emotional distress; anguish',
    'Surprise': 'sudden reaction to something unexpected; astonished',
    'Sympathy': 'caring about or sharing the feelings of someone else; compassion',
    'Yearning': 'longing for something one lacks; wishing, desiring',
}

#: the VAD questions of score mode (asked on a 0-9 scale, mapped to EMOTIC's 1-10 as value + 1)
VAD_QUESTIONS: dict[str, str] = {
    'valence': 'how pleasant is what {target} feels (0 = very unpleasant, 9 = very pleasant)',
    'arousal': 'how agitated or excited is {target} (0 = very calm, 9 = very agitated)',
    'dominance': 'how much in control of the situation is {target} '
                 '(0 = not at all in control, 9 = fully in control)',
}

_TARGETS = {
    'red_box': 'the person in the red bounding box',
    'crop_context': 'the person in the red bounding box',
    'crop': 'the person in the image',
}
_SHORT_TARGETS = {'red_box': 'the person in the red box', 'crop_context': 'the person in the red box',
                  'crop': 'the person'}


def _check_marking(marking: str) -> None:
    if marking not in MARKINGS:
        raise ValueError(f'unknown marking {marking!r}; choose one of {", ".join(MARKINGS)}')


def target_phrase(marking: str = 'red_box', short: bool = False) -> str:
    """How the prompts refer to the target person for ``marking`` (e.g. 'the person in the red
    bounding box'); ``short`` gives the compact form used in the per-category questions."""
    _check_marking(marking)
    return (_SHORT_TARGETS if short else _TARGETS)[marking]


def category_list(definitions: bool = False) -> str:
    """The 26 categories as prompt text: a comma-separated list, or one ``- Name: definition``
    line per category when ``definitions`` is True."""
    if not definitions:
        return ', '.join(EMOTIC_CATEGORIES)
    return '\n'.join(f'- {c}: {CATEGORY_DEFINITIONS[c]}' for c in EMOTIC_CATEGORIES)


def build_prompt(marking: str = 'red_box', definitions: bool = False,
                 num_labels: int | None = None) -> str:
    """The paper's question for generate mode.

    Args:
        marking: how the target is shown (changes only how the person is referred to).
        definitions: add a short definition of each category (the paper's "*" variant).
        num_labels: ask for exactly this many labels (the "*" variant used 6); None = any.
    """
    target = target_phrase(marking)
    lines = ['Here is a list of emotion categories:' if not definitions
             else 'Here is a list of emotion categories with their meaning:',
             category_list(definitions),
             f'Which of these emotions does {target} feel? Consider the facial expression, '
             'the body pose, what the person is doing and the whole scene.']
    if num_labels:
        lines.append(f'Answer with exactly {int(num_labels)} category names from the list, '
                     'separated by commas.')
    else:
        lines.append('Answer only with the category names from the list, separated by commas.')
    return '\n'.join(lines)


#: how score mode asks its 29 questions (``score_prompt`` option):
#: 'question': each is a user question ('Answer yes or no: does the person ... feel Anger?')
#:     followed by the chat template's assistant start: the natural VQA form;
#: 'prefill': one user instruction asks for a list of answers; each question is the start of
#:     the assistant's answer ('Anger:'), so the template's assistant start is shared by all
#:     questions and each question costs only its own few tokens (cheaper, less natural).
SCORE_PROMPTS: tuple[str, ...] = ('question', 'prefill')


def _check_score_prompt(score_prompt: str) -> None:
    if score_prompt not in SCORE_PROMPTS:
        raise ValueError(f'unknown score_prompt {score_prompt!r}; choose one of {SCORE_PROMPTS}')


def score_prefix(marking: str = 'red_box', definitions: bool = False,
                 score_prompt: str = 'question') -> str:
    """The user text shared by all categories and the VAD questions in score mode.

    'question': the per-question ``score_queries`` text follows it after a newline, in the same
    user turn. 'prefill': it is the whole user turn; the questions are assistant text.
    """
    _check_score_prompt(score_prompt)
    target = target_phrase(marking)
    lines = ['Here is a list of emotion categories:' if not definitions
             else 'Here is a list of emotion categories with their meaning:',
             category_list(definitions),
             f'Look at {target}: the facial expression, the body pose, what the person is doing '
             'and the whole scene.']
    if score_prompt == 'question':
        lines[-1] += ' Then answer the question.'
    else:
        lines.append(prefill_instruction(target_phrase(marking, short=True)))
    return '\n'.join(lines)


def prefill_instruction(target: str = 'the person') -> str:
    """The instruction of the 'prefill' score prompt: the answer format the model continues."""
    return (f'For each emotion category, answer "yes" if {target} feels it and "no" otherwise, '
            'one line per category in the form "Category: yes". Then rate valence, arousal and '
            'dominance with one digit from 0 to 9 each, in the form "Valence: 5".')


def prefill_queries(rendered_prompt: str, queries: Sequence[str]) -> list[str]:
    """'prefill' questions as they follow the rendered prompt (assistant turn start): after a
    template that ends with a space or newline directly, else after one space."""
    sep = '' if not rendered_prompt or rendered_prompt[-1].isspace() else ' '
    return [sep + q for q in queries]


#: score-mode question per category (``{target}`` = short target phrase). The wording shared by
#: all categories comes first, so that only the category and the chat template's tail differ
#: between questions (the scorer reads shared leading tokens once).
CATEGORY_QUERY_TEMPLATE = 'Answer yes or no: does {target} feel {category}?'
#: score-mode question per VAD dimension (shared wording first, as above)
VAD_QUERY_TEMPLATE = 'Answer with one digit from 0 to 9: {question}?'


def category_query(category: str, marking: str = 'red_box') -> str:
    """'Answer yes or no: does the person in the red box feel {category}?'"""
    if category not in EMOTIC_CATEGORIES:
        raise ValueError(f'unknown EMOTIC category {category!r}')
    return CATEGORY_QUERY_TEMPLATE.format(target=target_phrase(marking, short=True),
                                          category=category)


def vad_query(dimension: str, marking: str = 'red_box') -> str:
    """The 0-9 question for 'valence', 'arousal' or 'dominance'."""
    if dimension not in VAD_QUESTIONS:
        raise ValueError(f'unknown VAD dimension {dimension!r}; choose one of {list(VAD_QUESTIONS)}')
    question = VAD_QUESTIONS[dimension].format(target=target_phrase(marking, short=True))
    return VAD_QUERY_TEMPLATE.format(question=question)


#: 'prefill' answers: the start of the assistant's line per VAD dimension (scale anchors kept)
VAD_PREFILLS: dict[str, str] = {
    'valence': 'Valence (0 = very unpleasant, 9 = very pleasant):',
    'arousal': 'Arousal (0 = very calm, 9 = very agitated):',
    'dominance': 'Dominance (0 = not at all in control, 9 = fully in control):',
}


def score_queries(marking: str = 'red_box', include_vad: bool = True,
                  score_prompt: str = 'question') -> list[str]:
    """The 26 category questions in EMOTIC order, then (optionally) valence, arousal, dominance.

    'question': user questions (``category_query`` / ``vad_query``); 'prefill': the start of
    each answer line of the assistant ('Anger:', 'Valence (0 = ..., 9 = ...):').
    """
    _check_score_prompt(score_prompt)
    if score_prompt == 'prefill':
        queries = [f'{c}:' for c in EMOTIC_CATEGORIES]
        return queries + (list(VAD_PREFILLS.values()) if include_vad else [])
    queries = [category_query(c, marking) for c in EMOTIC_CATEGORIES]
    if include_vad:
        queries += [vad_query(d, marking) for d in VAD_QUESTIONS]
    return queries


#: caption_llm: what the captioning model is asked
CAPTION_PROMPT = ('Describe {target} in one paragraph: who they are (gender, age), their facial '
                  'expression and body pose, what they are doing, where they are, and who they are '
                  'with.')


def caption_prompt(marking: str = 'red_box') -> str:
    """The instruction given to the captioning model of the caption_llm backend."""
    return CAPTION_PROMPT.format(target=target_phrase(marking))


def narrative_prefix(caption: str, definitions: bool = False) -> str:
    """The text-only prompt of caption_llm: the narrative, then the category list.

    The per-category questions (``category_query(..., 'crop')``, i.e. about 'the person') or the
    generate-mode question follow it.
    """
    return '\n'.join([
        f'A person is described as follows: {caption.strip()}',
        'Here is a list of emotion categories:' if not definitions
        else 'Here is a list of emotion categories with their meaning:',
        category_list(definitions),
    ])


def narrative_question(num_labels: int | None = None) -> str:
    """The generate-mode question of caption_llm, asked after ``narrative_prefix``."""
    if num_labels:
        return (f'Which {int(num_labels)} of these emotions does the person most likely feel? '
                'Answer only with category names from the list, separated by commas.')
    return ('Which of these emotions does the person most likely feel? '
            'Answer only with category names from the list, separated by commas.')


# -- image marking ----------------------------------------------------------------------------
def line_width(image_shape: Sequence[int]) -> int:
    """Box line width in pixels for an image of shape (H, W, ...)."""
    return max(MIN_LINE_WIDTH, int(round(LINE_WIDTH_FRACTION * max(image_shape[0], image_shape[1]))))


def draw_box(image: np.ndarray, box: BBox, color: tuple[int, int, int] = RED,
             width: int | None = None) -> np.ndarray:
    """A copy of ``image`` (H, W, 3) uint8 with ``box`` (xyxy pixels) outlined in ``color``.

    The outline is drawn inside the box (the box pixels stay the outer edge), clipped to the image.
    """
    out = np.array(image, dtype=np.uint8, copy=True)
    h, w = out.shape[:2]
    b = box.clipped(w, h)
    x1, y1, x2, y2 = int(b.x1), int(b.y1), int(b.x2), int(b.y2)
    t = line_width(out.shape) if width is None else max(1, int(width))
    t = min(t, max(1, (x2 - x1) // 2), max(1, (y2 - y1) // 2))
    col = np.asarray(color, dtype=np.uint8)
    out[y1:y1 + t, x1:x2] = col
    out[y2 - t:y2, x1:x2] = col
    out[y1:y2, x1:x1 + t] = col
    out[y1:y2, x2 - t:x2] = col
    return out


def crop(image: np.ndarray, box: BBox) -> np.ndarray:
    """The pixels of ``box`` (clipped to the image): shape (y2 - y1, x2 - x1, 3), a copy."""
    h, w = image.shape[:2]
    b = box.clipped(w, h)
    return np.ascontiguousarray(image[int(b.y1):int(b.y2), int(b.x1):int(b.x2)])


def context_box(box: BBox, width: int, height: int, margin: float = CONTEXT_MARGIN) -> BBox:
    """``box`` grown by ``margin`` x its width/height on each side, clipped to the image."""
    mx, my = margin * box.width, margin * box.height
    return BBox(math.floor(box.x1 - mx), math.floor(box.y1 - my),
                math.ceil(box.x2 + mx), math.ceil(box.y2 + my)).clipped(width, height)


def mark_image(image: np.ndarray, box: BBox, marking: str = 'red_box',
               margin: float = CONTEXT_MARGIN) -> np.ndarray:
    """The image the model sees for the person in ``box``.

    Args:
        image: (H, W, 3) uint8 RGB, the full frame.
        box: the person, xyxy pixels of ``image``.
        marking: 'red_box' (full frame with a red box, the paper's choice), 'crop' (the person's
            pixels only) or 'crop_context' (the box grown by ``margin`` on each side, with the red
            box drawn around the person).
        margin: see ``context_box``.

    Returns:
        A new (H', W', 3) uint8 RGB array (the input is never modified).
    """
    _check_marking(marking)
    if marking == 'red_box':
        return draw_box(image, box)
    if marking == 'crop':
        return crop(image, box)
    h, w = image.shape[:2]
    ctx = context_box(box.clipped(w, h), w, h, margin)
    shifted = BBox(box.x1 - ctx.x1, box.y1 - ctx.y1, box.x2 - ctx.x1, box.y2 - ctx.y1)
    return draw_box(crop(image, ctx), shifted, width=line_width(image.shape))


__all__ = ['CATEGORY_DEFINITIONS', 'CATEGORY_QUERY_TEMPLATE', 'MARKINGS', 'RED', 'SCORE_PROMPTS',
           'VAD_PREFILLS', 'VAD_QUESTIONS',
           'VAD_QUERY_TEMPLATE', 'build_prompt', 'caption_prompt', 'category_list',
           'category_query', 'context_box', 'crop', 'draw_box', 'line_width', 'mark_image',
           'narrative_prefix', 'narrative_question', 'prefill_instruction', 'prefill_queries',
           'score_prefix', 'score_queries',
           'target_phrase', 'vad_query']
