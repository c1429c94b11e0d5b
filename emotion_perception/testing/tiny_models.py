"""Tiny, randomly initialised vision-language models saved as real Hugging Face folders.

No VLM weights exist offline, so the VLM code paths are tested with models built from configs,
saved with ``save_pretrained`` (model, processor, tokenizer, chat template) and loaded back through
the same ``from_pretrained`` calls users take. Everything is seeded: the same call gives the same
weights and tokenizer. Each build takes well under a second on a CPU.

Families:

* ``build_tiny_llava``: ``LlavaForConditionalGeneration`` (tiny CLIP vision tower + Llama).
* ``build_tiny_qwen2_vl``: ``Qwen2VLForConditionalGeneration`` (multimodal RoPE, dynamic
  resolution image patches).
* ``build_tiny_text_llm``: a text-only ``LlamaForCausalLM`` (for ``caption_llm``'s language model
  and for the "not an image-text model" error).

The tokenizer is a byte-level BPE trained on the package's prompt texts (so every string can be
encoded, the prompt words are few tokens, and ``yes``/``no``/digits exist), with a ChatML chat
template. ``chat_template=False`` saves a model without any chat template (for error tests).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

IMAGE_TOKEN = '<image>'
QWEN_IMAGE_TOKENS = ('<|vision_start|>', '<|image_pad|>', '<|vision_end|>', '<|video_pad|>')
BASE_SPECIAL_TOKENS = ('<|endoftext|>', '<|pad|>', '<|im_start|>', '<|im_end|>')

#: ChatML template; ``{IMAGE}`` is replaced by the family's image placeholder
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{IMAGE}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus() -> list[str]:
    from ..core import prompts
    from ..core.categories import EMOTIC_CATEGORIES
    texts = [prompts.build_prompt(m, d) for m in prompts.MARKINGS for d in (False, True)]
    texts += [prompts.score_prefix(m, d) for m in prompts.MARKINGS for d in (False, True)]
    texts += prompts.score_queries('red_box') + prompts.score_queries('crop')
    texts += [prompts.caption_prompt(m) for m in prompts.MARKINGS]
    texts += [prompts.narrative_prefix('A man is standing in a street.'),
              prompts.narrative_question(), prompts.narrative_question(6)]
    texts += [', '.join(EMOTIC_CATEGORIES), 'yes Yes no No', ' '.join(str(d) for d in range(10)),
              'The person looks happy, confident and engaged. She is smiling at a friend.',
              'A woman is sitting in a park with her children; a man is running in the rain.']
    return texts * 3


def build_tokenizer(extra_special_tokens: tuple[str, ...] = (), chat_template: str | None = None,
                    vocab_size: int = 1200) -> Any:
    """A small byte-level BPE ``PreTrainedTokenizerFast`` (deterministic).

    Args:
        extra_special_tokens: added as single, never-split tokens (image placeholders).
        chat_template: Jinja template stored on the tokenizer (None: none).
        vocab_size: BPE vocabulary size (including the 256 byte symbols and special tokens).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(BASE_SPECIAL_TOKENS) + list(extra_special_tokens)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token='<|im_start|>',
                                   eos_token='<|im_end|>', pad_token='<|pad|>',
                                   unk_token='<|endoftext|>',
                                   extra_special_tokens=list(extra_special_tokens))
    fast.chat_template = chat_template
    return fast


def _out_dir(path: str | os.PathLike | None, prefix: str) -> Path:
    out = Path(path) if path is not None else Path(tempfile.mkdtemp(prefix=prefix))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def _text_config_kwargs(tokenizer: Any, hidden: int, layers: int) -> dict:
    return dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=4096, initializer_range=0.2,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id)


def _finish(model: Any, tokenizer: Any) -> None:
    gen = model.generation_config
    gen.pad_token_id = tokenizer.pad_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.bos_token_id = tokenizer.bos_token_id
    gen.do_sample = False


def build_tiny_llava(path: str | os.PathLike | None = None, seed: int = 0, hidden: int = 32,
                     layers: int = 2, image_size: int = 56, chat_template: bool = True) -> Path:
    """Save a tiny random LLaVA (CLIP ViT + Llama) with its processor into ``path``.

    Args:
        path: output folder (replaced if it exists); None = a new temporary folder.
        seed: torch seed for the weights.
        hidden: hidden size of both towers.
        layers: decoder layers.
        image_size: CLIP input side (patch 14): (image_size / 14)^2 image tokens (16 for 56).
        chat_template: False saves no chat template at all (for the error path).

    Returns:
        The folder, loadable with ``AutoModelForImageTextToText`` / ``AutoProcessor``.
    """
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    out = _out_dir(path, 'tiny_llava_')
    template = _CHAT_TEMPLATE.replace('{IMAGE}', IMAGE_TOKEN + '\n') if chat_template else None
    tokenizer = build_tokenizer((IMAGE_TOKEN,), template)
    vision = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden,
                              num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
                              patch_size=14, projection_dim=hidden)
    text = LlamaConfig(**_text_config_kwargs(tokenizer, hidden, layers))
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                         vision_feature_layer=-1, vision_feature_select_strategy='default',
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    _finish(model, tokenizer)
    image_processor = CLIPImageProcessor(size={'shortest_edge': image_size},
                                         crop_size={'height': image_size, 'width': image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy='default', chat_template=template,
                               image_token=IMAGE_TOKEN, num_additional_image_tokens=1)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_qwen2_vl(path: str | os.PathLike | None = None, seed: int = 0, hidden: int = 32,
                        layers: int = 2, max_pixels: int = 112 * 112,
                        chat_template: bool = True) -> Path:
    """Save a tiny random Qwen2-VL (multimodal RoPE) with its processor into ``path``.

    Images are resized to at most ``max_pixels`` (multiples of 28): a 112x112 image gives
    8x8 patches of 14 px, merged 2x2 into 16 image tokens.

    Returns:
        The folder, loadable with ``AutoModelForImageTextToText`` / ``AutoProcessor``.
    """
    import torch
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration,
                              Qwen2VLImageProcessor, Qwen2VLProcessor)
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    out = _out_dir(path, 'tiny_qwen2vl_')
    placeholder = '<|vision_start|><|image_pad|><|vision_end|>'
    template = _CHAT_TEMPLATE.replace('{IMAGE}', placeholder) if chat_template else None
    tokenizer = build_tokenizer(QWEN_IMAGE_TOKENS, template)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_IMAGE_TOKENS}
    head_dim = hidden // 4
    text = _text_config_kwargs(tokenizer, hidden, layers)
    text['rope_parameters'] = {'rope_type': 'default', 'rope_theta': 10000.0,
                               'mrope_section': [head_dim // 4, head_dim // 8, head_dim // 8]}
    vision = dict(depth=1, embed_dim=hidden, hidden_size=hidden, num_heads=2, mlp_ratio=2,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    config = Qwen2VLConfig(text_config=text, vision_config=vision,
                           image_token_id=ids['<|image_pad|>'],
                           video_token_id=ids['<|video_pad|>'],
                           vision_start_token_id=ids['<|vision_start|>'],
                           vision_end_token_id=ids['<|vision_end|>'])
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    _finish(model, tokenizer)
    size = {'shortest_edge': 56 * 56, 'longest_edge': max_pixels}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size, patch_size=14, merge_size=2,
                                              temporal_patch_size=2),
        video_processor=Qwen2VLVideoProcessor(size=size, patch_size=14, merge_size=2,
                                              temporal_patch_size=2),
        tokenizer=tokenizer, chat_template=template)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_text_llm(path: str | os.PathLike | None = None, seed: int = 0, hidden: int = 32,
                        layers: int = 2, chat_template: bool = True) -> Path:
    """Save a tiny random text-only ``LlamaForCausalLM`` and its tokenizer into ``path``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = _out_dir(path, 'tiny_text_llm_')
    template = _CHAT_TEMPLATE.replace('{IMAGE}', '') if chat_template else None
    tokenizer = build_tokenizer((), template)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**_text_config_kwargs(tokenizer, hidden, layers))).eval()
    _finish(model, tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


#: the tiny VLM families by name (what tests parametrize over)
TINY_VLM_BUILDERS = {'llava': build_tiny_llava, 'qwen2_vl': build_tiny_qwen2_vl}


def build_tiny_captioner(path: str | os.PathLike | None = None, seed: int = 1) -> Path:
    """A tiny image-text-to-text model to use as caption_llm's captioner (a tiny LLaVA).

    Its captions are random tokens, which is all the caption_llm plumbing needs.
    """
    return build_tiny_llava(path, seed=seed)


def make_test_image(height: int = 96, width: int = 128, seed: int = 0) -> 'Any':
    """A deterministic RGB uint8 image (H, W, 3): smooth gradients plus noise."""
    import numpy as np
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([xx * 255 // max(1, width - 1), yy * 255 // max(1, height - 1),
                    (xx + yy) * 127 // max(1, width + height - 2)], axis=-1).astype(np.int32)
    img += rng.integers(-30, 30, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


__all__ = ['TINY_VLM_BUILDERS', 'build_tiny_captioner', 'build_tiny_llava', 'build_tiny_qwen2_vl',
           'build_tiny_text_llm', 'build_tokenizer', 'make_test_image']
