#!/usr/bin/env python3
"""The remote backend against a real vLLM server, in one run.

1. ms per person, ``score`` (29 concurrent requests per person, ``max_tokens: 1``, plus one
   teacher-forcing request per answer of several tokens) vs ``generate`` (one request,
   ``--new-tokens`` tokens forced with vLLM's ``min_tokens``), interleaved frame by frame.
2. Persons per second in score mode for ``max_concurrency`` 1 / 4 / 16 / 32.
3. The server's prefix-cache and multi-modal-cache hit rates over the score runs, from its
   ``/metrics`` (vLLM's ``prefix_cache_queries/hits`` and ``mm_cache_queries/hits`` counters),
   and the client's request latency percentiles.

Without ``--url`` it starts a server here (``.venv-vllm``, ``make vllm``) on a tiny random
LLaVA-1.5 with the real Llama-2 tokenizer (CPU: the numbers show the client's overheads and
the protocol's request counts, not a GPU's speed). With ``--url`` it measures any server, e.g.
a GPU server running llava-hf/llava-1.5-7b-hf (README "GPU server")::

    .venv/bin/python bench/bench_remote.py [--url http://gpu:8000/v1 --model NAME]
        [--frames 3] [--persons 4] [--concurrency 1,4,16,32] [--new-tokens 32] [--json out]
"""
from __future__ import annotations

import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from emotion_perception.core.backends import create_backend  # noqa: E402
from emotion_perception.core.types import BBox, Status  # noqa: E402

#: person boxes on a 640x480 frame (xyxy), the first n are used
BOXES = [BBox(40, 60, 180, 460), BBox(200, 40, 330, 470), BBox(350, 80, 470, 450),
         BBox(480, 50, 620, 470), BBox(10, 200, 120, 470), BBox(150, 220, 260, 470),
         BBox(300, 200, 410, 470), BBox(430, 210, 540, 470)]


def frames(n: int) -> list[np.ndarray]:
    import cv2
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        out.append(cv2.resize(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), (640, 480)))
    return out


def scrape(url: str) -> dict[str, float]:
    """vLLM's cache counters from /metrics (summed over engines); {} if not available."""
    root = url[:-3] if url.endswith('/v1') else url
    try:
        text = urllib.request.urlopen(f'{root}/metrics', timeout=10).read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for name in ('prefix_cache_queries', 'prefix_cache_hits', 'mm_cache_queries',
                 'mm_cache_hits'):
        vals = re.findall(rf'^vllm:{name}_total(?:{{[^}}]*}})? ([0-9.e+]+)$', text, re.M)
        if vals:
            out[name] = sum(float(v) for v in vals)
    return out


def rate(after: dict, before: dict, what: str) -> str:
    q = after.get(f'{what}_queries', 0) - before.get(f'{what}_queries', 0)
    h = after.get(f'{what}_hits', 0) - before.get(f'{what}_hits', 0)
    return f'{100 * h / q:.1f} % of {q:.0f}' if q > 0 else 'n/a'


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    print(f'\n### {title}\n')
    print('| ' + ' | '.join(header) + ' |')
    print('|' + '|'.join('---' for _ in header) + '|')
    for r in rows:
        print('| ' + ' | '.join(str(c) for c in r) + ' |')


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--url', action='append', help='server base URL(s) ending in /v1 '
                    '(default: start a vLLM server here on a tiny model)')
    ap.add_argument('--model', default='', help="served model name ('' = the first listed)")
    ap.add_argument('--api-key-env', default='', help='env variable holding the API key')
    ap.add_argument('--frames', type=int, default=3)
    ap.add_argument('--persons', type=int, default=4, help='persons per frame (<= 8)')
    ap.add_argument('--concurrency', default='1,4,16,32')
    ap.add_argument('--new-tokens', type=int, default=32, help='generate: answer length')
    ap.add_argument('--json', type=Path, help='write the numbers here')
    args = ap.parse_args()
    persons = BOXES[:max(1, min(args.persons, len(BOXES)))]
    levels = [int(c) for c in args.concurrency.split(',')]
    server = None
    if not args.url:
        from emotion_perception.testing import tiny_models
        from emotion_perception.testing.vllm_server import VLLMServer
        folder = Path(tempfile.mkdtemp(prefix='bench_remote_')) / 'tiny-llava'
        tiny_models.build_tiny_vlm('llava', folder, hidden=256, heads=4, kv_heads=4,
                                   intermediate=512, pad_vocab=False)
        print(f'starting vLLM on {folder} ...', flush=True)
        t0 = time.perf_counter()
        server = VLLMServer(folder, name='tiny-llava').start()
        print(f'ready after {time.perf_counter() - t0:.0f} s: {server.url}', flush=True)
        urls, what = [server.url], 'tiny random LLaVA-1.5 (Llama-2 SPM tokenizer), vLLM CPU'
    else:
        urls, what = args.url, f'{args.model or "(first served)"} at {", ".join(args.url)}'
    report: dict[str, Any] = {'machine': platform.platform(), 'model': what,
                              'persons_per_frame': len(persons), 'frames': args.frames}
    try:
        common = {'url': urls, 'model': args.model, 'api_key_env': args.api_key_env,
                  'timeout_s': 300.0}
        imgs = frames(args.frames)
        score = create_backend('remote', {**common, 'max_concurrency': 16})
        gen = create_backend('remote', {**common, 'mode': 'generate', 'max_concurrency': 16,
                                        'max_new_tokens': args.new_tokens})
        t0 = time.perf_counter()
        score.load()
        load_s = time.perf_counter() - t0
        gen.load()
        gen._min_new_tokens = args.new_tokens
        # warm-up (first image request)
        score.predict(imgs[0], persons[:1])
        gen.predict(imgs[0], persons[:1])
        # 1. score vs generate, interleaved
        times: dict[str, list[float]] = {'score': [], 'generate': []}
        statuses: dict[str, Counter] = {'score': Counter(), 'generate': Counter()}
        reasons: dict[str, Counter] = {'score': Counter(), 'generate': Counter()}
        for img in imgs:
            for name, b in (('score', score), ('generate', gen)):
                t = time.perf_counter()
                res = b.predict(img, persons)
                times[name].append((time.perf_counter() - t) * 1e3 / len(persons))
                statuses[name].update(r.status.name.lower() for r in res)
                reasons[name].update(r.reason for r in res if r.reason)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows = [[k, f'{med[k]:.0f}', f'{min(v):.0f}-{max(v):.0f}',
                 ', '.join(f'{s} {n}' for s, n in statuses[k].most_common())]
                for k, v in times.items()]
        d = score.diagnostics()
        per_person = (29 + int(d.get('continuation_sequences', 0)))
        table(f'1. ms per person, score vs generate ({len(persons)} persons/frame, '
              f'{args.frames} frames, max_concurrency 16; generate: {args.new_tokens} tokens)',
              ['mode', 'ms/person (median)', 'range', 'statuses'], rows)
        for k, c in reasons.items():
            for why, n in c.most_common(2):  # e.g. a random model's answer names no category
                print(f'{k}: {n} x {why}')
        print(f'\nscore / generate = {med["score"] / med["generate"]:.2f}; score sends '
              f'{per_person} requests per person (29 questions + '
              f'{d.get("continuation_sequences", 0)} answers of several tokens); read-out '
              f'{d.get("readout")}; configure (plans, probes) {load_s:.1f} s')
        report['score_vs_generate'] = {'ms_per_person': med, 'requests_per_person': per_person,
                                       'readout': d.get('readout'), 'configure_s': load_s}
        score.unload()
        gen.unload()
        # 2. persons/s by max_concurrency, 3. cache hit rates
        before = scrape(urls[0])
        rows, thr = [], {}
        for c in levels:
            b = create_backend('remote', {**common, 'max_concurrency': c})
            b.load()
            b.predict(imgs[0], persons[:1])
            t = time.perf_counter()
            n_ok = 0
            for img in imgs:
                n_ok += sum(r.status == Status.OK for r in b.predict(img, persons))
            el = time.perf_counter() - t
            thr[c] = len(imgs) * len(persons) / el
            dd = b.diagnostics()
            rows.append([c, f'{thr[c]:.2f}', f'{thr[c] / thr[levels[0]]:.2f}',
                         dd.get('latency_ms.p50', ''), dd.get('latency_ms.p90', ''),
                         f'{n_ok}/{len(imgs) * len(persons)}'])
            b.unload()
        after = scrape(urls[0])
        table(f'2. score mode throughput by max_concurrency ({len(imgs)} frames x '
              f'{len(persons)} persons)',
              ['max_concurrency', 'persons/s', f'vs {levels[0]}', 'request p50 ms',
               'request p90 ms', 'OK'], rows)
        table('3. server caches over the runs of table 2 (from /metrics)',
              ['cache', 'hit rate'],
              [['prefix cache (KV of the shared image + text prefix)',
                rate(after, before, 'prefix_cache')],
               ['multi-modal cache (processed image)', rate(after, before, 'mm_cache')]])
        report['throughput_persons_per_s'] = thr
        report['prefix_cache_hit_rate'] = rate(after, before, 'prefix_cache')
        report['mm_cache_hit_rate'] = rate(after, before, 'mm_cache')
    finally:
        if server is not None:
            server.stop()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == '__main__':
    sys.exit(main())
