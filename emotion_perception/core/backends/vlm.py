"""Contextual emotion with a vision-language model (approach 2 of Etesam et al., IROS 2024).

Any Hugging Face image-text-to-text model (``AutoModelForImageTextToText`` + ``AutoProcessor``
+ the processor's chat template), from a hub id or a local folder, optionally with a LoRA
adapter (PEFT), sees the full frame with the target person in a red box (``marking``) and is
asked about the 26 EMOTIC categories. Two modes:

``score`` (default): one yes/no question per category, all sharing the image and the category
    list as a prefix (``_prefix_scoring``: one prefix pass, then all 26 + 3 questions as ONE
    masked token tree per person on the prefix's KV cache, which is read once and never
    copied). The score of a category is the normalised probability of answering yes::

        score = P(yes) / (P(yes) + P(no))

    where P(yes) sums, over the spellings 'yes', 'Yes', 'YES', ' yes', ' Yes', ' YES', the
    probability of the token sequence the model would emit for that spelling right after the
    rendered prompt (``core.readout``: found by tokenizing prompt + spelling; several tokens are
    scored exactly by teacher forcing), and P(no) likewise for 'no', 'No', ... . Valence,
    arousal and dominance are asked on a 0-9 scale ("Answer with one digit"); the value is
    ``1 + E[d]`` with ``E[d] = sum_d d * P(d) / sum_d P(d)`` over the digits 0..9 (P(d) summed
    over the spellings 'd' and ' d', e.g. ``['▁', '5']`` on Llama-2 SentencePiece), which maps
    0..9 linearly onto EMOTIC's 1..10. A tokenizer that cannot write any digit gives VAD NaN
    (logged once, ``diagnostics()['vad']``); the categories are still scored. Labels come from
    the per-category thresholds.
``generate``: the paper's protocol: greedy generation (``max_new_tokens``) of an answer to the
    question listing the 26 categories, parsed with ``label_parsing.parse_labels`` (or the
    authors' substring protocol, ``parser='paper'``); scores are 1.0 for the labels found and
    0.0 otherwise; ``result.text`` holds the answer. An answer with no known label gives status
    SKIPPED with reason 'no known label in answer' and the answer in ``text`` (for the metrics
    that is a prediction of the empty set, as in the paper's protocol). VAD is NaN.

Preprocessing per frame: the frame is brought to the model's working resolution once and each
person's box drawn there (``scoring_plan``); persons go through the processor and the model
``batch_size`` at a time in one call (left-padded; anyres processors pad their own tiles).
"""
from __future__ import annotations

import gc
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import prompts
from ..categories import NUM_CATEGORIES
from ..label_parsing import labels_to_scores, parse_labels, parse_labels_paper
from ..model_files import ModelFileError, resolve_model_path
from ..types import NAN_VAD, BBox, EmotionResult, Status
from .base import BackendError, BackendOptions, EmotionBackend, ModelLoadError, resolve_device
from .quantization import (QuantizationOptions, check_available, choose_library,
                           quantization_config, verify_quantized)

LOG = logging.getLogger(__name__)

#: the paper's model (LLaVA-1.5); it needs the hub or a local copy
DEFAULT_VLM = 'llava-hf/llava-1.5-7b-hf'
MODES = ('score', 'generate')
#: generate-mode label parsers (see ``PromptModelOptions.parser``)
PARSERS = ('robust', 'paper')
DTYPES = ('auto', 'float32', 'bfloat16', 'float16')
NO_LABEL_REASON = 'no known label in answer'


# -- loading (shared with caption_llm) --------------------------------------------------------
#: ``dtype: auto`` on a CPU with bf16 matmul instructions takes bfloat16 for language models at
#: least this wide (hidden size): measured faster there (bench_vlm --dtypes: SmolVLM-256M's
#: 576 and Qwen2-VL-2B's 1536); tiny models stay float32 (per-op overhead, not matmuls)
BF16_MIN_HIDDEN = 512
#: CPU flags (/proc/cpuinfo) of native bf16 matmuls: AVX512-BF16 (Cooper Lake, Zen 4+), AMX
BF16_CPU_FLAGS = ('avx512_bf16', 'amx_bf16')


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matmul instructions (``BF16_CPU_FLAGS``; Linux)."""
    try:
        flags = Path('/proc/cpuinfo').read_text()
    except OSError:
        return False
    return any(f' {flag}' in flags for flag in BF16_CPU_FLAGS)


def _hidden_size(config: Any) -> int:
    cfg = getattr(config, 'text_config', None) or config
    return int(getattr(cfg, 'hidden_size', 0) or 0)


def torch_dtype(name: str, device: str, config: Any = None) -> Any:
    """The torch dtype for ``name`` on ``device``.

    'auto': on CUDA bfloat16 (float16 where bf16 is unsupported); on a CPU bfloat16 when it has
    native bf16 matmuls (``cpu_has_bf16``) and the language model is at least
    ``BF16_MIN_HIDDEN`` wide (``config``: the model's config; None = float32), else float32.
    """
    import torch
    if name not in DTYPES:
        raise ValueError(f'unknown dtype {name!r}; choose one of {", ".join(DTYPES)}')
    if name == 'auto':
        if not str(device).startswith('cuda'):
            wide = config is not None and _hidden_size(config) >= BF16_MIN_HIDDEN
            return torch.bfloat16 if wide and cpu_has_bf16() else torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, name)


def _load_error(src: str, what: str, exc: BaseException) -> ModelLoadError:
    """A ModelLoadError naming ``src`` and saying whether it was read as a folder or a hub id."""
    # hub ids are 'name' or 'org/name'; anything else is read as a folder
    looks_local = src.startswith(('/', '.', '~')) or src.count('/') > 1 or Path(src).exists()
    if looks_local and not Path(src).exists():
        return ModelLoadError(f'{what} {src!r}: no such folder')
    if not Path(src).exists():
        offline = os.environ.get('HF_HUB_OFFLINE', '') not in ('', '0')
        hint = ('HF_HUB_OFFLINE is set, so only models already in the local cache load'
                if offline else 'the hub is unreachable or the id is wrong')
        return ModelLoadError(f'cannot load {what} {src!r} from the Hugging Face hub: {hint}; '
                              f'download it or give a local folder ({type(exc).__name__}: {exc})')
    return ModelLoadError(f'cannot load {what} from {src!r}: {type(exc).__name__}: {exc}')


def apply_adapter(model: Any, adapter: str) -> Any:
    """Load a PEFT (LoRA) adapter folder onto ``model`` and merge it into the weights."""
    try:
        from peft import PeftModel
        src = resolve_model_path(adapter)
        if not Path(src).exists():
            raise FileNotFoundError(f'no such folder {src}')
        with warnings.catch_warnings():  # peft asks transformers 5 a deprecated property
            warnings.filterwarnings('ignore', message='.*is_gradient_checkpointing.*',
                                    category=FutureWarning)
            return PeftModel.from_pretrained(model, src).merge_and_unload()
    except Exception as exc:  # noqa: BLE001 - peft raises many types; all mean "cannot load"
        raise ModelLoadError(f'cannot load adapter {adapter!r}: {type(exc).__name__}: {exc}'
                             ) from exc


@dataclass(frozen=True)
class LoadedModel:
    """What ``load_vlm`` loaded.

    Attributes:
        model: the image-text-to-text model, in eval mode.
        processor: its processor (with a chat template unless not required).
        quantization_summary: ``verify_quantized``'s line ('none' when not quantized).
    """

    model: Any
    processor: Any
    quantization_summary: str = 'none'


def load_vlm(model_id: str, device: str = 'cpu', dtype: str = 'auto', device_map: str = '',
             trust_remote_code: bool = False, adapter: str = '',
             require_chat_template: bool = True, quantization: str = 'none',
             quantization_library: str = 'auto') -> LoadedModel:
    """Load an image-text-to-text model and its processor, in named steps.

    Args:
        model_id: hub id, local folder or ``pkg://`` path.
        device: torch device (ignored when ``device_map`` is set).
        dtype: 'auto' | 'float32' | 'bfloat16' | 'float16' (see ``torch_dtype``).
        device_map: passed to ``from_pretrained`` (e.g. 'auto' to shard over GPUs); '' = none.
        trust_remote_code: passed to ``from_pretrained`` (allow code shipped with the model).
        adapter: optional PEFT adapter folder, merged into the weights.
        require_chat_template: refuse processors without a chat template.
        quantization: 'none' | 'int8' | 'nf4' | 'int4' (``quantization``: the library per
            device, what stays in the model dtype).
        quantization_library: 'auto' | 'bitsandbytes' | 'torchao'.

    Raises:
        ModelLoadError: wrong path or id, hub unreachable, not an image-text model, no chat
            template, weights that do not load, or a quantization that did not happen.
    """
    try:
        src = resolve_model_path(model_id)
    except ModelFileError as exc:
        raise ModelLoadError(str(exc)) from exc
    dev = resolve_device(device)
    config = _image_text_config(src, trust_remote_code)
    torch_type = torch_dtype(dtype, dev, config)
    library = choose_library(quantization, quantization_library, dev)
    if library:
        check_available(library, quantization, dev, torch_type)
    processor = _load_processor(src, trust_remote_code, require_chat_template)
    kwargs: dict[str, Any] = dict(dtype=torch_type, trust_remote_code=trust_remote_code)
    if device_map:
        kwargs['device_map'] = device_map
    if library:  # quantized layers are placed while loading; they cannot be moved after
        kwargs['quantization_config'] = quantization_config(quantization, library, dev,
                                                             torch_type, config)
        kwargs.setdefault('device_map', {'': dev})
    model = _load_weights(src, kwargs)
    return_freed_memory()  # what loading (converting, quantizing) freed, back to the system
    summary = verify_quantized(model, quantization, library, src)  # the one check per load
    if library:
        LOG.info('%s: %s', src, summary)
    if adapter:
        model = apply_adapter(model, adapter)
    if not device_map and not library:
        try:
            model = model.to(dev)
        except (RuntimeError, AssertionError) as exc:
            raise ModelLoadError(f'cannot move {src!r} to {dev}: {exc}') from exc
    return LoadedModel(model.eval(), processor, summary)


def load_image_text_model(model_id: str, device: str = 'cpu', dtype: str = 'auto',
                          device_map: str = '', trust_remote_code: bool = False,
                          adapter: str = '', require_chat_template: bool = True,
                          quantization: str = 'none', quantization_library: str = 'auto'
                          ) -> tuple[Any, Any]:
    """``load_vlm`` returning (model in eval mode, processor)."""
    loaded = load_vlm(model_id, device, dtype, device_map, trust_remote_code, adapter,
                      require_chat_template, quantization, quantization_library)
    return loaded.model, loaded.processor


def _image_text_config(src: str, trust_remote_code: bool) -> Any:
    """The model's config; refuses models without an image-text-to-text class."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    try:
        config = AutoConfig.from_pretrained(src, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError, HTTP errors
        raise _load_error(src, 'model', exc) from exc
    auto_map = getattr(config, 'auto_map', None) or {}
    if (config.model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
            and not (trust_remote_code and 'AutoModelForImageTextToText' in auto_map)):
        raise ModelLoadError(
            f'{src!r} is not an image-text model (model_type {config.model_type!r} has no '
            'AutoModelForImageTextToText class); give a vision-language model such as '
            f'{DEFAULT_VLM!r}')
    return config


def _load_processor(src: str, trust_remote_code: bool, require_chat_template: bool) -> Any:
    """The processor, with the tokenizer's chat template when it has none of its own."""
    from transformers import AutoProcessor
    try:
        processor = AutoProcessor.from_pretrained(src, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001
        raise _load_error(src, 'processor', exc) from exc
    if not getattr(processor, 'chat_template', None):
        tok_template = getattr(getattr(processor, 'tokenizer', None), 'chat_template', None)
        if tok_template and hasattr(processor, 'tokenizer'):
            processor.chat_template = tok_template
        elif require_chat_template:
            raise ModelLoadError(
                f'{src!r} has no chat template (neither the processor nor the tokenizer defines '
                'one); the prompts are built with it: add chat_template.jinja to the folder')
    if not hasattr(processor, 'tokenizer'):
        raise ModelLoadError(f'{src!r}: the processor has no tokenizer')
    return processor


def _load_weights(src: str, kwargs: dict[str, Any]) -> Any:
    from transformers import AutoModelForImageTextToText
    try:
        return AutoModelForImageTextToText.from_pretrained(src, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise _load_error(src, 'model weights', exc) from exc


def model_device(model: Any) -> Any:
    """Device of the model's input embeddings (where inputs must go, also with device_map)."""
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return next(model.parameters()).device


def return_freed_memory() -> None:
    """Collect, and give the heap's freed pages back to the system (glibc ``malloc_trim``).

    Loading a bf16 checkpoint into another dtype, or quantizing it layer by layer on the CPU,
    frees as much as it keeps; glibc holds on to those pages, so the process stays that much
    larger and inference adds its activations on top (int8 in float32 on SmolVLM-256M's shape:
    1.73 GB anonymous after loading, 0.65 GB after trimming; bench_vlm --quantization).
    """
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


def release(*objects: Any) -> None:
    """Drop references, collect, and empty the CUDA cache when CUDA is in use."""
    del objects
    gc.collect()
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def split_chat_prompt(render: Any, prefix_text: str) -> tuple[str, str]:
    """Render a one-turn chat with the template and split it where the question goes.

    Args:
        render: ``text -> rendered chat string`` (user turn holding the image and ``text``,
            with the assistant turn start appended).
        prefix_text: the shared part of the user text.

    Returns:
        (head, tail): ``head`` = everything up to and including ``prefix_text + '\\n'``;
        ``tail`` = what follows the question (end of user turn + assistant turn start).
        The full prompt of question q is ``head + q + tail``.
    """
    from .scoring_plan import QUERY_MARK, ReadoutError, split_rendered
    try:
        return split_rendered(render(prefix_text + '\n' + QUERY_MARK))
    except ReadoutError as exc:
        raise ModelLoadError(str(exc)) from exc


def tokenize_fn(tokenizer: Any) -> Any:
    """text -> ids as the processor encodes a rendered prompt (a BOS the template already wrote
    is not added twice)."""
    bos = getattr(tokenizer, 'bos_token', None)

    def tokenize(text: str) -> list[int]:
        add = not (bos and text.startswith(bos))
        return list(tokenizer(text, add_special_tokens=add)['input_ids'])
    return tokenize


def generate_texts(model: Any, tokenizer: Any, batches: Sequence[dict[str, Any]], pad_id: int,
                   device: Any, dtype: Any, max_new_tokens: int,
                   min_new_tokens: int = 0) -> list[str]:
    """Greedy answers for left-padded input batches (one processor/tokenizer output each).

    Args:
        batches: model inputs, batch dimension = persons (CPU tensors).
        max_new_tokens: answer length bound; ``min_new_tokens`` forces a length (benchmarks).

    Returns:
        One decoded answer per person (new tokens only, special tokens skipped, stripped).
    """
    import torch
    from ._prefix_scoring import to_device, uses_mrope
    texts: list[str] = []
    for batch in batches:
        inputs = to_device(batch, device, dtype)
        if uses_mrope(model):
            model.model.rope_deltas = None  # stale deltas of an earlier call must not leak in
        kwargs: dict[str, Any] = dict(max_new_tokens=int(max_new_tokens), do_sample=False,
                                      pad_token_id=pad_id)
        if min_new_tokens:
            kwargs['min_new_tokens'] = int(min_new_tokens)
        with torch.inference_mode():
            out = model.generate(**inputs, **kwargs)
        new = out[:, inputs['input_ids'].shape[1]:]
        texts += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return texts


def encode_batch(processor: Any, texts: Sequence[str], images: Sequence[np.ndarray]
                 ) -> dict[str, Any]:
    """One processor call for several (prompt, image) pairs: left-padded text, the processor's
    own image batching (anyres processors pad their patch or tile counts)."""
    from PIL import Image
    tok = processor.tokenizer
    bos = getattr(tok, 'bos_token', None)
    pil = [Image.fromarray(im) for im in images]
    nested = type(processor).__name__ in _NESTED_IMAGE_PROCESSORS
    enc = processor(text=list(texts), images=[[im] for im in pil] if nested else pil,
                    return_tensors='pt', padding=True, padding_side='left',
                    add_special_tokens=not (bos and texts[0].startswith(bos)))
    return dict(enc)


#: processors that take one list of images per text
_NESTED_IMAGE_PROCESSORS = ('Idefics2Processor', 'Idefics3Processor', 'SmolVLMProcessor')


# -- options and batch ------------------------------------------------------------------------
@dataclass
class PromptModelOptions(BackendOptions):
    """Options shared by the prompt-driven backends (``vlm``, ``caption_llm``).

    Attributes:
        dtype: 'auto' (float32 on CPU, bfloat16 on CUDA) | 'float32' | 'bfloat16' | 'float16'.
        device_map: ``from_pretrained`` device map (e.g. 'auto'); '' = load on ``device``.
        trust_remote_code: allow model code shipped with the weights (off by default).
        mode: 'score' (yes/no probability per category, VAD) or 'generate' (paper protocol).
        marking: 'red_box' (paper) | 'crop' | 'crop_context' (see ``prompts.mark_image``).
        definitions: put a short definition of each category in the prompt.
        num_labels: generate mode: ask for exactly this many labels (paper "*": 6); 0 = any.
        max_new_tokens: generate mode: answer length bound.
        batch_size: most persons per model call.
        score_prompt: score mode: 'question' (each of the 29 a user question, the natural form)
            or 'prefill' (one instruction; each question is the start of the assistant's
            answer line, e.g. 'Anger:', so the template's assistant start is shared: fewer
            tokens per question; see ``prompts.SCORE_PROMPTS``).
        parser: generate mode: how labels are found in the answer: 'robust' (forms,
            negation; ``label_parsing.parse_labels``) or 'paper' (the authors' protocol: a
            category counts when its lower-case name occurs in the lower-cased answer).
    """

    dtype: str = 'auto'
    device_map: str = ''
    trust_remote_code: bool = False
    mode: str = 'score'
    marking: str = 'red_box'
    definitions: bool = False
    num_labels: int = 0
    max_new_tokens: int = 64
    batch_size: int = 4
    parser: str = 'robust'
    score_prompt: str = 'question'

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, got {self.mode!r}')
        if self.marking not in prompts.MARKINGS:
            raise ValueError(f'marking must be one of {prompts.MARKINGS}, got {self.marking!r}')
        if self.dtype not in DTYPES:
            raise ValueError(f'dtype must be one of {DTYPES}, got {self.dtype!r}')
        if self.parser not in PARSERS:
            raise ValueError(f'parser must be one of {PARSERS}, got {self.parser!r}')
        if self.score_prompt not in prompts.SCORE_PROMPTS:
            raise ValueError(f'score_prompt must be one of {prompts.SCORE_PROMPTS}, '
                             f'got {self.score_prompt!r}')
        if int(self.batch_size) < 1 or int(self.max_new_tokens) < 1 or int(self.num_labels) < 0:
            raise ValueError('batch_size and max_new_tokens must be >= 1, num_labels >= 0')


@dataclass
class VLMOptions(PromptModelOptions, QuantizationOptions):
    """Options of the ``vlm`` backend (plus ``PromptModelOptions``, ``BackendOptions`` and
    ``QuantizationOptions``: ``quantization`` 4-bit brings a 7B model to about 4 GB).

    Attributes:
        model: hub id or local folder of an image-text-to-text model ('' = ``DEFAULT_VLM``).
        adapter: PEFT/LoRA adapter folder ('' = none), merged into the weights at load.
    """

    adapter: str = ''

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_quantization()


@dataclass
class VLMBatch:
    """What ``preprocess`` prepared: model inputs in batches of at most ``batch_size`` persons
    (CPU tensors, left-padded), and per-person extras."""

    batches: list[dict[str, Any]]
    mode: str
    extra: dict[str, Any] = field(default_factory=dict)


def answer_result(text: str, parser: str = 'robust') -> EmotionResult:
    """Generate mode: labels found in ``text`` -> result (SKIPPED when none is found)."""
    parsed = parse_labels(text) if parser == 'robust' else parse_labels_paper(text)
    return EmotionResult(scores=labels_to_scores(parsed.labels), labels=parsed.labels,
                         vad=NAN_VAD, status=Status.OK if parsed.found else Status.SKIPPED,
                         text=text, reason='' if parsed.found else NO_LABEL_REASON)


# -- the backend ------------------------------------------------------------------------------
class VLMBackend(EmotionBackend):
    """Emotions from an image-text-to-text model (see the module docstring)."""

    name = 'vlm'
    Options = VLMOptions

    def __init__(self, options: VLMOptions | dict | None = None) -> None:
        super().__init__(options)
        self.options: VLMOptions
        self.sets_labels = self.options.mode == 'generate'
        self.model: Any = None
        self.processor: Any = None
        self._device: Any = None
        self._score: Any = None
        #: False once the model was found not to support the shared-prefix question tree
        self.prefix_sharing = True
        self.prefix_sharing_reason = ''
        self.quantization_summary = 'none'

    @property
    def model_id(self) -> str:
        return self.options.model or DEFAULT_VLM

    # -- lifecycle ---------------------------------------------------------------------------
    def load(self) -> None:
        if self._loaded:
            return
        o = self.options
        loaded = load_vlm(self.model_id, o.device, o.dtype, o.device_map, o.trust_remote_code,
                          o.adapter, quantization=o.quantization,
                          quantization_library=o.quantization_library)
        self._use(loaded)

    def attach(self, model: Any, processor: Any) -> None:
        """Use an already loaded model and processor (e.g. one shared by two backends, or a
        model built in memory by a benchmark) instead of ``load``.

        Raises:
            ModelLoadError: the tokenizer cannot be used for this mode (see ``load``), or the
                model is not quantized as ``quantization`` says (``verify_quantized``).
        """
        o = self.options
        library = choose_library(o.quantization, o.quantization_library,
                                 str(model_device(model)))
        self._use(LoadedModel(model, processor, verify_quantized(
            model, o.quantization, library, self.model_id)))

    def _use(self, loaded: LoadedModel) -> None:
        """Take a verified model: prompts, read-out head, pad id."""
        model, processor = loaded.model, loaded.processor
        #: what ``verify_quantized`` said about the model ('none' when unquantized)
        self.quantization_summary = loaded.quantization_summary
        if self.options.mode == 'score':
            from ._prefix_scoring import float32_readout
            float32_readout(model)
        self.model, self.processor = model, processor
        self._device = model_device(self.model)
        self._dtype = self.model.dtype
        tok = self.processor.tokenizer
        self._pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if self._pad_id is None:
            self._pad_id = 0
        try:
            self._prepare_prompts()
        except (ValueError, ModelLoadError) as exc:
            self.unload()
            raise ModelLoadError(f'{self.model_id!r}: {exc}') from exc
        self._loaded = True

    def _render(self, text: str) -> str:
        messages = [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': text}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True,
                                                  tokenize=False)

    def _prepare_prompts(self) -> None:
        """What never changes: the rendered head, question suffixes, answer plans, tree."""
        from ._prefix_scoring import ScorePrompts
        from .scoring_plan import score_texts
        o, tok = self.options, self.processor.tokenizer
        if o.mode == 'score':
            prefix, queries = score_texts(o.marking, o.definitions, o.score_prompt)
            if o.score_prompt == 'question':
                head, tail = split_chat_prompt(self._render, prefix)
            else:  # the questions continue the assistant turn
                head, tail = self._render(prefix), ''
                queries = prompts.prefill_queries(head, queries)
            self._score = ScorePrompts.build(tokenize_fn(tok), head, tail, queries,
                                             NUM_CATEGORIES, tok.unk_token_id)
            self._head = head
            if self._score.vad_reason:
                LOG.warning('%s: %s', self.model_id, self._score.vad_reason)
        else:
            self._head = self._render(prompts.build_prompt(o.marking, o.definitions,
                                                           o.num_labels or None))

    def unload(self) -> None:
        self.model = None
        self.processor = None
        release()
        super().unload()

    def diagnostics(self) -> dict[str, Any]:
        """What the node reports in /diagnostics about this backend."""
        out: dict[str, Any] = {}
        if self.options.quantization != 'none':
            out['quantization'] = self.quantization_summary
        if self.options.mode == 'score':
            out['prefix_sharing'] = self.prefix_sharing
            if self.prefix_sharing_reason:
                out['prefix_sharing_reason'] = self.prefix_sharing_reason
            if self._score is not None:
                out['vad'] = self._score.vad_reason or 'ok'
        return out

    # -- stages ------------------------------------------------------------------------------
    def marked_images(self, image: np.ndarray, boxes: Sequence[BBox]) -> list[np.ndarray]:
        """The image shown for each person, at the model's working size (``scoring_plan``)."""
        from .scoring_plan import marked_images
        return marked_images(image, boxes, self.options.marking,
                             getattr(self.processor, 'image_processor', None))

    def preprocess(self, image: np.ndarray, boxes: Sequence[BBox]) -> VLMBatch:
        """Mark each person (the frame resized once), encode image + prompt head per batch."""
        images = self.marked_images(image, boxes)
        size = int(self.options.batch_size)
        batches = []
        for start in range(0, len(images), size):
            chunk = images[start:start + size]
            enc = encode_batch(self.processor, [self._head] * len(chunk), chunk)
            batches.append(self._score.trim(enc) if self.options.mode == 'score' else enc)
        return VLMBatch(batches=batches, mode=self.options.mode)

    def forward(self, batch: VLMBatch) -> Any:
        """Score mode: read-out log-probs (P, R, K) tensor; generate mode: list of P answers."""
        try:
            if batch.mode == 'score':
                return self._score_logprobs(batch.batches)
            return self._generate(batch.batches, **batch.extra)
        except (RuntimeError, ValueError) as exc:
            raise BackendError(f'{self.model_id!r}: model call failed: '
                               f'{type(exc).__name__}: {exc}') from exc

    def postprocess(self, outputs: Any, batch: VLMBatch) -> list[EmotionResult]:
        if batch.mode == 'score':
            return [EmotionResult(scores=scores, vad=vad, status=Status.OK)
                    for scores, vad in self._score.results(outputs)]
        return [answer_result(text, self.options.parser) for text in outputs]

    # -- score mode --------------------------------------------------------------------------
    def _score_logprobs(self, batches: list[dict[str, Any]]) -> Any:
        from ._prefix_scoring import score_batches
        s = self._score
        logp, used_tree, reason = score_batches(self.model, batches, s.tree, s.suffixes,
                                                s.plans, self._device, self._dtype,
                                                self.prefix_sharing)
        if self.prefix_sharing and not used_tree:
            LOG.warning('%s: the questions cannot share the prompt prefix (%s); re-encoding '
                        'the prompt per question (slower, same scores)', self.model_id, reason)
            self.prefix_sharing, self.prefix_sharing_reason = False, reason
        return logp

    def naive_scores(self, image: np.ndarray, boxes: Sequence[BBox],
                     questions: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The reference for score mode, computed independently of the question tree.

        Same prompts, marking and answer token sequences as ``predict``, but every question
        and every answer token sequence of every person is its own full forward pass
        (teacher forced, no cache, no padding); outcome probabilities are summed over
        spellings and read out with the formulas of the module docstring.

        Args:
            image: (H, W, 3) uint8 RGB.
            boxes: person boxes, xyxy pixels (valid, inside the image).
            questions: indices (0-25 categories, 26-28 VAD) to compute; None = all (slow:
                one forward pass per question and answer sequence); the others are NaN.

        Returns:
            scores (P, 26) float32 in [0, 1] and VAD (P, 3) float32 in [1, 10] (NaN if unread).
        """
        from ._prefix_scoring import select_rows, to_device
        if not self._loaded or self.options.mode != 'score':
            raise BackendError('naive_scores needs a loaded backend in score mode')
        h, w = image.shape[:2]
        batch = self.preprocess(image, [b.clipped(w, h) for b in boxes])
        scores, vads = [], []
        for enc in batch.batches:
            for i in range(int(enc['input_ids'].shape[0])):
                one = to_device(select_rows(enc, i, i + 1), self._device, self._dtype)
                cats, vad = self._score.naive_results(self.model, one, questions)
                scores.append(cats)
                vads.append(vad)
        return np.asarray(scores, dtype=np.float32), np.asarray(vads, dtype=np.float32)

    # -- generate mode -----------------------------------------------------------------------
    def _generate(self, batches: list[dict[str, Any]], min_new_tokens: int = 0) -> list[str]:
        return generate_texts(self.model, self.processor.tokenizer, batches, self._pad_id,
                              self._device, self._dtype, int(self.options.max_new_tokens),
                              min_new_tokens)

    def generate_answers(self, image: np.ndarray, boxes: Sequence[BBox],
                         min_new_tokens: int = 0) -> list[str]:
        """Generate-mode answers for ``boxes`` (the bench forces ``min_new_tokens``)."""
        if not self._loaded or self.options.mode != 'generate':
            raise BackendError('generate_answers needs a loaded backend in generate mode')
        h, w = image.shape[:2]
        batch = self.preprocess(image, [b.clipped(w, h) for b in boxes])
        return self._generate(batch.batches, min_new_tokens=min_new_tokens)


__all__ = ['BF16_MIN_HIDDEN', 'DEFAULT_VLM', 'LoadedModel', 'NO_LABEL_REASON', 'PARSERS',
           'PromptModelOptions', 'VLMBackend', 'VLMBatch', 'VLMOptions', 'answer_result',
           'apply_adapter', 'cpu_has_bf16', 'encode_batch', 'generate_texts',
           'load_image_text_model', 'load_vlm', 'model_device', 'release',
           'return_freed_memory', 'split_chat_prompt',
           'tokenize_fn', 'torch_dtype']
