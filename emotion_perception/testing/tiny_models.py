"""Tiny, randomly initialised vision-language models saved as real Hugging Face folders.

No VLM weights exist offline, so the VLM code paths are tested with models built from configs
of each family, with the family's REAL tokenizer and conversation format
(``emotion_perception.testing.real_tokenizers``), saved with ``save_pretrained`` (model,
processor, tokenizer, chat template) in the checkpoint layout of the family's hub checkpoints
(other engines, e.g. vLLM, read these folders too), and loaded back through the same
``from_pretrained`` calls users take. Everything is seeded.

Families (``FAMILIES``):

* ``llava``: ``LlavaForConditionalGeneration`` (CLIP ViT + Llama), Llama-2 SentencePiece,
  the LLaVA-1.5 template (the paper's model);
* ``llava_next``: ``LlavaNextForConditionalGeneration`` (anyres: the image is split into tiles
  chosen from ``image_grid_pinpoints`` + a base view) + Mistral, Mistral v0.1 SentencePiece;
* ``qwen2_vl`` / ``qwen2_5_vl``: multimodal RoPE, dynamic-resolution patches, Qwen2 BPE;
* ``idefics3``: SmolVLM (SigLIP-style tower, pixel shuffle, image splitting into tiles), SmolLM2
  tokenizer.

``build_tiny_text_llm`` builds a text-only Llama with SmolLM2's tokenizer and template (the
caption_llm LLM). ``build_tokenizer`` keeps a small byte-level BPE (or a word-level vocabulary
without digits) for the few tests that need a vocabulary no real model has.

Shapes are parameters: the defaults are tiny (hidden 32, 2 layers: a build takes well under a
second plus the tokenizer load); the benchmarks build the real shapes of e.g. SmolVLM-256M or
Qwen2-VL-2B with random weights.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from . import real_tokenizers

FAMILIES: tuple[str, ...] = ('llava', 'llava_next', 'qwen2_vl', 'qwen2_5_vl', 'idefics3')

#: family -> the real tokenizer it uses (``real_tokenizers.SPECS``)
FAMILY_TOKENIZER = {'llava': 'llava', 'llava_next': 'llava_next', 'qwen2_vl': 'qwen2_vl',
                    'qwen2_5_vl': 'qwen2_vl', 'idefics3': 'idefics3'}

IMAGE_TOKEN = '<image>'
BASE_SPECIAL_TOKENS = ('<|endoftext|>', '<|pad|>', '<|im_start|>', '<|im_end|>')

#: ChatML template of the toy tokenizer; ``{IMAGE}`` is replaced by the image placeholder
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{IMAGE}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def missing_reason(family: str) -> str:
    """'' when ``family`` can be built with its real tokenizer, else why not (pytest skips)."""
    return real_tokenizers.missing_reason(FAMILY_TOKENIZER.get(family, family))


# -- the toy tokenizer (for vocabularies no real model has) ------------------------------------
def _corpus() -> list[str]:
    from ..core import prompts
    from ..core.categories import EMOTIC_CATEGORIES
    texts = [prompts.build_prompt(m, d) for m in prompts.MARKINGS for d in (False, True)]
    texts += [prompts.score_prefix(m, d) for m in prompts.MARKINGS for d in (False, True)]
    texts += prompts.score_queries('red_box') + prompts.score_queries('crop')
    texts += [prompts.caption_prompt(m) for m in prompts.MARKINGS]
    texts += [', '.join(EMOTIC_CATEGORIES), 'yes Yes no No', ' '.join(str(d) for d in range(10)),
              'The person looks happy, confident and engaged. She is smiling at a friend.']
    return texts * 3


def build_tokenizer(extra_special_tokens: tuple[str, ...] = (), chat_template: str | None = None,
                    vocab_size: int = 1200, digits: bool = True) -> Any:
    """A small deterministic tokenizer written for tests (NOT a real model's).

    Args:
        extra_special_tokens: added as single, never-split tokens (image placeholders).
        chat_template: Jinja template stored on the tokenizer (None: none).
        vocab_size: BPE vocabulary size.
        digits: False builds a word-level vocabulary of the prompt words WITHOUT any digit
            (digits become the unknown token): the case of a model that cannot write 0-9.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(BASE_SPECIAL_TOKENS) + list(extra_special_tokens)
    if digits:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
    else:
        tok = Tokenizer(models.WordLevel(unk_token='<|endoftext|>'))
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                     pre_tokenizers.Punctuation(),
                                                     pre_tokenizers.Digits(individual_digits=True)])
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordLevelTrainer(special_tokens=specials, show_progress=False)
    corpus = _corpus() if digits else [''.join(c for c in t if not c.isdigit())
                                       for t in _corpus()]
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token='<|im_start|>',
                                   eos_token='<|im_end|>', pad_token='<|pad|>',
                                   unk_token='<|endoftext|>',
                                   extra_special_tokens=list(extra_special_tokens))
    fast.chat_template = chat_template
    return fast


# -- helpers -----------------------------------------------------------------------------------
def _out_dir(path: str | os.PathLike | None, prefix: str) -> Path:
    out = Path(path) if path is not None else Path(tempfile.mkdtemp(prefix=prefix))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def _vocab_size(tokenizer: Any) -> int:
    """len(tokenizer) rounded up to a multiple of 64 (as hub checkpoints pad their vocab)."""
    return -(-len(tokenizer) // 64) * 64


def _text_kwargs(tokenizer: Any, hidden: int, layers: int, heads: int, kv_heads: int,
                 intermediate: int | None) -> dict:
    return dict(vocab_size=_vocab_size(tokenizer), hidden_size=hidden,
                intermediate_size=intermediate or 2 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads,
                max_position_embeddings=8192, initializer_range=0.2,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)


def _finish(model: Any, tokenizer: Any) -> None:
    gen = model.generation_config
    gen.pad_token_id = tokenizer.pad_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.bos_token_id = tokenizer.bos_token_id
    gen.do_sample = False


def to_hub_layout(folder: Path, renames: list[tuple[str, str]]) -> None:
    """Rename the tensors of ``folder/model.safetensors`` (prefix ``old`` -> ``new``), as in the
    hub checkpoints of the family (transformers loads both layouts; other engines only the hub's).
    """
    from safetensors import safe_open
    from safetensors.torch import save_file
    path = folder / 'model.safetensors'
    with safe_open(str(path), 'pt') as f:
        metadata = f.metadata()
        tensors = {}
        for key in f.keys():
            new = key
            for old, repl in renames:
                if key.startswith(old) and not key.startswith(repl):
                    new = repl + key[len(old):]
                    break
            tensors[new] = f.get_tensor(key)
    save_file(tensors, str(path), metadata=metadata)


def _vision_kwargs(kw: dict) -> dict:
    """CLIP/SigLIP-style vision tower shape from the builder's extras."""
    vh = kw.get('vision_hidden', 32)
    return dict(hidden_size=vh, intermediate_size=kw.get('vision_intermediate', 2 * vh),
                num_hidden_layers=kw.get('vision_layers', 2),
                num_attention_heads=kw.get('vision_heads', 2))


#: llava-hf checkpoints keep CLIP's ``vision_model`` level (transformers 5 saves without it)
_LLAVA_HUB = [('vision_tower.', 'vision_tower.vision_model.')]


# -- the families ------------------------------------------------------------------------------
def _tokenizer_for(family: str, tokenizer: str, template: str | None) -> Any:
    if tokenizer == 'real':
        tok = real_tokenizers.load(FAMILY_TOKENIZER[family])
        if template is not None:
            tok.chat_template = template or None
        return tok
    extra = {'qwen2_vl': ('<|vision_start|>', '<|image_pad|>', '<|vision_end|>', '<|video_pad|>'),
             'qwen2_5_vl': ('<|vision_start|>', '<|image_pad|>', '<|vision_end|>',
                            '<|video_pad|>')}.get(family, (IMAGE_TOKEN,))
    placeholder = ('<|vision_start|><|image_pad|><|vision_end|>' if family.startswith('qwen')
                   else IMAGE_TOKEN + '\n')
    chat = _CHAT_TEMPLATE.replace('{IMAGE}', placeholder) if template is None else (
        template or None)
    return build_tokenizer(extra, chat, digits=(tokenizer != 'nodigits'))


def _llava(tok, out, seed, hidden, layers, heads, kv_heads, intermediate, image_size, **kw):
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)
    vision = CLIPVisionConfig(**_vision_kwargs(kw), image_size=image_size, patch_size=14,
                              projection_dim=hidden)
    config = LlavaConfig(vision_config=vision,
                         text_config=LlamaConfig(**_text_kwargs(tok, hidden, layers, heads,
                                                                kv_heads, intermediate)),
                         image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                         vision_feature_layer=-2, vision_feature_select_strategy='default',
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={'shortest_edge': image_size},
                                           crop_size={'height': image_size, 'width': image_size}),
        tokenizer=tok, patch_size=14, vision_feature_select_strategy='default',
        chat_template=tok.chat_template, image_token=IMAGE_TOKEN, num_additional_image_tokens=1)
    return model, processor, _LLAVA_HUB


def _llava_next(tok, out, seed, hidden, layers, heads, kv_heads, intermediate, image_size, **kw):
    import torch
    from transformers import (CLIPVisionConfig, LlavaNextConfig,
                              LlavaNextForConditionalGeneration, LlavaNextImageProcessor,
                              LlavaNextProcessor, MistralConfig)
    s = image_size
    pinpoints = [[s, 2 * s], [2 * s, s], [2 * s, 2 * s], [3 * s, s], [s, 3 * s]]
    vision = CLIPVisionConfig(**_vision_kwargs(kw), image_size=s, patch_size=14,
                              projection_dim=hidden)
    text = MistralConfig(sliding_window=kw.get('sliding_window'),
                         **_text_kwargs(tok, hidden, layers, heads, kv_heads, intermediate))
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_grid_pinpoints=pinpoints,
                             image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                             vision_feature_layer=-2, vision_feature_select_strategy='default',
                             pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(size={'shortest_edge': s},
                                                crop_size={'height': s, 'width': s},
                                                image_grid_pinpoints=pinpoints),
        tokenizer=tok, patch_size=14, vision_feature_select_strategy='default',
        chat_template=tok.chat_template, image_token=IMAGE_TOKEN, num_additional_image_tokens=1)
    return model, processor, _LLAVA_HUB


def _qwen_vl(tok, out, seed, hidden, layers, heads, kv_heads, intermediate, image_size, *,
             v25: bool = False, **kw):
    import torch
    from transformers import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    if v25:
        from transformers import (Qwen2_5_VLConfig as Config,
                                  Qwen2_5_VLForConditionalGeneration as Model,
                                  Qwen2_5_VLProcessor as Processor)
    else:
        from transformers import (Qwen2VLConfig as Config,
                                  Qwen2VLForConditionalGeneration as Model,
                                  Qwen2VLProcessor as Processor)
    ids = {t: tok.convert_tokens_to_ids(t) for t in
           ('<|vision_start|>', '<|vision_end|>', '<|image_pad|>', '<|video_pad|>')}
    head_dim = hidden // heads
    text = _text_kwargs(tok, hidden, layers, heads, kv_heads, intermediate)
    text['rope_parameters'] = {'rope_type': 'default', 'rope_theta': 1000000.0,
                               'mrope_section': [head_dim // 4, head_dim // 8, head_dim // 8]}
    vh, vheads = kw.get('vision_hidden', 32), kw.get('vision_heads', 2)
    vision = dict(depth=kw.get('vision_layers', 1), embed_dim=vh, hidden_size=hidden,
                  num_heads=vheads, mlp_ratio=kw.get('vision_mlp_ratio', 2), patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    if v25:
        layers_v = kw.get('vision_layers', 2)
        vision = dict(depth=layers_v, hidden_size=vh,
                      intermediate_size=kw.get('vision_intermediate', 2 * vh), num_heads=vheads,
                      out_hidden_size=hidden, patch_size=14, spatial_merge_size=2,
                      temporal_patch_size=2, window_size=kw.get('window_size', 56),
                      fullatt_block_indexes=kw.get('fullatt_block_indexes', [layers_v - 1]))
    config = Config(text_config=text, vision_config=vision, image_token_id=ids['<|image_pad|>'],
                    video_token_id=ids['<|video_pad|>'],
                    vision_start_token_id=ids['<|vision_start|>'],
                    vision_end_token_id=ids['<|vision_end|>'])
    torch.manual_seed(seed)
    model = Model(config).eval()
    max_pixels = kw.get('max_pixels', image_size * image_size * 4)
    size = {'shortest_edge': 56 * 56, 'longest_edge': max_pixels}
    processor = Processor(
        image_processor=Qwen2VLImageProcessor(size=size, patch_size=14, merge_size=2,
                                              temporal_patch_size=2),
        video_processor=Qwen2VLVideoProcessor(size=size, patch_size=14, merge_size=2,
                                              temporal_patch_size=2),
        tokenizer=tok, chat_template=tok.chat_template)
    return model, processor, []


def _idefics3(tok, out, seed, hidden, layers, heads, kv_heads, intermediate, image_size, **kw):
    import torch
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration,
                              Idefics3ImageProcessor, Idefics3Processor, LlamaConfig)
    patch, scale = kw.get('patch_size', 8), kw.get('scale_factor', 2)
    config = Idefics3Config(
        vision_config=dict(**_vision_kwargs(kw), image_size=image_size, patch_size=patch),
        text_config=LlamaConfig(**_text_kwargs(tok, hidden, layers, heads, kv_heads,
                                               intermediate)),
        scale_factor=scale, image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).eval()
    seq_len = (image_size // patch) ** 2 // (scale ** 2)
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(
            size={'longest_edge': kw.get('longest_edge', 2 * image_size)},
            max_image_size={'longest_edge': image_size}, do_image_splitting=True),
        tokenizer=tok, image_seq_len=seq_len, chat_template=tok.chat_template)
    return model, processor, []


_BUILDERS: dict[str, Callable] = {
    'llava': _llava, 'llava_next': _llava_next, 'qwen2_vl': _qwen_vl,
    'qwen2_5_vl': lambda *a, **k: _qwen_vl(*a, v25=True, **k), 'idefics3': _idefics3,
}
#: default vision input side per family (small: few image tokens)
_IMAGE_SIZE = {'llava': 56, 'llava_next': 56, 'qwen2_vl': 56, 'qwen2_5_vl': 56, 'idefics3': 32}


def make_vlm(family: str, seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 4,
             kv_heads: int = 2, intermediate: int | None = None, image_size: int | None = None,
             tokenizer: str = 'real', chat_template: str | None = None,
             init_std: float | None = None, **vision: Any
             ) -> tuple[Any, Any, list[tuple[str, str]]]:
    """The random model and its processor in memory (``build_tiny_vlm`` saves them); the
    benchmarks build real shapes this way without writing gigabytes to disk.

    ``init_std``: None keeps the builders' weights (the language model drawn with std 0.2,
    large enough that a tiny model's scores spread over [0, 1], and chaotic: a change in the
    13th bit moves them by 0.05); else every linear and embedding weight is drawn again with
    this std (0.02 is the scale of trained checkpoints) and biases zeroed.

    Returns:
        (model in eval mode, processor, tensor renames of the hub layout).
    """
    if family not in _BUILDERS:
        raise ValueError(f'unknown family {family!r}; choose one of {FAMILIES}')
    tok = _tokenizer_for(family, tokenizer, chat_template)
    model, processor, renames = _BUILDERS[family](
        tok, None, seed, hidden, layers, heads, kv_heads, intermediate,
        image_size or _IMAGE_SIZE[family], **vision)
    _finish(model, tok)
    if init_std is not None:
        import torch
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                    module.weight.copy_(torch.randn(module.weight.shape, generator=gen)
                                        * init_std)
                    if getattr(module, 'bias', None) is not None:
                        module.bias.zero_()
    return model, processor, renames


def build_tiny_vlm(family: str, path: str | os.PathLike | None = None, seed: int = 0,
                   hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                   intermediate: int | None = None, image_size: int | None = None,
                   tokenizer: str = 'real', chat_template: str | None = None,
                   pad_vocab: bool = True, dtype: str = 'float32', init_std: float | None = None,
                   **vision: Any) -> Path:
    """Save a random model of ``family`` with its processor and tokenizer into ``path``.

    Args:
        family: one of ``FAMILIES``.
        path: output folder (replaced if it exists); None = a new temporary folder.
        seed: torch seed of the weights.
        hidden, layers, heads, kv_heads, intermediate: language model shape.
        image_size: vision tower input side (default small: 16 image tokens per view).
        tokenizer: 'real' (the family's real tokenizer and template, the default), 'toy' (a
            small BPE written for tests, ChatML) or 'nodigits' (toy word-level vocabulary
            without digits).
        chat_template: None = the family's (or the toy's); '' = save none (error tests);
            else this template.
        pad_vocab: pad the vocabulary to a multiple of 64 as hub checkpoints do (True), or
            make it exactly the tokenizer's (vLLM 0.32's output handler crashes when an id
            without a token, a padding row that a random model may rank high, is among the
            top log-probs it returns).
        init_std: see ``make_vlm`` (None: the builders' weights).
        dtype: dtype of the saved weights: 'float32', or 'bfloat16' as most hub checkpoints
            (a float32 load of it then has exactly the weights of a bf16 load).
        vision: family extras: vision_hidden, vision_layers, vision_heads,
            vision_intermediate, sliding_window (llava_next), max_pixels (qwen),
            patch_size/scale_factor/longest_edge (idefics3), rope_theta.

    Returns:
        The folder, loadable with ``AutoModelForImageTextToText`` / ``AutoProcessor``.

    Raises:
        FileNotFoundError: ``tokenizer='real'`` and the family's tokenizer files are missing.
    """
    out = _out_dir(path, f'tiny_{family}_')
    model, processor, renames = make_vlm(family, seed, hidden, layers, heads, kv_heads,
                                         intermediate, image_size, tokenizer, chat_template,
                                         init_std, **vision)
    if not pad_vocab:
        model.resize_token_embeddings(len(processor.tokenizer))
    if dtype != 'float32':
        import torch
        model = model.to(getattr(torch, dtype))
    model.save_pretrained(out)
    processor.save_pretrained(out)
    if renames:
        to_hub_layout(out, renames)
    meta = {'family': family, 'tokenizer': tokenizer, 'seed': seed,
            'tokenizer_source': real_tokenizers.SPECS[FAMILY_TOKENIZER[family]].description
            if tokenizer == 'real' else 'toy tokenizer written for tests'}
    (out / 'tiny_model.json').write_text(json.dumps(meta, indent=2))
    return out


def write_random_checkpoint(family: str, path: str | os.PathLike, dtype: str = 'bfloat16',
                            shard_gb: float = 1.0, seed: int = 0, **shape: Any) -> Path:
    """A random model of ``family`` at any shape (e.g. LLaVA-1.5-7B's), written shard by shard
    as a sharded safetensors checkpoint (with config, processor, real tokenizer) WITHOUT ever
    holding the whole model: the model is built on the meta device, and each shard's tensors
    are drawn (N(0, 0.02); norms 1, biases 0), saved and freed. Memory: about one shard.

    Args:
        shape: ``make_vlm`` keyword arguments (hidden, layers, ..., vision extras).

    Returns:
        The folder (``from_pretrained`` loads it, quantized or not, with low memory).
    """
    import torch
    from safetensors.torch import save_file
    out = _out_dir(path, f'random_{family}_')
    with torch.device('meta'):
        model, processor, _ = make_vlm(family, seed=seed, **shape)
    model.config.dtype = dtype
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    processor.save_pretrained(out)
    torch_dtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(seed)
    limit = int(shard_gb * 1e9)
    shards: list[dict[str, Any]] = [{}]
    size = 0
    for name, meta in model.state_dict().items():
        n = meta.numel() * torch.finfo(torch_dtype).bits // 8
        if size and size + n > limit:
            shards.append({})
            size = 0
        shards[-1][name] = meta
        size += n
    index: dict[str, Any] = {'metadata': {'total_size': 0}, 'weight_map': {}}
    for i, shard in enumerate(shards):
        fname = f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors'
        tensors = {}
        for name, meta in shard.items():
            if 'norm' in name and name.endswith('weight'):
                t = torch.ones(meta.shape, dtype=torch_dtype)
            elif name.endswith('bias'):
                t = torch.zeros(meta.shape, dtype=torch_dtype)
            else:
                t = (torch.randn(meta.shape, generator=gen, dtype=torch.float32) * 0.02
                     ).to(torch_dtype)
            tensors[name] = t
            index['weight_map'][name] = fname
            index['metadata']['total_size'] += t.numel() * t.element_size()
        save_file(tensors, str(out / fname), metadata={'format': 'pt'})
        del tensors
    (out / 'model.safetensors.index.json').write_text(json.dumps(index, indent=1))
    return out


def build_tiny_llava(path: str | os.PathLike | None = None, seed: int = 0, hidden: int = 32,
                     layers: int = 2, image_size: int = 56, chat_template: bool = True,
                     tokenizer: str = 'real') -> Path:
    """A tiny LLaVA-1.5 (``build_tiny_vlm('llava', ...)``); ``chat_template=False`` saves none."""
    return build_tiny_vlm('llava', path, seed, hidden, layers, image_size=image_size,
                          tokenizer=tokenizer, chat_template=None if chat_template else '')


def build_tiny_qwen2_vl(path: str | os.PathLike | None = None, seed: int = 0, hidden: int = 32,
                        layers: int = 2, max_pixels: int = 112 * 112,
                        chat_template: bool = True, tokenizer: str = 'real') -> Path:
    """A tiny Qwen2-VL (``build_tiny_vlm('qwen2_vl', ...)``)."""
    return build_tiny_vlm('qwen2_vl', path, seed, hidden, layers, tokenizer=tokenizer,
                          chat_template=None if chat_template else '', max_pixels=max_pixels)


def build_tiny_text_llm(path: str | os.PathLike | None = None, seed: int = 0, hidden: int = 32,
                        layers: int = 2, chat_template: bool = True,
                        tokenizer: str = 'real') -> Path:
    """A tiny random text-only ``LlamaForCausalLM`` with SmolLM2's real tokenizer and template
    (caption_llm's default LLM family); ``tokenizer='toy'`` uses the test tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = _out_dir(path, 'tiny_text_llm_')
    if tokenizer == 'real':
        tok = real_tokenizers.load('smollm2')
        if not chat_template:
            tok.chat_template = None
    else:
        tok = build_tokenizer((), _CHAT_TEMPLATE.replace('{IMAGE}', '') if chat_template
                              else None, digits=(tokenizer != 'nodigits'))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**_text_kwargs(tok, hidden, layers, 4, 2, None))).eval()
    _finish(model, tok)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_tiny_captioner(path: str | os.PathLike | None = None, seed: int = 1) -> Path:
    """A tiny image-text-to-text model to use as caption_llm's captioner (a tiny LLaVA-1.5).

    Its captions are random tokens, which is all the caption_llm plumbing needs.
    """
    return build_tiny_llava(path, seed=seed)


#: the tiny VLM families by name (what tests parametrize over)
TINY_VLM_BUILDERS: dict[str, Callable[..., Path]] = {
    f: (lambda path=None, _f=f, **kw: build_tiny_vlm(_f, path, **kw)) for f in FAMILIES}


def make_test_image(height: int = 96, width: int = 128, seed: int = 0) -> 'Any':
    """A deterministic RGB uint8 image (H, W, 3): smooth gradients plus noise."""
    import numpy as np
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([xx * 255 // max(1, width - 1), yy * 255 // max(1, height - 1),
                    (xx + yy) * 127 // max(1, width + height - 2)], axis=-1).astype(np.int32)
    img += rng.integers(-30, 30, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


__all__ = ['FAMILIES', 'FAMILY_TOKENIZER', 'TINY_VLM_BUILDERS', 'build_tiny_captioner',
           'build_tiny_llava', 'build_tiny_qwen2_vl', 'build_tiny_text_llm', 'build_tiny_vlm',
           'build_tokenizer', 'make_test_image', 'make_vlm', 'missing_reason', 'to_hub_layout',
           'write_random_checkpoint']
