"""Training examples for LoRA fine-tuning of a vision-language model on EMOTIC (no ROS, no loop).

The paper (Etesam et al., IROS 2024) fine-tunes LLaVA-1.5 on the *same* question it asks at
inference: the full image with the target person in a red box, the 26 categories listed, and
the answer being the person's EMOTIC labels, comma-separated. This module builds exactly that:

* ``render_prompt``: the user turn (image + question) rendered with the processor's chat template
  and the assistant turn opened, the same text the ``vlm`` backend's generate mode encodes;
* ``answer_text``: ``'Engagement, Happiness'``: the labels in EMOTIC order, comma-separated;
* ``encode_example``: processor output for (marked image, prompt) followed by the answer tokens
  and the end-of-turn/EOS token, with ``labels`` = -100 everywhere except on those answer tokens;
* ``collate_right``: a right-padded training batch of such examples;
* ``augment``: horizontal flip (image and box), small colour jitter and box jitter;
* ``language_model_targets``: the full names of the language model's linear layers to adapt
  (``q_proj``... of the decoder only, never the vision tower's layers of the same name).

Images are RGB uint8 arrays (H, W, 3); boxes are ``BBox`` xyxy pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from . import prompts
from .categories import CATEGORY_INDEX
from .types import BBox

#: label value the loss ignores (PyTorch's ``cross_entropy`` default ``ignore_index``)
IGNORE_INDEX = -100
#: the paper's LoRA targets: the language model's attention projections
DEFAULT_LORA_TARGETS: tuple[str, ...] = ('q_proj', 'k_proj', 'v_proj', 'o_proj')
#: per-token tensors a processor may return besides input_ids/attention_mask (pad value 0)
_SEQ_KEYS: tuple[str, ...] = ('token_type_ids', 'mm_token_type_ids')


class FinetuneDataError(ValueError):
    """An example cannot be built (no labels, a chat template that drops the answer, ...)."""


# -- text --------------------------------------------------------------------------------------
def user_messages(text: str) -> list[dict[str, Any]]:
    """One user turn holding the image placeholder and ``text`` (the backend's message layout)."""
    return [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': text}]}]


def render_prompt(processor: Any, text: str) -> str:
    """The chat-template rendering of the user turn with the assistant turn opened.

    Identical to what ``VLMBackend`` encodes in generate mode for the same ``text``.
    """
    return processor.apply_chat_template(user_messages(text), add_generation_prompt=True,
                                         tokenize=False)


def answer_text(labels: Iterable[str]) -> str:
    """The training target: the labels in EMOTIC order, comma-separated ('Engagement, Peace').

    Raises:
        FinetuneDataError: no label, or a name that is not an EMOTIC category.
    """
    names = list(dict.fromkeys(labels))
    unknown = [n for n in names if n not in CATEGORY_INDEX]
    if unknown or not names:
        raise FinetuneDataError(f'a training target needs 1+ EMOTIC categories, got {names}')
    return ', '.join(sorted(names, key=CATEGORY_INDEX.__getitem__))


def completion_text(processor: Any, user_text: str, answer: str) -> str:
    """What the chat template puts after the opened assistant turn for ``answer``.

    The text from the end of the prompt to the end of ``answer``, plus the special token that
    directly follows it (the template's end of turn), if any: ``'Happiness, Peace<|im_end|>'``
    for ChatML and Qwen2-VL, ``' Happiness, Peace'`` for LLaVA-1.5 (whose template writes no
    end-of-turn token; ``answer_token_ids`` appends EOS). Whatever the template writes after
    that (newlines, a next turn) is dropped. Templates whose full rendering does not extend the
    prompt rendering give ``answer`` itself.
    """
    prompt = render_prompt(processor, user_text)
    full = processor.apply_chat_template(
        user_messages(user_text) + [{'role': 'assistant',
                                     'content': [{'type': 'text', 'text': answer}]}],
        add_generation_prompt=False, tokenize=False)
    tail = full[len(prompt):] if full.startswith(prompt) else ''
    at = tail.find(answer)
    if at < 0:
        return answer
    end = at + len(answer)
    specials = sorted(set(getattr(processor.tokenizer, 'all_special_tokens', []) or []),
                      key=len, reverse=True)
    follow = next((s for s in specials if s and tail.startswith(s, end)), '')
    return tail[:end] + follow


def _add_special_tokens(tokenizer: Any, text: str) -> bool:
    """As the backend: no extra BOS when the rendered template already starts with it."""
    bos = getattr(tokenizer, 'bos_token', None)
    return not (bos and text.startswith(bos))


def answer_token_ids(processor: Any, prompt: str, completion: str,
                     stop_ids: Iterable[int] = ()) -> list[int]:
    """Token ids of ``completion`` as they follow ``prompt``, ending with a stop token.

    The ids are those of ``tokenize(prompt + completion)`` after the ids of
    ``tokenize(prompt)`` when the latter are a prefix (they are for the usual templates, which
    end the prompt on a special token or ':'); else ``completion`` tokenized on its own. If the
    last id is not a stop id (``stop_ids`` or the tokenizer's EOS), the tokenizer's EOS is
    appended, so the model learns to stop after the labels.

    Raises:
        FinetuneDataError: the tokenizer has no EOS token and no stop id ends the completion.
    """
    tok = processor.tokenizer
    special = _add_special_tokens(tok, prompt)
    p_ids = list(tok(prompt, add_special_tokens=special)['input_ids'])
    f_ids = list(tok(prompt + completion, add_special_tokens=special)['input_ids'])
    if len(f_ids) > len(p_ids) and f_ids[:len(p_ids)] == p_ids:
        ids = f_ids[len(p_ids):]
    else:
        ids = list(tok(completion, add_special_tokens=False)['input_ids'])
    stops = {int(i) for i in stop_ids}
    if tok.eos_token_id is not None:
        stops.add(int(tok.eos_token_id))
    if not ids or ids[-1] not in stops:
        if tok.eos_token_id is None:
            raise FinetuneDataError('the tokenizer has no EOS token to end the answer with')
        ids.append(int(tok.eos_token_id))
    return ids


@dataclass(frozen=True)
class PromptSpec:
    """The question the model is trained (and evaluated) on.

    Attributes:
        marking: 'red_box' (paper) | 'crop' | 'crop_context' (see ``prompts.mark_image``).
        definitions: list a short definition with each category (the paper's "*" variant).
    """

    marking: str = 'red_box'
    definitions: bool = False

    def question(self) -> str:
        """The generate-mode question (``prompts.build_prompt``), as the backend asks it."""
        return prompts.build_prompt(self.marking, self.definitions, None)


# -- one example ---------------------------------------------------------------------------------
def encode_example(processor: Any, image: np.ndarray, box: BBox, labels: Sequence[str],
                   spec: PromptSpec = PromptSpec(), stop_ids: Iterable[int] = (),
                   prompt: str | None = None) -> dict[str, Any]:
    """Model inputs and loss labels for one person.

    Args:
        processor: the model's processor (tokenizer + image processor + chat template).
        image: (H, W, 3) uint8 RGB, the full frame (marked here with ``spec.marking``).
        box: the person, xyxy pixels of ``image``.
        labels: the person's EMOTIC categories (the answer).
        spec: marking and prompt variant.
        stop_ids: ids that end a turn (e.g. the generation config's EOS ids), see
            ``answer_token_ids``.
        prompt: the rendered prompt (``render_prompt(processor, spec.question())``), to skip
            re-rendering it for every example.

    Returns:
        The processor output for (marked image, prompt) extended by the answer: ``input_ids``
        (1, L) int64, ``attention_mask`` (1, L), ``labels`` (1, L) int64 with
        ``IGNORE_INDEX`` on the L_p prompt and image tokens and the answer ids on the last
        L - L_p positions, plus the processor's image tensors (e.g. ``pixel_values``
        (1, 3, S, S) for LLaVA). ``n_prompt`` (int) is L_p.
    """
    import torch
    from PIL import Image

    if prompt is None:
        prompt = render_prompt(processor, spec.question())
    answer = answer_text(labels)
    completion = completion_text(processor, spec.question(), answer)
    ans_ids = answer_token_ids(processor, prompt, completion, stop_ids)
    from .backends._vision_input import marked_images  # the marking inference uses
    marked = marked_images(image, [box], spec.marking,
                           getattr(processor, 'image_processor', None))[0]
    enc = dict(processor(text=prompt, images=Image.fromarray(marked), return_tensors='pt',
                         add_special_tokens=_add_special_tokens(processor.tokenizer, prompt)))
    n_prompt = int(enc['input_ids'].shape[-1])
    ans = torch.tensor([ans_ids], dtype=enc['input_ids'].dtype)
    out: dict[str, Any] = {}
    for key, value in enc.items():
        if key == 'input_ids':
            value = torch.cat([value, ans], dim=-1)
        elif key == 'attention_mask':
            value = torch.cat([value, torch.ones_like(ans, dtype=value.dtype)], dim=-1)
        elif key in _SEQ_KEYS and isinstance(value, torch.Tensor) and value.shape[-1] == n_prompt:
            value = torch.cat([value, torch.zeros_like(ans, dtype=value.dtype)], dim=-1)
        out[key] = value
    out['labels'] = torch.cat([torch.full((1, n_prompt), IGNORE_INDEX, dtype=torch.long),
                               ans.long()], dim=-1)
    out['n_prompt'] = n_prompt
    return out


def collate_right(items: Sequence[Mapping[str, Any]], pad_id: int) -> dict[str, Any]:
    """Batch examples of ``encode_example`` with right padding.

    Args:
        items: examples, each with batch dimension 1.
        pad_id: id for padded ``input_ids``.

    Returns:
        ``input_ids`` (B, L) padded with ``pad_id``, ``attention_mask`` (B, L) 0 on padding,
        ``labels`` (B, L) ``IGNORE_INDEX`` on padding, other per-token tensors padded with 0,
        image tensors concatenated along dim 0 (as processors batch them). L = longest example.
    """
    import torch
    length = max(int(it['input_ids'].shape[-1]) for it in items)
    pads = {'input_ids': pad_id, 'attention_mask': 0, 'labels': IGNORE_INDEX}
    out: dict[str, Any] = {}
    for key, first in items[0].items():
        if not isinstance(first, torch.Tensor):
            continue
        tensors = [it[key] for it in items]
        if key in pads or key in _SEQ_KEYS:
            value = pads.get(key, 0)
            out[key] = torch.cat([torch.cat([t, torch.full((1, length - t.shape[-1]), value,
                                                           dtype=t.dtype)], dim=-1)
                                  for t in tensors], dim=0)
        else:
            out[key] = torch.cat(tensors, dim=0)
    return out


# -- augmentation --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Augmentation:
    """Simple, label-preserving augmentation of one (image, box) pair.

    Attributes:
        flip_p: probability of a horizontal flip of the image and the box.
        color_jitter: per-channel gain drawn from [1 - c, 1 + c] and a brightness offset from
            [-c, c] x 255 (the same for all channels).
        box_jitter: each box edge moves by up to this fraction of the box width/height.
    """

    flip_p: float = 0.5
    color_jitter: float = 0.1
    box_jitter: float = 0.05


def flip_box(box: BBox, width: int) -> BBox:
    """``box`` (xyxy pixels) mirrored in an image ``width`` pixels wide."""
    return BBox(width - box.x2, box.y1, width - box.x1, box.y2)


def augment(image: np.ndarray, box: BBox, rng: np.random.Generator,
            aug: Augmentation = Augmentation()) -> tuple[np.ndarray, BBox]:
    """A randomly flipped, colour- and box-jittered copy of (image, box).

    Args:
        image: (H, W, 3) uint8 RGB.
        box: xyxy pixels of ``image``.
        rng: the random source (seeded by the caller).
        aug: strengths.

    Returns:
        (image (H, W, 3) uint8, box xyxy pixels inside the image with positive area).
    """
    h, w = image.shape[:2]
    out = image
    if rng.random() < aug.flip_p:
        out = out[:, ::-1]
        box = flip_box(box, w)
    if aug.color_jitter > 0:
        c = aug.color_jitter
        gain = rng.uniform(1 - c, 1 + c, size=3)
        offset = rng.uniform(-c, c) * 255.0
        out = np.clip(out.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)
    else:
        out = np.ascontiguousarray(out)
    if aug.box_jitter > 0:
        bw, bh = box.width, box.height
        dx = rng.uniform(-aug.box_jitter, aug.box_jitter, size=2) * bw
        dy = rng.uniform(-aug.box_jitter, aug.box_jitter, size=2) * bh
        x1, x2 = box.x1 + dx[0], box.x2 + dx[1]
        y1, y2 = box.y1 + dy[0], box.y2 + dy[1]
        jittered = BBox(max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2))
        if jittered.width >= 2 and jittered.height >= 2:
            box = jittered
    return out, box


# -- LoRA targets --------------------------------------------------------------------------------
def language_model_targets(model: Any, names: Sequence[str] = DEFAULT_LORA_TARGETS) -> list[str]:
    """Full module names of the language model's linear layers whose last name is in ``names``.

    The vision tower of LLaVA also has ``q_proj``/``k_proj``/``v_proj``: matching by suffix alone
    would adapt it too; the paper adapts the language model. The language model is
    ``model.get_decoder()`` (or ``model.language_model`` / ``model.model.language_model``).

    Raises:
        FinetuneDataError: no language model found, or no linear layer of it matches.
    """
    import torch
    decoder = None
    try:
        decoder = model.get_decoder()
    except (AttributeError, NotImplementedError):
        pass
    if decoder is None:
        decoder = (getattr(model, 'language_model', None)
                   or getattr(getattr(model, 'model', None), 'language_model', None))
    if decoder is None:
        raise FinetuneDataError(f'cannot find the language model of {type(model).__name__}')
    inside = {id(m) for m in decoder.modules()}
    wanted = set(names)
    found = [n for n, m in model.named_modules()
             if id(m) in inside and isinstance(m, torch.nn.Linear)
             and n.rsplit('.', 1)[-1] in wanted]
    if not found:
        linear = sorted({n.rsplit('.', 1)[-1] for n, m in decoder.named_modules()
                         if isinstance(m, torch.nn.Linear)})
        raise FinetuneDataError(f'no linear layer named {sorted(wanted)} in the language model; '
                                f'its linear layers are named {linear}')
    return found


__all__ = ['Augmentation', 'DEFAULT_LORA_TARGETS', 'FinetuneDataError', 'IGNORE_INDEX',
           'PromptSpec', 'answer_text', 'answer_token_ids', 'augment', 'collate_right',
           'completion_text', 'encode_example', 'flip_box', 'language_model_targets',
           'render_prompt', 'user_messages']
