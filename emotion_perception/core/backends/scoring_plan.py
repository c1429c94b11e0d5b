"""The score-mode plan every prompt-driven backend shares: questions, answer sequences, read-out
and the pixels the model sees. ``vlm`` and ``caption_llm`` (local models) and ``remote`` (a
model behind vLLM's HTTP API) all build their plan here, so a served model reads exactly what
the local backend would read from the same model (no torch here: robots running ``remote``
import it without torch).

* **Questions** (``score_texts``): the user text shared by all 29 questions (the category list)
  and the 26 yes/no + 3 VAD questions (``core.prompts``). The rendered chat prompt of question
  q is ``head + queries[q] + tail``, with head and tail cut from ONE rendering of the chat
  template around a marker (``split_rendered``).
* **Answer sequences** (``plan_answers``): for each question, the token sequences each spelling
  of each answer becomes right after the rendered prompt (``core.readout.AnswerPlan``), from
  ONE batched tokenization of every prompt and every prompt + spelling (``tokenize_many``: a
  local tokenizer, or the server's ``/tokenize`` once for all texts).
* **Read-out** (``read_scores``): ``score = P(yes) / (P(yes) + P(no))`` per category, VAD
  ``1 + E[d]`` on EMOTIC's 1-10 scale (``core.readout``).
* **Pixels** (``marked_images``, ``plan_frame``): the frame brought to the model's working
  resolution ONCE, letterboxed for processors that centre-crop (so the crop keeps people at
  the frame's edges), then each person's box drawn there (``_vision_input``). ``remote`` takes
  the image processor from its config (``load_image_processor``) to send exactly these pixels;
  without one it letterboxes to a square (``square_plan``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import prompts
from ..categories import NUM_CATEGORIES
from ..readout import (DIGIT_SPELLINGS, DIGITS, NO_SPELLINGS, YES_NO, YES_SPELLINGS, AnswerPlan,
                       ReadoutError, TokenIds, digit_expectation, sequences_after,
                       yes_probability)
from ..types import BBox
from ._vision_input import FramePlan, fill_colour, marked_images, plan_frame, working_frame

#: marks where the per-question text goes in the rendered chat template
QUERY_MARK = '<<<EMOTION_QUERY>>>'
#: marks where the assistant's text goes in a chat rendered with ``continue_final_message``
ANSWER_MARK = '<<<EMOTION_ANSWER>>>'

#: texts -> token ids of each (as the model gets the whole text)
TokenizeMany = Callable[[Sequence[str]], Sequence[Sequence[int]]]


# -- questions --------------------------------------------------------------------------------
def score_texts(marking: str = 'red_box', definitions: bool = False,
                score_prompt: str = 'question') -> tuple[str, list[str]]:
    """(the shared user text, the 29 questions: 26 categories in EMOTIC order, then VAD)."""
    return (prompts.score_prefix(marking, definitions, score_prompt),
            prompts.score_queries(marking, score_prompt=score_prompt))


def split_rendered(rendered: str, marker: str = QUERY_MARK) -> tuple[str, str]:
    """``rendered`` (a chat rendered with ``marker`` where the question goes) -> (head, tail).

    Raises:
        ReadoutError: the template does not reproduce the text verbatim (exactly once).
    """
    if rendered.count(marker) != 1:
        raise ReadoutError('the chat template does not reproduce the user text verbatim; '
                           'score mode cannot split the prompt (use mode=generate)')
    head, tail = rendered.split(marker)
    return head, tail


def question_kinds(n_questions: int, n_categories: int = NUM_CATEGORIES) -> list[str]:
    """'yes_no' for the first ``n_categories`` questions, 'digits' for the rest."""
    return ['yes_no' if q < n_categories else 'digits' for q in range(n_questions)]


def answer_spellings(kind: str) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """(outcomes, spellings per outcome) of a question kind ('yes_no' or 'digits')."""
    if kind == 'yes_no':
        return YES_NO, (YES_SPELLINGS, NO_SPELLINGS)
    return DIGITS, DIGIT_SPELLINGS


# -- answer sequences -------------------------------------------------------------------------
def plan_answers(tokenize_many: TokenizeMany, prompts_: Sequence[str],
                 n_categories: int = NUM_CATEGORIES, unk_id: int | None = None
                 ) -> tuple[list[AnswerPlan | None], str, list[list[int]]]:
    """The answer plan of every question from ONE batched tokenization.

    Args:
        tokenize_many: texts -> ids (the model's tokenization of whole prompts).
        prompts_: the full rendered prompt of each question (categories first).
        n_categories: the first ``n_categories`` are yes/no questions, the rest 0-9 ratings.
        unk_id: the unknown token (a sequence containing it is dropped).

    Returns:
        (plan per question, None where VAD cannot be read; why VAD is NaN or partial, '' when
        every digit can be written; the token ids of each prompt).

    Raises:
        ReadoutError: yes/no cannot be written after a prompt (score mode impossible).
    """
    kinds = question_kinds(len(prompts_), n_categories)
    texts: list[str] = []
    for prompt, kind in zip(prompts_, kinds):
        texts.append(prompt)
        for sp in answer_spellings(kind)[1]:
            texts += [prompt + s for s in sp]
    ids = [list(t) for t in tokenize_many(texts)]
    if len(ids) != len(texts):
        raise ReadoutError(f'tokenizer returned {len(ids)} tokenizations for {len(texts)} texts')
    plans: list[AnswerPlan | None] = []
    prompt_ids: list[list[int]] = []
    vad_reason = ''
    at = 0
    for kind in kinds:
        outcomes, spellings = answer_spellings(kind)
        base = ids[at]
        prompt_ids.append(base)
        at += 1
        seqs, dropped = [], []
        for name, sp in zip(outcomes, spellings):
            s, d = sequences_after(base, ids[at:at + len(sp)], sp, unk_id)
            at += len(sp)
            seqs.append(s)
            dropped += [f'{name}: {x}' for x in d]
        plan = AnswerPlan.from_sequences(outcomes, seqs, dropped)
        if kind == 'yes_no':
            if not all(plan.expressible):
                raise ReadoutError('the tokenizer cannot write yes and no after the prompt '
                                   f'({"; ".join(plan.dropped) or "no tokens"}); score mode '
                                   'needs them: use mode=generate')
        elif not any(plan.expressible):
            vad_reason = ('the tokenizer cannot write any digit 0-9 after the prompt '
                          f'({"; ".join(plan.dropped)}): VAD is not scored (NaN)')
            plan = None
        elif not all(plan.expressible) and not vad_reason:
            missing = [d for d, ok in zip(DIGITS, plan.expressible) if not ok]
            vad_reason = f'digits {missing} cannot be written: they get probability 0'
        plans.append(plan)
    return plans, vad_reason, prompt_ids


def one_by_one(tokenize: Callable[[str], Sequence[int]]) -> TokenizeMany:
    """A ``TokenizeMany`` from a one-text tokenize function."""
    return lambda texts: [list(tokenize(t)) for t in texts]


# -- read-out ---------------------------------------------------------------------------------
def read_scores(outcome_logprobs: Sequence[Any], n_categories: int = NUM_CATEGORIES
                ) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(26 scores float32 in [0, 1], (valence, arousal, dominance) in [1, 10] or NaN) from the
    outcome log-probs of each question (``AnswerPlan.outcome_logprobs``; None: not read)."""
    scores = np.array([yes_probability(lp) for lp in outcome_logprobs[:n_categories]],
                      dtype=np.float32)
    vad = tuple(float(1.0 + digit_expectation(lp)) if lp is not None else float('nan')
                for lp in outcome_logprobs[n_categories:])
    if len(vad) != 3:
        vad = (float('nan'),) * 3
    return scores, vad  # type: ignore[return-value]


# -- pixels -----------------------------------------------------------------------------------
def square_plan(height: int, width: int, side: int | None = None) -> FramePlan:
    """Letterbox a frame to a square of ``side`` pixels (default: its longer side): what a
    centre-cropping processor then keeps whole (``remote`` without a processor config)."""
    longer = max(height, width)
    side = int(side or longer)
    scale = side / longer
    ox = int(round((longer - width) * scale / 2))
    oy = int(round((longer - height) * scale / 2))
    return FramePlan((side, side), (scale, scale), (ox, oy), letterbox=True)


def marked_square(image: np.ndarray, boxes: Sequence[BBox], marking: str, side: int
                  ) -> list[np.ndarray]:
    """``marked_images`` for an unknown processor: the frame letterboxed (grey) to a square
    of at most ``side`` pixels once, each box drawn there ('red_box'); crops as they are."""
    if marking != 'red_box':
        return marked_images(image, boxes, marking, None)
    h, w = image.shape[:2]
    plan = square_plan(h, w, min(int(side), max(h, w)))
    frame = working_frame(image, plan, (127, 127, 127))
    return [prompts.draw_box(frame, plan.box(b)) for b in boxes]


def load_image_processor(spec: str) -> Any:
    """The image processor of a model (a folder or a hub id, as ``AutoImageProcessor``).

    Raises:
        ValueError: it cannot be loaded (the message says why).
    """
    import os
    try:
        from transformers import AutoImageProcessor
    except ImportError as exc:  # pragma: no cover - transformers is in the robot install
        raise ValueError(f'processor {spec!r}: transformers is not installed') from exc
    try:
        return AutoImageProcessor.from_pretrained(spec)
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError, HTTP errors
        where = 'no such folder' if spec.startswith(('/', '.', '~')) and not Path(
            spec).exists() else (
            'HF_HUB_OFFLINE is set and it is not in the local cache'
            if os.environ.get('HF_HUB_OFFLINE', '') not in ('', '0') else
            f'{type(exc).__name__}: {exc}')
        raise ValueError(f'cannot load the image processor {spec!r}: {where}') from exc


__all__ = ['ANSWER_MARK', 'FramePlan', 'QUERY_MARK', 'ReadoutError', 'TokenizeMany',
           'answer_spellings', 'fill_colour', 'load_image_processor', 'marked_images',
           'marked_square', 'one_by_one', 'plan_answers', 'plan_frame', 'question_kinds',
           'read_scores', 'score_texts', 'sequences_after', 'split_rendered', 'square_plan',
           'working_frame']
