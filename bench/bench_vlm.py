#!/usr/bin/env python3
"""Cost of the vlm backend's modes, on one random model, the same frames, in one run.

1. ``score`` (26 yes/no + 3 VAD questions on one shared prefix) vs ``generate`` (the paper's
   protocol: the category-list prompt, greedy, ``--new-tokens`` tokens forced with
   ``min_new_tokens`` so every answer really is that long), ms per person, and the ratio.
2. ``score`` vs ``naive_scores`` (the full prompt re-encoded for each of the 29 questions).
3. Several persons of a frame as one batch vs one by one, for 1/2/4/8 persons: ms per person.

Calls of the compared variants are interleaved frame by frame, so background load on a shared
machine hits both alike. Latency does not depend on the weight values, only on the shapes and
the number of tokens, so random weights give the real cost.

Default model: a tiny-ish random LLaVA (CLIP 224 px -> 256 image tokens, Llama with
``--hidden``/``--layers``), saved and loaded back like a real one (CPU is fine).
``--full-size``: LLaVA-1.5-7B dimensions (CLIP ViT-L/14-336, 576 image tokens, Llama-2-7B:
4096 hidden, 32 layers, 32 heads, 11008 MLP, 32064 vocab) with random bf16 weights built directly
on the GPU (needs CUDA and ~16 GB); also reports peak GPU memory.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_vlm.py [--family llava|qwen2_vl]
        [--frames 3] [--persons 1,2,4,8] [--new-tokens 64] [--full-size] [--json out.json]
"""
from __future__ import annotations

import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from emotion_perception.core.backends.vlm import VLMBackend  # noqa: E402
from emotion_perception.core.types import BBox  # noqa: E402
from emotion_perception.testing import tiny_models  # noqa: E402

#: person boxes on a 640x480 frame (xyxy), the first n are used
BOXES = [BBox(40, 60, 180, 460), BBox(200, 40, 330, 470), BBox(350, 80, 470, 450),
         BBox(480, 50, 620, 470), BBox(10, 200, 120, 470), BBox(130, 220, 240, 475),
         BBox(260, 210, 380, 478), BBox(400, 190, 530, 476)]


def sync(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - t0) * 1e3


def full_size_llava(device: str) -> tuple[Any, Any]:
    """LLaVA-1.5-7B shapes, random bf16 weights built on ``device``, and a processor."""
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)
    template = tiny_models._CHAT_TEMPLATE.replace('{IMAGE}', tiny_models.IMAGE_TOKEN + '\n')
    tok = tiny_models.build_tokenizer((tiny_models.IMAGE_TOKEN,), template)
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                              num_attention_heads=16, image_size=336, patch_size=14,
                              projection_dim=768)
    text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                       max_position_embeddings=4096, pad_token_id=tok.pad_token_id,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_id=tok.convert_tokens_to_ids(tiny_models.IMAGE_TOKEN),
                         vision_feature_layer=-2, vision_feature_select_strategy='default')
    torch.manual_seed(0)
    with torch.device(device):
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            model = LlavaForConditionalGeneration(config).eval()
        finally:
            torch.set_default_dtype(default)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = None  # never stop early: fixed answer length
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={'shortest_edge': 336},
                                           crop_size={'height': 336, 'width': 336}),
        tokenizer=tok, patch_size=14, vision_feature_select_strategy='default',
        chat_template=template, image_token=tiny_models.IMAGE_TOKEN,
        num_additional_image_tokens=1)
    return model, processor


def mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f'{values[0]:.1f}'
    return f'{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}'


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--family', default='llava', choices=sorted(tiny_models.TINY_VLM_BUILDERS))
    ap.add_argument('--hidden', type=int, default=128)
    ap.add_argument('--layers', type=int, default=4)
    ap.add_argument('--frames', type=int, default=3)
    ap.add_argument('--persons', default='1,2,4,8')
    ap.add_argument('--new-tokens', type=int, default=64)
    ap.add_argument('--device', default='auto')
    ap.add_argument('--full-size', action='store_true')
    ap.add_argument('--skip-naive', action='store_true', help='skip table 2 (slow at full size)')
    ap.add_argument('--json', default='')
    args = ap.parse_args()
    device = ('cuda' if torch.cuda.is_available() else 'cpu') if args.device == 'auto' \
        else args.device
    persons = [int(p) for p in args.persons.split(',')]
    frames = [tiny_models.make_test_image(480, 640, seed=i) for i in range(args.frames)]

    t0 = time.perf_counter()
    if args.full_size:
        if not device.startswith('cuda'):
            sys.exit('--full-size needs a CUDA device')
        model, processor = full_size_llava(device)
        desc = 'LLaVA-1.5-7B shapes (CLIP ViT-L/14-336, Llama 7B), random bf16'
    else:
        builder = tiny_models.TINY_VLM_BUILDERS[args.family]
        extra = {'image_size': 224} if args.family == 'llava' else {'max_pixels': 224 * 224}
        folder = builder(Path(tempfile.mkdtemp(prefix='bench_vlm_')) / 'model',
                         hidden=args.hidden, layers=args.layers, **extra)
        from emotion_perception.core.backends.vlm import load_image_text_model
        model, processor = load_image_text_model(str(folder), device=device)
        dtype = 'float32' if device == 'cpu' else 'bf16'
        desc = f'random {args.family}, hidden {args.hidden}, {args.layers} layers, {dtype}'
    build_s = time.perf_counter() - t0

    def backend(**opts: Any) -> VLMBackend:
        b = VLMBackend(dict(model='bench', device=device, **opts))
        b.attach(model, processor)
        return b

    score = backend(mode='score', batch_size=1)
    gen = backend(mode='generate', max_new_tokens=args.new_tokens, batch_size=1)
    n_image_tokens = int((score.preprocess(frames[0], BOXES[:1]).items[0]['input_ids']
                          == model.config.image_token_id).sum())
    prefix_len = int(score.preprocess(frames[0], BOXES[:1]).items[0]['input_ids'].shape[1])
    if device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    # warm-up (kernels, allocator)
    score.predict(frames[0], BOXES[:1])
    gen.generate_answers(frames[0], BOXES[:1], min_new_tokens=args.new_tokens)

    report: dict[str, Any] = {'machine': platform.platform(), 'device': device,
                              'torch': torch.__version__, 'model': desc,
                              'image_tokens': n_image_tokens, 'score_prefix_tokens': prefix_len,
                              'build_s': round(build_s, 1)}
    if device.startswith('cuda'):
        report['gpu'] = torch.cuda.get_device_name()
    print(f'## bench_vlm: {desc}; device {device}'
          + (f' ({report["gpu"]})' if 'gpu' in report else '') + f'; torch {torch.__version__}')
    print(f'image tokens {n_image_tokens}, score prefix {prefix_len} tokens, '
          f'{args.frames} frames; built/loaded in {build_s:.1f} s\n')

    # 1. score vs generate, one person per call
    t_score, t_gen = [], []
    for i, frame in enumerate(frames):
        for box in BOXES[:2]:
            calls = [(t_score, lambda: score.predict(frame, [box])),
                     (t_gen, lambda: gen.generate_answers(frame, [box],
                                                          min_new_tokens=args.new_tokens))]
            for store, fn in (calls if i % 2 == 0 else calls[::-1]):
                store.append(timed(fn, device))
    ratio = statistics.mean(t_gen) / statistics.mean(t_score)
    print('### 1. score vs generate (ms per person, one person per call)')
    print('| mode | what | ms/person | n |\n|---|---|---|---|')
    print(f'| score | 26 yes/no + 3 VAD on one shared prefix | {mean_sd(t_score)} | {len(t_score)} |')
    print(f'| generate | paper prompt, {args.new_tokens} new tokens (forced) | {mean_sd(t_gen)} '
          f'| {len(t_gen)} |')
    print(f'\ngenerate / score = {ratio:.2f}\n')
    report['score_ms'] = statistics.mean(t_score)
    report['generate_ms'] = statistics.mean(t_gen)
    report['generate_over_score'] = ratio

    # 2. score vs naive
    if not args.skip_naive:
        t_naive, t_sc = [], []
        max_diff = 0.0
        for frame in frames:
            box = [BOXES[0]]
            res: dict[str, Any] = {}
            t_sc.append(timed(lambda: res.__setitem__('s', score.predict(frame, box)), device))
            t_naive.append(timed(lambda: res.__setitem__('n', score.naive_scores(frame, box)),
                                 device))
            max_diff = max(max_diff, float(np.abs(res['s'][0].scores - res['n'][0][0]).max()))
        r = statistics.mean(t_naive) / statistics.mean(t_sc)
        print('### 2. shared-prefix score vs naive re-encoding (ms per person)')
        print('| method | forward passes | ms/person |\n|---|---|---|')
        print(f'| shared prefix | 2 (prefix + 29 suffixes batched) | {mean_sd(t_sc)} |')
        print(f'| naive | 29 full prompts | {mean_sd(t_naive)} |')
        print(f'\nnaive / shared = {r:.1f}; max |score difference| = {max_diff:.2e}\n')
        report.update(naive_ms=statistics.mean(t_naive), naive_over_score=r,
                      naive_max_abs_diff=max_diff)

    # 3. batched vs one by one
    print('### 3. persons of one frame: one batch vs one by one (score mode, ms per person)')
    print('| persons | batched ms/person | one-by-one ms/person | one-by-one / batched |')
    print('|---|---|---|---|')
    batched = backend(mode='score', batch_size=max(persons))
    report['batching'] = []
    for n in persons:
        tb, t1 = [], []
        for i, frame in enumerate(frames):
            calls = [(tb, lambda: batched.predict(frame, BOXES[:n])),
                     (t1, lambda: [score.predict(frame, [b]) for b in BOXES[:n]])]
            for store, fn in (calls if i % 2 == 0 else calls[::-1]):
                store.append(timed(fn, device) / n)
        r = statistics.mean(t1) / statistics.mean(tb)
        print(f'| {n} | {mean_sd(tb)} | {mean_sd(t1)} | {r:.2f} |')
        report['batching'].append({'persons': n, 'batched_ms_per_person': statistics.mean(tb),
                                   'single_ms_per_person': statistics.mean(t1), 'ratio': r})
    if device.startswith('cuda'):
        peak = torch.cuda.max_memory_allocated() / 2**30
        report['peak_gpu_gib'] = peak
        print(f'\npeak GPU memory allocated: {peak:.1f} GiB')
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
