#!/usr/bin/env python3
"""The remote backend against a real vLLM server: before (the baseline commit) vs now, one table.

Both versions run against the SAME server through a counting HTTP proxy on loopback
(``testing.fault_proxy``, no faults), each in its own process (the baseline's package is taken
from ``git archive BASELINE``), on real photographs (zidane.jpg: 2 persons at both edges of a
1280x720 frame; bus.jpg: 4 persons, portrait), score mode:

* per person: HTTP requests, image uploads, bytes uploaded (what the proxy saw);
* persons/s at each ``max_concurrency``; the server's prefix-cache hit rate over those runs
  (vLLM's ``/metrics``);
* configure: requests and seconds;
* the max difference of the category scores and of VAD from the local ``vlm`` backend on the
  same model folder, PNG and JPEG (now: with ``processor`` = the model folder).

Without ``--url`` it starts a server here (``.venv-vllm``, ``make vllm``) on a tiny random
LLaVA-1.5 (CLIP processor with a centre crop, real Llama-2 tokenizer): CPU numbers show the
protocol's costs, not a GPU's speed. With ``--url`` (and ``--model-dir`` for the score
comparison) it measures any server::

    .venv/bin/python bench/bench_remote.py [--url http://gpu:8000/v1 --model-dir DIR]
        [--api-key-env NAME] [--baseline c39d99c] [--concurrency 1,4,16] [--rounds 1]
        [--photos zidane,bus] [--json out]
"""
from __future__ import annotations

import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PEOPLE_N = {'zidane': (0, 1), 'bus': (0, 1, 2, 3)}
PHOTOS = ('zidane', 'bus')
USE = list(PHOTOS)
BASELINE = 'c39d99c'


def scrape(url: str) -> dict[str, float]:
    """vLLM's cache counters from /metrics (summed over engines); {} if not available."""
    root = url[:-3] if url.endswith('/v1') else url
    try:
        text = urllib.request.urlopen(f'{root}/metrics', timeout=10).read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for name in ('prefix_cache_queries', 'prefix_cache_hits'):
        vals = re.findall(rf'^vllm:{name}_total(?:{{[^}}]*}})? ([0-9.e+]+)$', text, re.M)
        if vals:
            out[name] = sum(float(v) for v in vals)
    return out


def hit_rate(after: dict, before: dict) -> str:
    q = after.get('prefix_cache_queries', 0) - before.get('prefix_cache_queries', 0)
    h = after.get('prefix_cache_hits', 0) - before.get('prefix_cache_hits', 0)
    return f'{100 * h / q:.1f} %' if q > 0 else 'n/a'


def photos() -> list[tuple[str, Any, list]]:
    import cv2

    from emotion_perception.core.model_files import sample_image_paths
    from emotion_perception.core.types import BBox
    from emotion_perception.testing.sample_people import PEOPLE
    paths = sample_image_paths()
    return [(n, cv2.cvtColor(cv2.imread(str(paths[n])), cv2.COLOR_BGR2RGB),
             [BBox(*p.box) for p in PEOPLE[n]]) for n in USE]


# -- one version, in its own process ----------------------------------------------------------
def worker(args: argparse.Namespace) -> int:
    """Measure the ``emotion_perception`` first on sys.path (this repo's or the baseline's)."""
    spec = importlib.util.spec_from_file_location(
        'fault_proxy', REPO / 'emotion_perception' / 'testing' / 'fault_proxy.py')
    fp = importlib.util.module_from_spec(spec)
    sys.modules['fault_proxy'] = fp
    spec.loader.exec_module(fp)
    from emotion_perception.core.backends import create_backend
    from emotion_perception.core.types import Status
    new = importlib.util.find_spec('emotion_perception.core.backends.scoring_plan') is not None
    shots = photos()
    n_persons = sum(len(b) for _, _, b in shots)
    out: dict[str, Any] = {'new': new}
    extra = {'processor': args.model_dir} if new and args.model_dir else {}
    with fp.FaultProxy(args.url) as proxy:
        common = {'url': proxy.url, 'model': args.model, 'timeout_s': 300.0,
                  'api_key_env': args.api_key_env, **extra}
        # configure
        proxy.reset_counts()
        t0 = time.perf_counter()
        b = create_backend('remote', {**common, 'image_format': 'png', 'max_concurrency': 16})
        b.load()
        out['configure_s'] = time.perf_counter() - t0
        out['configure_requests'] = proxy.reset_counts().requests
        # scores (png) and the wire per person
        b.predict(shots[0][1], shots[0][2][:1])  # warm-up
        proxy.reset_counts()
        res = {name: b.predict(img, boxes) for name, img, boxes in shots}
        wire = proxy.reset_counts()
        out['per_person'] = {'requests': wire.requests / n_persons,
                             'uploads': wire.uploads / n_persons,
                             'bytes': wire.bytes_in / n_persons}
        out['scores'] = {'png': _dump(res, Status)}
        b.unload()
        jp = create_backend('remote', {**common, 'image_format': 'jpeg', 'max_concurrency': 16})
        jp.load()
        proxy.reset_counts()
        out['scores']['jpeg'] = _dump({n: jp.predict(i, bx) for n, i, bx in shots}, Status)
        out['per_person']['bytes_jpeg'] = proxy.reset_counts().bytes_in / n_persons
        jp.unload()
        # throughput by max_concurrency; the prefix cache over these runs
        before = scrape(args.url)
        out['persons_per_s'] = {}
        for c in [int(x) for x in args.concurrency.split(',')]:
            bc = create_backend('remote', {**common, 'image_format': 'png',
                                           'max_concurrency': c})
            bc.load()
            bc.predict(shots[0][1], shots[0][2][:1])
            t0 = time.perf_counter()
            ok = 0
            for _ in range(args.rounds):
                for _, img, boxes in shots:
                    ok += sum(r.status == Status.OK for r in bc.predict(img, boxes))
            el = time.perf_counter() - t0
            out['persons_per_s'][str(c)] = {'rate': args.rounds * n_persons / el, 'ok': ok,
                                            'of': args.rounds * n_persons}
            bc.unload()
        out['prefix_cache_hit_rate'] = hit_rate(scrape(args.url), before)
    Path(args.worker).write_text(json.dumps(out))
    return 0


def _dump(results: dict, Status) -> dict:
    return {name: [{'ok': r.status == Status.OK, 'reason': r.reason,
                    'scores': [float(x) for x in r.scores], 'vad': [float(v) for v in r.vad]}
                   for r in rs] for name, rs in results.items()}


# -- the driver -------------------------------------------------------------------------------
def run_version(tree: Path, args: argparse.Namespace, url: str, model_dir: str) -> dict:
    out = Path(tempfile.mkstemp(suffix='.json')[1])
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, str(Path(__file__).resolve()), '--worker', str(out), '--url', url,
           '--model', args.model, '--concurrency', args.concurrency,
           '--api-key-env', args.api_key_env,
           '--rounds', str(args.rounds), '--model-dir', model_dir, '--photos', args.photos]
    proc = subprocess.run(cmd, env=env, cwd=str(tree), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f'{tree}: worker failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}')
    return json.loads(out.read_text())


def local_scores(model_dir: str) -> dict:
    from emotion_perception.core.backends import create_backend
    b = create_backend('vlm', {'model': model_dir, 'device': 'cpu'})
    b.load()
    out = {n: [{'scores': list(map(float, r.scores)), 'vad': list(map(float, r.vad))}
               for r in b.predict(img, boxes)] for n, img, boxes in photos()}
    b.unload()
    return out


def diff(remote: dict, local: dict, name: str, key: str) -> str:
    import numpy as np
    rs = remote[name]
    if not all(r['ok'] for r in rs):
        return 'ERROR: ' + '; '.join(sorted({r['reason'][:60] for r in rs if not r['ok']}))
    worst = max(float(np.max(np.abs(np.subtract(r[key], w[key]))))
                for r, w in zip(rs, local[name]))
    return f'{worst:.2g}'


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    print(f'\n### {title}\n')
    print('| ' + ' | '.join(header) + ' |')
    print('|' + '|'.join('---' for _ in header) + '|')
    for r in rows:
        print('| ' + ' | '.join(str(c) for c in r) + ' |')


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--url', help='server base URL ending in /v1 (default: start a vLLM server '
                    'here on a tiny model)')
    ap.add_argument('--model', default='', help="served model name ('' = the first listed)")
    ap.add_argument('--api-key-env', default='', help='env variable holding the API key')
    ap.add_argument('--model-dir', default='', help='the served model folder (processor '
                    'config; local reference scores)')
    ap.add_argument('--baseline', default=BASELINE, help='git commit of "before"')
    ap.add_argument('--concurrency', default='1,4,16')
    ap.add_argument('--rounds', type=int, default=1, help='throughput: passes over the photos')
    ap.add_argument('--photos', default=','.join(PHOTOS), help='of zidane,bus')
    ap.add_argument('--json', type=Path, help='write the numbers here')
    ap.add_argument('--worker', help=argparse.SUPPRESS)
    args = ap.parse_args()
    USE[:] = [p for p in args.photos.split(',') if p in PHOTOS]
    if args.worker:
        sys.path.insert(0, os.getcwd())
        return worker(args)
    sys.path.insert(0, str(REPO))
    server = None
    model_dir = args.model_dir
    if not args.url:
        from emotion_perception.testing import tiny_models
        from emotion_perception.testing.vllm_server import VLLMServer
        folder = Path(tempfile.mkdtemp(prefix='bench_remote_')) / 'tiny-llava'
        tiny_models.build_tiny_vlm('llava', folder, hidden=256, heads=4, kv_heads=4,
                                   intermediate=512, pad_vocab=False)
        model_dir = str(folder)
        print(f'starting vLLM on {folder} ...', flush=True)
        t0 = time.perf_counter()
        server = VLLMServer(folder, name='tiny-llava').start()
        print(f'ready after {time.perf_counter() - t0:.0f} s: {server.url}', flush=True)
        url, what = server.url, 'tiny random LLaVA-1.5 (CLIP centre crop, Llama-2 SPM), vLLM CPU'
    else:
        url, what = args.url, f'{args.model or "(first served)"} at {args.url}'
    base = Path(tempfile.mkdtemp(prefix='bench_remote_baseline_'))
    archive = subprocess.run(['git', '-C', str(REPO), 'archive', args.baseline,
                              'emotion_perception'], capture_output=True, check=True).stdout
    subprocess.run(['tar', '-x', '-C', str(base)], input=archive, check=True)
    report: dict[str, Any] = {'machine': platform.platform(), 'model': what,
                              'baseline': args.baseline}
    try:
        ref = local_scores(model_dir) if model_dir else None
        got = {'before': run_version(base, args, url, model_dir),
               'now': run_version(REPO, args, url, model_dir)}
    finally:
        if server is not None:
            server.stop()
    levels = args.concurrency.split(',')
    b, n = got['before'], got['now']
    rows = [
        ['HTTP requests per person', f"{b['per_person']['requests']:.1f}",
         f"{n['per_person']['requests']:.1f}", '<= 3'],
        ['image uploads per person', f"{b['per_person']['uploads']:.1f}",
         f"{n['per_person']['uploads']:.1f}", '1'],
        ['KiB uploaded per person (png)', f"{b['per_person']['bytes'] / 1024:.0f}",
         f"{n['per_person']['bytes'] / 1024:.0f}", '<= 512'],
        ['KiB uploaded per person (jpeg)', f"{b['per_person']['bytes_jpeg'] / 1024:.0f}",
         f"{n['per_person']['bytes_jpeg'] / 1024:.0f}", ''],
    ]
    for c in levels:
        rb, rn = b['persons_per_s'][c], n['persons_per_s'][c]
        rows.append([f'persons/s, max_concurrency {c}',
                     f"{rb['rate']:.2f} ({rb['ok']}/{rb['of']} OK)",
                     f"{rn['rate']:.2f} ({rn['ok']}/{rn['of']} OK)",
                     f">= 3x: now {rn['rate'] / rb['rate']:.1f}x"])
    rows += [['server prefix-cache hit rate (throughput runs)', b['prefix_cache_hit_rate'],
              n['prefix_cache_hit_rate'], ''],
             ['configure: requests', b['configure_requests'], n['configure_requests'], ''],
             ['configure: seconds', f"{b['configure_s']:.1f}", f"{n['configure_s']:.1f}", '']]
    if ref is not None:
        for fmt in ('png', 'jpeg'):
            for name in USE:
                for key, label in (('scores', 'scores'), ('vad', 'VAD (1-10)')):
                    rows.append([f'max |remote - local| {label}, {name}.jpg, {fmt}',
                                 diff(b['scores'][fmt], ref, name, key),
                                 diff(n['scores'][fmt], ref, name, key),
                                 '< 1e-3' if fmt == 'png' else 'measured'])
    table(f'remote backend, score mode: before ({args.baseline}) vs now, same server '
          f'({what}); {" + ".join(USE)} ({sum(len(PEOPLE_N[u]) for u in USE)} persons), '
          f'x{args.rounds}; now with '
          '--processor (the model folder)', ['', 'before', 'now', 'target'], rows)
    report.update(got)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == '__main__':
    sys.exit(main())
