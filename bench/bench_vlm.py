#!/usr/bin/env python3
"""Cost of the vlm backend's modes, on one random model, the same frames, in one run.

1. ``score`` (26 yes/no + 3 VAD questions as one masked question tree on a shared prefix) vs
   ``generate`` (the paper's protocol: the category-list prompt, greedy, ``--new-tokens`` tokens
   forced with ``min_new_tokens`` so every answer really is that long), ms per person.
2. The question tree vs the prompt re-encoded per question (``score_batches(use_tree=False)``,
   the fallback path; same numbers).
3. Several persons of a frame as one batch vs one by one (1/2/4/8 persons).
4. KV cache bytes per person: measured after the tree call (prefix + tree nodes), against the
   budget (prefix tokens + all suffix tokens) x bytes per token, and the previous layout (each of
   the 29 questions on its own copy of the prefix cache), computed from the shapes.
5. Peak memory (process RSS high-water mark; CUDA: max allocated).

``--dtypes float32,bfloat16`` (issue 24) prints instead score mode's ms per person per dtype on
the same weights (rounded to bf16 first, as in a bf16 hub checkpoint), persons one by one and
dtypes interleaved, and the max score / VAD difference against the first dtype (with the spread
of its scores, so that a small difference means something); ``--init-std 0.02`` draws the
weights at a trained checkpoint's scale (the builders' LM weights, std 0.2, are chaotic: a
change in the 9th bit moves a score by 0.5).

Quantization (``--quantization none,int8,nf4,int4``, issue 17) prints its own tables instead:

* at ``--config llava-7b`` / ``qwen2-vl-2b`` / ``smolvlm-256m``: a random bf16 checkpoint of
  that shape is written shard by shard under /tmp (never the whole model in memory), then each
  option is loaded through the backend's own loading path (``VLMBackend.load``: transformers'
  quantization config, layer by layer) in a subprocess of its own, so memory returns: weight
  bytes counted from the tensors; resident memory after loading (RSS and its anonymous part;
  float tensors still mapped from the checkpoint file are first copied into memory, as a GPU
  load copies every weight); peak anonymous RSS (sampled every 20 ms) and the kernel's peak
  RSS (VmHWM, which also counts the checkpoint's pages mapped while reading), then the peak
  anonymous RSS while scoring ``--persons-mem`` persons of one frame (what decides whether a
  model fits: inference needs activations, and kernels may make compute copies of the
  weights) and its time, in the compute dtype ``--load-dtype`` (default auto). ``none`` at 7B
  (14 GB) only runs with >= 18 GB available (else it is reported as skipped). The checkpoint
  is deleted afterwards.
* at ``--config tiny``: each family in ``--families`` (hidden ``--hidden``, vision 64, the real
  tokenizer) loaded per option: max |score difference| and |VAD difference| against the
  unquantized model on the same persons (what quantization costs on random weights) and score
  mode's ms per person on this device.

Calls of compared variants are interleaved frame by frame, so background load hits both alike.
Latency depends on shapes and token counts, not on weight values: random weights give the real
cost. Models (``--config``), all with the family's REAL tokenizer and chat template:

* ``tiny``: ``--family`` with ``--hidden``/``--layers`` (default a LLaVA-1.5 with a CLIP 224 px
  tower, 256 image tokens);
* ``smolvlm-256m``: SmolVLM-256M-Instruct's configuration (Idefics3: SigLIP 512 px tiles,
  pixel shuffle 4, Llama 576 x 30 layers), SmolLM2 tokenizer;
* ``qwen2-vl-2b``: Qwen2-VL-2B-Instruct's configuration (ViT 1280 x 32, Qwen2 1536 x 28 layers;
  about 9 GB in float32), Qwen2 tokenizer;
* ``llava-7b``: LLaVA-1.5-7B (CLIP ViT-L/14-336, 576 image tokens, Llama-2-7B), needs CUDA.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_vlm.py [--config tiny|smolvlm-256m|...]
        [--family llava] [--hidden 576 --layers 30] [--frames 2] [--persons 1,2,4,8]
        [--new-tokens 64] [--skip-naive] [--json out.json]
        [--quantization none,int8,nf4,int4 [--quantization-library auto]
         [--families llava,qwen2_vl] [--load-dtype auto|float32|bfloat16]]
        [--dtypes float32,bfloat16 [--init-std 0.02]]
"""
from __future__ import annotations

import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import numpy as np  # noqa: E402

from emotion_perception.core.backends import _prefix_scoring as ps  # noqa: E402
from emotion_perception.core.backends.vlm import VLMBackend  # noqa: E402
from emotion_perception.core.types import BBox  # noqa: E402
from emotion_perception.testing import tiny_models  # noqa: E402

#: person boxes on a 640x480 frame (xyxy), the first n are used
BOXES = [BBox(40, 60, 180, 460), BBox(200, 40, 330, 470), BBox(350, 80, 470, 450),
         BBox(480, 50, 620, 470), BBox(10, 200, 120, 470), BBox(130, 220, 240, 475),
         BBox(260, 210, 380, 478), BBox(400, 190, 530, 476)]

#: real model configurations (random weights): family + make_vlm keyword arguments
CONFIGS: dict[str, tuple[str, dict[str, Any], str]] = {
    'smolvlm-256m': ('idefics3', dict(hidden=576, layers=30, heads=9, kv_heads=3,
                                      intermediate=1536, image_size=512, patch_size=16,
                                      scale_factor=4, vision_hidden=768, vision_layers=12,
                                      vision_heads=12, vision_intermediate=3072,
                                      longest_edge=2048),
                     'SmolVLM-256M-Instruct configuration (Idefics3, SigLIP 512 px tiles)'),
    'qwen2-vl-2b': ('qwen2_vl', dict(hidden=1536, layers=28, heads=12, kv_heads=2,
                                     intermediate=8960, vision_hidden=1280, vision_layers=32,
                                     vision_heads=16, vision_mlp_ratio=4,
                                     max_pixels=12845056),
                    'Qwen2-VL-2B-Instruct configuration'),
    'llava-7b': ('llava', dict(hidden=4096, layers=32, heads=32, kv_heads=32, intermediate=11008,
                               image_size=336, vision_hidden=1024, vision_layers=24,
                               vision_heads=16, vision_intermediate=4096),
                 'LLaVA-1.5-7B configuration (CLIP ViT-L/14-336, Llama-2-7B)'),
}


def sync(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - t0) * 1e3


def mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f'{values[0]:.1f}'
    return f'{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}'


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(args: argparse.Namespace, device: str) -> tuple[Any, Any, str]:
    if args.config == 'tiny':
        family = args.family
        extra: dict[str, Any] = {'llava': {'image_size': 224}, 'llava_next': {'image_size': 112},
                                 'idefics3': {'image_size': 64}}.get(family,
                                                                     {'max_pixels': 224 * 224})
        kwargs = dict(hidden=args.hidden, layers=args.layers, heads=max(4, args.hidden // 64),
                      kv_heads=max(2, args.hidden // 192), **extra)
        desc = f'random {family}, hidden {args.hidden}, {args.layers} layers'
    else:
        family, kwargs, desc = CONFIGS[args.config]
        desc = f'{desc}, random weights'
    dtype = torch.float32 if device == 'cpu' else torch.bfloat16
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    if getattr(args, 'init_std', None):
        kwargs['init_std'] = args.init_std
        desc += f', weights drawn with std {args.init_std}'
    try:
        with torch.device(device):
            model, processor, _ = tiny_models.make_vlm(family, seed=0, **kwargs)
    finally:
        torch.set_default_dtype(default)
    model.generation_config.eos_token_id = None  # never stop early: fixed answer length
    return model.eval(), processor, f'{desc}, {str(dtype).split(".")[1]}'


# -- quantization (issue 17) ----------------------------------------------------------------
def _proc_status(key: str) -> int:
    """A /proc/self/status memory field in bytes (e.g. 'RssAnon', 'VmHWM')."""
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(key + ':'):
            return int(line.split()[1]) * 1024
    return 0


def _malloc_trim() -> None:
    """Give freed heap memory back to the system (glibc), so RSS shows what is held."""
    try:
        import ctypes
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass


def mem_available() -> int:
    for line in Path('/proc/meminfo').read_text().splitlines():
        if line.startswith('MemAvailable:'):
            return int(line.split()[1]) * 1024
    return 0


def measure_load(folder: str, quantization: str, library: str, dtype: str,
                 persons: int = 2) -> dict[str, Any]:
    """Load ``folder`` through ``VLMBackend.load`` with ``quantization`` (run in a subprocess of
    its own), then score ``persons`` persons of one frame: bytes of the weights, resident
    memory, the peaks of loading and of inference (anonymous RSS sampled every 20 ms), times."""
    import threading
    from emotion_perception.core.backends import quantization as qz
    peak = {'anon': _proc_status('RssAnon')}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak['anon'] = max(peak['anon'], _proc_status('RssAnon'))
            time.sleep(0.02)
    gc.collect()
    _malloc_trim()
    before, before_rss = _proc_status('RssAnon'), _proc_status('VmRSS')
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    backend = VLMBackend(dict(model=folder, device='cpu', dtype=dtype, quantization=quantization,
                              quantization_library=library, batch_size=persons))
    backend.load()
    load_s = time.perf_counter() - t0
    load_peak, peak['anon'] = peak['anon'], _proc_status('RssAnon')  # inference peak from here
    after_load = peak['anon']
    frame = tiny_models.make_test_image(480, 640, seed=0)
    t0 = time.perf_counter()
    results = backend.predict(frame, BOXES[:persons])
    infer_s = time.perf_counter() - t0
    done.set()
    thread.join()
    infer_peak = peak['anon']
    # plain tensors whose dtype matches the checkpoint's stay mapped from the file (page cache,
    # RssFile); copy them into memory as a GPU load copies every weight, so that the
    # resident figure counts them and the file mapping goes
    with torch.no_grad():
        for t in list(backend.model.parameters()) + list(backend.model.buffers()):
            if type(t) in (torch.Tensor, torch.nn.Parameter) and t.is_floating_point():
                t.data = t.data.clone()
    gc.collect()
    _malloc_trim()
    n_q, n_lin = qz.quantized_linear_count(backend.model)
    return {'quantization': quantization, 'dtype': str(backend.model.dtype).split('.')[-1],
            'library': qz.choose_library(quantization, library, 'cpu') or '-',
            'quantized_linear': n_q, 'linear': n_lin,
            'weight_bytes': qz.weight_bytes(backend.model),
            'resident_bytes': _proc_status('VmRSS') - before_rss,
            'resident_anon_bytes': _proc_status('RssAnon') - before,
            'peak_anon_bytes': load_peak, 'anon_after_load_bytes': after_load,
            'peak_anon_inference_bytes': infer_peak,
            'peak_rss_bytes': _proc_status('VmHWM'), 'load_s': load_s, 'infer_s': infer_s,
            'scores': [r.scores.tolist() for r in results]}


def memory_table(args: argparse.Namespace, options: list[str]) -> list[dict[str, Any]]:
    """Write a random bf16 checkpoint of ``args.config``'s shape, load it once per option in a
    subprocess, print the table; the checkpoint is deleted at the end."""
    import shutil
    import subprocess
    import tempfile
    family, kwargs, desc = CONFIGS[args.config]
    tmp = Path(tempfile.mkdtemp(prefix='bench_quant_', dir='/tmp'))
    rows: list[dict[str, Any]] = []
    try:
        t0 = time.perf_counter()
        folder = tiny_models.write_random_checkpoint(family, tmp / args.config, 'bfloat16',
                                                     shard_gb=1.0, **kwargs)
        ckpt = sum(f.stat().st_size for f in folder.glob('*.safetensors'))
        print(f'## bench_vlm --quantization: {desc}, random weights, bfloat16 checkpoint '
              f'{ckpt / 1e9:.2f} GB written in {time.perf_counter() - t0:.0f} s; device cpu '
              f'({platform.machine()}), torch {torch.__version__}; one subprocess per option\n')
        for opt in options:
            need = ckpt * 1.3 if opt == 'none' else 0
            if need and mem_available() < max(need, 18e9 if ckpt > 10e9 else 0):
                print(f'(skipped {opt}: {mem_available() / 1e9:.1f} GB available, it needs '
                      f'{max(need, 18e9) / 1e9:.0f} GB)')
                rows.append({'quantization': opt, 'skipped': True})
                continue
            out = tmp / f'{opt}.json'
            cmd = [sys.executable, __file__, '--measure-load', str(folder), '--quantization',
                   opt, '--quantization-library', args.quantization_library, '--json', str(out),
                   '--load-dtype', args.load_dtype, '--persons-mem', str(args.persons_mem)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                reason = (proc.stderr.strip().splitlines() or ['?'])[-1]
                print(f'({opt} failed: {reason})')
                rows.append({'quantization': opt, 'failed': reason})
                continue
            rows.append(json.loads(out.read_text()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    gb = 1e9
    ref = next((np.array(r['scores']) for r in rows if r.get('quantization') == 'none'
                and 'scores' in r), None)
    print(f'| option | compute dtype | library | linear layers quantized | weights GB (counted) '
          f'| resident GB after load: RSS / anonymous | peak anon GB: loading / scoring '
          f'{args.persons_mem} persons | peak RSS GB (VmHWM, incl. mapped checkpoint) | load s '
          '| scoring s | max abs score diff vs none |')
    print('|---|---|---|---|---|---|---|---|---|---|---|')
    for r in rows:
        if 'weight_bytes' not in r:
            print(f'| {r["quantization"]} | | {"skipped" if r.get("skipped") else "failed"} '
                  '| | | | | | | | |')
            continue
        diff = (f'{np.abs(np.array(r["scores"]) - ref).max():.3f}' if ref is not None
                else '-')
        print(f'| {r["quantization"]} | {r["dtype"]} | {r["library"]} | '
              f'{r["quantized_linear"]} / {r["linear"]} | {r["weight_bytes"] / gb:.2f} | '
              f'{r["resident_bytes"] / gb:.2f} / {r["resident_anon_bytes"] / gb:.2f} '
              f'| {r["peak_anon_bytes"] / gb:.2f} / {r["peak_anon_inference_bytes"] / gb:.2f} '
              f'| {r["peak_rss_bytes"] / gb:.2f} | {r["load_s"]:.0f} | {r["infer_s"]:.1f} '
              f'| {diff} |')
    return rows


def tiny_quantization_table(args: argparse.Namespace, options: list[str]) -> list[dict]:
    """Per tiny family and option: max |score / VAD difference| vs unquantized, ms/person."""
    import shutil
    import tempfile
    frames = [tiny_models.make_test_image(480, 640, seed=i) for i in range(args.frames)]
    boxes = BOXES[:2]
    tmp = Path(tempfile.mkdtemp(prefix='bench_quant_tiny_', dir='/tmp'))
    rows: list[dict[str, Any]] = []
    print(f'## bench_vlm --quantization: tiny random families (hidden {args.hidden}, '
          f'{args.layers} layers, vision 64, real tokenizers), score mode, {len(frames)} frames '
          f'x {len(boxes)} persons one by one; device cpu, torch {torch.__version__}, '
          f'{torch.get_num_threads()} threads\n')
    print('| family | option | library | max abs score diff vs none | max abs VAD diff vs none '
          '| ms/person (CPU) |')
    print('|---|---|---|---|---|---|')
    try:
        for family in args.families.split(','):
            extra = {'llava': {'image_size': 224}, 'llava_next': {'image_size': 112},
                     'idefics3': {'image_size': 64}}.get(family, {'max_pixels': 224 * 224})
            folder = tiny_models.build_tiny_vlm(
                family, tmp / family, hidden=args.hidden, layers=args.layers,
                heads=max(4, args.hidden // 64), kv_heads=max(2, args.hidden // 192),
                vision_hidden=64, **extra)
            ref = None
            for opt in ['none'] + [o for o in options if o != 'none']:
                b = VLMBackend(dict(model=str(folder), device='cpu', batch_size=1,
                                    quantization=opt,
                                    quantization_library=args.quantization_library))
                b.load()
                b.predict(frames[0], boxes[:1])  # warm-up
                times, results = [], []
                for frame in frames:
                    for box in boxes:
                        t0 = time.perf_counter()
                        results += b.predict(frame, [box])
                        times.append((time.perf_counter() - t0) * 1e3)
                scores = np.array([r.scores for r in results])
                vad = np.array([r.vad for r in results])
                if ref is None:
                    ref = (scores, vad)
                ds = float(np.abs(scores - ref[0]).max())
                dv = float(np.nanmax(np.abs(vad - ref[1]))) if np.isfinite(vad).any() else 0.0
                row = {'family': family, 'quantization': opt,
                       'library': b.quantization_summary.split('(')[-1].split(')')[0]
                       if opt != 'none' else '-', 'score_diff': ds, 'vad_diff': dv,
                       'ms_per_person': statistics.mean(times)}
                rows.append(row)
                if opt in options:
                    print(f'| {family} | {opt} | {row["library"]} | {ds:.3f} | {dv:.3f} | '
                          f'{mean_sd(times)} |')
                b.unload()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def dtype_table(args: argparse.Namespace, device: str) -> dict[str, Any]:
    """Score mode ms per person per dtype on the same weights (rounded to bf16 first, as a
    bf16 hub checkpoint, so only the compute differs), persons one by one, calls interleaved;
    the max |score| and |VAD| difference against the first dtype."""
    import copy
    dtypes = args.dtypes.split(',')
    model, processor, desc = build(args, device)
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.data = t.data.to(torch.bfloat16).to(t.dtype)
    # a model over 3 GB in float32 (Qwen2-VL-2B: 9 GB) is not copied: the one model is
    # converted in place before each call (untimed; bf16-exact weights convert back exactly)
    big = sum(p.numel() for p in model.parameters()) * 4 > 3e9
    backends: dict[str, VLMBackend] = {}

    def backend_for(name: str) -> VLMBackend:
        if big or name not in backends:
            m = model.to(getattr(torch, name)) if big else copy.deepcopy(model).to(
                getattr(torch, name))
            backends[name] = VLMBackend(dict(model=f'bench:{args.config}', device=device,
                                             mode='score', batch_size=1, dtype=name))
            backends[name].attach(m, processor)
        return backends[name]
    frames = [tiny_models.make_test_image(480, 640, seed=i) for i in range(args.frames)]
    persons = BOXES[:max(int(p) for p in args.persons.split(','))]
    for d in dtypes:
        backend_for(d).predict(frames[0], persons[:1])  # warm-up
    times = {d: [] for d in dtypes}
    out = {d: [] for d in dtypes}
    k = 0
    for frame in frames:
        for box in persons:
            order = dtypes[k % len(dtypes):] + dtypes[:k % len(dtypes)]
            k += 1
            for d in order:
                b = backend_for(d)
                t0 = time.perf_counter()
                out[d] += b.predict(frame, [box])
                times[d].append((time.perf_counter() - t0) * 1e3)
    ref = dtypes[0]
    s_ref = np.array([r.scores for r in out[ref]])
    v_ref = np.array([r.vad for r in out[ref]])
    print(f'## bench_vlm --dtypes: {desc.rsplit(",", 1)[0]}; device {device}, torch '
          f'{torch.__version__}, {torch.get_num_threads()} threads; score mode, {len(frames)} '
          f'frames x {len(persons)} persons one by one, dtypes interleaved\n')
    print(f'{ref} scores of these persons span {np.ptp(s_ref):.3f} (max - min): a difference '
          'means something only against a spread\n')
    print(f'| dtype | ms/person | {ref} / dtype | max abs score diff vs {ref} | '
          f'max abs VAD diff vs {ref} | LM head read-out |')
    print('|---|---|---|---|---|---|')
    report: dict[str, Any] = {'config': args.config, 'model': desc, 'rows': [],
                              'score_spread': float(np.ptp(s_ref))}
    for d in dtypes:
        ds = float(np.abs(np.array([r.scores for r in out[d]]) - s_ref).max())
        dv = float(np.nanmax(np.abs(np.array([r.vad for r in out[d]]) - v_ref)))
        head = type(backends[d].model.get_output_embeddings()).__name__
        ms = statistics.mean(times[d])
        print(f'| {d} | {mean_sd(times[d])} | {statistics.mean(times[ref]) / ms:.2f} | '
              f'{ds:.2e} | {dv:.2e} | {head} |')
        report['rows'].append({'dtype': d, 'ms_per_person': ms, 'score_diff': ds,
                               'vad_diff': dv, 'times': times[d]})
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--config', default='tiny', choices=['tiny', *CONFIGS])
    ap.add_argument('--family', default='llava', choices=tiny_models.FAMILIES)
    ap.add_argument('--hidden', type=int, default=128)
    ap.add_argument('--layers', type=int, default=4)
    ap.add_argument('--frames', type=int, default=2)
    ap.add_argument('--persons', default='1,2,4,8')
    ap.add_argument('--new-tokens', type=int, default=64)
    ap.add_argument('--device', default='auto')
    ap.add_argument('--skip-naive', action='store_true', help='skip table 2 (slow at real size)')
    ap.add_argument('--json', default='')
    ap.add_argument('--quantization', default='',
                    help='comma-separated options (none,int8,nf4,int4): print the quantization '
                         'tables (memory at a real --config, score difference and ms/person '
                         'on the tiny --families) instead of the mode tables')
    ap.add_argument('--quantization-library', default='auto',
                    choices=['auto', 'bitsandbytes', 'torchao'])
    ap.add_argument('--families', default=','.join(tiny_models.FAMILIES))
    ap.add_argument('--measure-load', default='', help=argparse.SUPPRESS)
    ap.add_argument('--load-dtype', default='auto',
                    help="--quantization at a real --config: the backend's dtype option "
                         "('auto': bfloat16 on CPUs with bf16 matmuls, else float32)")
    ap.add_argument('--persons-mem', type=int, default=2,
                    help='--quantization at a real --config: persons scored after loading')
    ap.add_argument('--init-std', type=float, default=0.0,
                    help="draw every linear/embedding weight with this std (0.02: trained "
                         "checkpoints' scale; default: the builders' weights, LM std 0.2)")
    ap.add_argument('--dtypes', default='',
                    help='comma-separated dtypes (float32,bfloat16): score mode ms per person '
                         'per dtype and the score difference vs the first, instead of the '
                         'mode tables')
    args = ap.parse_args()
    if args.measure_load:  # the subprocess of memory_table
        report = measure_load(args.measure_load, args.quantization, args.quantization_library,
                              args.load_dtype, args.persons_mem)
        Path(args.json).write_text(json.dumps(report))
        return 0
    if args.quantization:
        options = args.quantization.split(',')
        rows = (tiny_quantization_table(args, options) if args.config == 'tiny'
                else memory_table(args, options))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
        return 0
    device = ('cuda' if torch.cuda.is_available() else 'cpu') if args.device == 'auto' \
        else args.device
    if args.dtypes:
        report = dtype_table(args, device)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
        return 0
    if args.config == 'llava-7b' and not device.startswith('cuda'):
        sys.exit('--config llava-7b needs a CUDA device')
    persons = [int(p) for p in args.persons.split(',')]
    frames = [tiny_models.make_test_image(480, 640, seed=i) for i in range(args.frames)]

    t0 = time.perf_counter()
    model, processor, desc = build(args, device)
    build_s = time.perf_counter() - t0

    def backend(**opts: Any) -> VLMBackend:
        b = VLMBackend(dict(model=f'bench:{args.config}', device=device, **opts))
        b.attach(model, processor)
        return b

    score = backend(mode='score', batch_size=1)
    gen = backend(mode='generate', max_new_tokens=args.new_tokens, batch_size=1)
    first = score.preprocess(frames[0], BOXES[:1]).batches[0]
    image_id = getattr(model.config, 'image_token_id', None)
    n_image_tokens = int((first['input_ids'] == image_id).sum()) if image_id is not None else -1
    prefix_len = int(first['input_ids'].shape[1])
    sp = score._score
    if device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    score.predict(frames[0], BOXES[:1])  # warm-up (kernels, allocator)
    gen.generate_answers(frames[0], BOXES[:1], min_new_tokens=args.new_tokens)

    report: dict[str, Any] = {'machine': platform.platform(), 'device': device,
                              'torch': torch.__version__, 'model': desc, 'config': args.config,
                              'image_tokens': n_image_tokens, 'prefix_tokens': prefix_len,
                              'tree_nodes': sp.tree.size, 'suffix_tokens': sp.suffix_tokens,
                              'build_s': round(build_s, 1), 'threads': torch.get_num_threads()}
    if device.startswith('cuda'):
        report['gpu'] = torch.cuda.get_device_name()
    print(f'## bench_vlm: {desc}; device {device}'
          + (f' ({report["gpu"]})' if 'gpu' in report else '')
          + f'; torch {torch.__version__}, {torch.get_num_threads()} threads')
    print(f'image tokens {n_image_tokens}, prefix {prefix_len} tokens; questions: '
          f'{sp.tree.size} tree nodes for {sp.suffix_tokens} suffix + answer tokens; '
          f'{args.frames} frames; built in {build_s:.1f} s\n')

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
    print(f'| score | 26 yes/no + 3 VAD, one question tree on the shared prefix | '
          f'{mean_sd(t_score)} | {len(t_score)} |')
    print(f'| generate | paper prompt, {args.new_tokens} new tokens (forced) | {mean_sd(t_gen)} '
          f'| {len(t_gen)} |')
    print(f'\ngenerate / score = {ratio:.2f}\n')
    report.update(score_ms=statistics.mean(t_score), generate_ms=statistics.mean(t_gen),
                  generate_over_score=ratio)

    # 2. tree vs per-question re-encoding
    if not args.skip_naive:
        t_tree, t_naive, diff, sdiff, vdiff = [], [], 0.0, 0.0, 0.0
        for frame in frames:
            batch = score.preprocess(frame, BOXES[:1]).batches
            out: dict[str, Any] = {}
            for key, use in (('tree', True), ('naive', False)):
                store = t_tree if use else t_naive
                store.append(timed(lambda: out.__setitem__(key, ps.score_batches(
                    model, batch, sp.tree, sp.suffixes, sp.plans, score._device,
                    score._dtype, use_tree=use)[0]), device))
            diff = max(diff, float((out['tree'] - out['naive']).abs().max()))
            (st, vt), (sn, vn) = sp.results(out['tree'])[0], sp.results(out['naive'])[0]
            sdiff = max(sdiff, float(np.abs(st - sn).max()))
            vdiff = max(vdiff, float(np.nanmax(np.abs(np.array(vt) - np.array(vn)))))
        r = statistics.mean(t_naive) / statistics.mean(t_tree)
        n_calls = len(sp.tree.readouts)
        print('### 2. question tree vs re-encoding the prompt per question (ms per person)')
        print('| method | forward passes | ms/person |\n|---|---|---|')
        print(f'| question tree | 2 (prefix, then {sp.tree.size} tree nodes) | {mean_sd(t_tree)} |')
        print(f'| per question | {n_calls} full prompts | {mean_sd(t_naive)} |')
        print(f'\nper question / tree = {r:.1f}; max |difference|: scores {sdiff:.2e}, VAD '
              f'{vdiff:.2e}, read-out log-probs {diff:.2e}\n')
        report.update(naive_ms=statistics.mean(t_naive), naive_over_score=r,
                      naive_max_abs_diff=max(sdiff, vdiff), logprob_max_abs_diff=diff)

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

    # 4. KV bytes per person
    stats: dict[str, Any] = {}
    batch = batched.preprocess(frames[0], BOXES[:1]).batches[0]
    ps.tree_logprobs(model, ps.to_device(batch, score._device, score._dtype), sp.tree,
                     sp.tree.request_ids(sp.plans), stats)
    cfg = getattr(model.config, 'text_config', None) or model.config
    head_dim = getattr(cfg, 'head_dim', None) or cfg.hidden_size // cfg.num_attention_heads
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * \
        torch.finfo(score._dtype).bits // 8
    after = stats['kv_bytes'] / stats['persons']
    budget = (stats['prefix_len'] + sp.suffix_tokens) * per_token
    longest = max(len(s) for s in sp.suffixes) + 1
    before = len(sp.suffixes) * (stats['prefix_len'] + longest) * per_token
    print('\n### 4. KV cache per person (one person, all layers)')
    print('| layout | tokens | MB | / budget |\n|---|---|---|---|')
    print(f'| budget: prefix + all suffix tokens | {stats["prefix_len"]} + {sp.suffix_tokens} '
          f'| {budget / 2**20:.1f} | 1.00 |')
    print(f'| question tree (measured) | {stats["prefix_len"]} + {stats["tree_nodes"]} | '
          f'{after / 2**20:.1f} | {after / budget:.2f} |')
    print(f'| before: prefix copied per question (computed) | {len(sp.suffixes)} x '
          f'({stats["prefix_len"]} + {longest}) | {before / 2**20:.1f} | {before / budget:.2f} |')
    report.update(kv_bytes_per_person=after, kv_budget_bytes=budget, kv_before_bytes=before,
                  kv_over_budget=after / budget, bytes_per_token=per_token)

    # 5. memory
    report['peak_rss_mb'] = peak_rss_mb()
    print(f'\n### 5. memory\npeak RSS of this process: {report["peak_rss_mb"]:.0f} MB')
    if device.startswith('cuda'):
        peak = torch.cuda.max_memory_allocated() / 2**30
        report['peak_gpu_gib'] = peak
        print(f'peak GPU memory allocated: {peak:.2f} GiB')
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
