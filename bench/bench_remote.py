#!/usr/bin/env python3
"""The remote backend against a real vLLM server: this tree (and, with ``--baseline COMMIT``,
that commit for comparison), one table.

Each version runs against the SAME server through a counting HTTP proxy on loopback
(``testing.fault_proxy``), in its own process (a baseline's package is taken from ``git archive
COMMIT``: that needs the repository's history; without ``--baseline`` nothing does), on real
photographs (zidane.jpg: 2 persons at both edges of a 1280x720 frame; bus.jpg: 4 persons,
portrait), score mode:

* per person: HTTP requests, image uploads, bytes uploaded (what the proxy saw);
* persons/s at each ``max_concurrency``; the server's prefix-cache hit rate over those runs
  (vLLM's ``/metrics``);
* configure: requests and seconds;
* the max difference of the category scores and of VAD from the local ``vlm`` backend on the
  same model folder, PNG and JPEG (now: with ``processor`` = the model folder);
* a Wi-Fi drop (the proxy holds every request open without answering for ``--silent-s``, the
  backend's default timeouts): how long the frame in flight takes, how long each frame during
  the outage takes, and how soon answers resume once the link is back.

Without ``--url`` it starts a server here (``.venv-vllm``, ``make vllm``) on a tiny random
LLaVA-1.5 (CLIP processor with a centre crop, real Llama-2 tokenizer): CPU numbers show the
protocol's costs, not a GPU's speed. With ``--url`` (and ``--model-dir`` for the score
comparison) it measures any server::

    .venv/bin/python bench/bench_remote.py [--url http://gpu:8000/v1 --model-dir DIR]
        [--api-key-env NAME] [--baseline c39d99c] [--concurrency 1,4,16] [--rounds 1]
        [--photos zidane,bus] [--silent-s 15] [--json out]
"""
from __future__ import annotations

import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
# the loopback proxy and server are reached directly, whatever proxy this machine sets
for _var in ('NO_PROXY', 'no_proxy'):
    os.environ[_var] = ','.join(filter(None, [os.environ.get(_var, ''), '127.0.0.1',
                                              'localhost']))

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PEOPLE_N = {'zidane': (0, 1), 'bus': (0, 1, 2, 3)}
PHOTOS = ('zidane', 'bus')
USE = list(PHOTOS)
#: the client before the remote backend's rework (README "GPU server"; ``--baseline``)
BEFORE_REWORK = 'c39d99c'


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
        if args.silent_s > 0:
            out['silent'] = silent_link(fp, create_backend, Status, args, extra, shots[0])
    Path(args.worker).write_text(json.dumps(out))
    return 0


def silent_link(fp, create_backend, Status, args: argparse.Namespace, extra: dict,
                shot: tuple) -> dict:
    """A Wi-Fi drop: the link goes silent as a frame's first request leaves, for
    ``args.silent_s``; the backend's default timeouts (as a user runs it)."""
    _, img, boxes = shot
    with fp.FaultProxy(args.url) as proxy:
        b = create_backend('remote', {'url': proxy.url, 'model': args.model,
                                      'api_key_env': args.api_key_env, **extra})
        b.load()
        b.predict(img, boxes)  # warm
        got: dict = {}

        def frame() -> None:
            t0 = time.monotonic()
            got['results'] = b.predict(img, boxes)
            got['s'] = time.monotonic() - t0
        proxy.silent_when = lambda path, body: path.startswith('/v1/chat')
        worker = threading.Thread(target=frame, daemon=True)
        worker.start()
        worker.join(args.silent_s)
        during = []
        while not worker.is_alive() and time.monotonic() - proxy.silenced_at < args.silent_s:
            t0 = time.monotonic()
            b.predict(img, boxes)
            during.append(time.monotonic() - t0)
            time.sleep(max(0.0, 0.2 - during[-1]))  # a 5 Hz camera
        while time.monotonic() - proxy.silenced_at < args.silent_s:
            time.sleep(0.05)
        proxy.silent = False
        back = time.monotonic()
        worker.join(600)
        while True:
            if all(r.status == Status.OK for r in b.predict(img, boxes)):
                break
            time.sleep(0.2)
        out = {'in_flight_s': got.get('s', float('nan')),
               'in_flight': sorted({r.reason.split(' (')[0][:60] or 'OK'
                                    for r in got.get('results', [])}),
               'during_s': max(during) if during else None, 'during_frames': len(during),
               'resumed_s': time.monotonic() - back}
        b.unload()
    return out


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
           '--api-key-env', args.api_key_env, '--silent-s', str(args.silent_s),
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
    ap.add_argument('--baseline', default='', help='a git commit to compare with (needs the '
                    f'history; {BEFORE_REWORK}: the client before the rework); default: none')
    ap.add_argument('--silent-s', type=float, default=15.0, help='Wi-Fi drop: how long the '
                    'link stays silent (0 = skip)')
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
    trees = {'now': REPO}
    if args.baseline:
        trees = {f'{args.baseline}': baseline_tree(args.baseline), **trees}
    report: dict[str, Any] = {'machine': platform.platform(), 'model': what,
                              'baseline': args.baseline or None}
    try:
        ref = local_scores(model_dir) if model_dir else None
        got = {name: run_version(tree, args, url, model_dir) for name, tree in trees.items()}
    finally:
        if server is not None:
            server.stop()
    cols = list(got)
    vs = f'{args.baseline} vs this tree' if args.baseline else 'this tree'
    table(f'remote backend, score mode: {vs}, same server ({what}); {" + ".join(USE)} '
          f'({sum(len(PEOPLE_N[u]) for u in USE)} persons), x{args.rounds}; this tree with '
          '--processor (the model folder)', ['', *cols, 'target'],
          rows(got, ref, args.concurrency.split(',')))
    report.update(got)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


def baseline_tree(commit: str) -> Path:
    """The package at ``commit`` (``git archive``: needs the repository's history)."""
    base = Path(tempfile.mkdtemp(prefix='bench_remote_baseline_'))
    archive = subprocess.run(['git', '-C', str(REPO), 'archive', commit, 'emotion_perception'],
                             capture_output=True, check=True).stdout
    subprocess.run(['tar', '-x', '-C', str(base)], input=archive, check=True)
    return base


def rows(got: dict[str, dict], ref: dict | None, levels: list[str]) -> list[list[Any]]:
    """The table's rows: one column per version (``got``), then the target."""
    vs = list(got.values())

    def row(label: str, cell: Any, target: str = '') -> list[Any]:
        return [label, *[cell(v) for v in vs], target]
    out = [row('HTTP requests per person', lambda v: f"{v['per_person']['requests']:.1f}",
               '<= 3'),
           row('image uploads per person', lambda v: f"{v['per_person']['uploads']:.1f}", '1'),
           row('KiB uploaded per person (png)',
               lambda v: f"{v['per_person']['bytes'] / 1024:.0f}", '<= 512'),
           row('KiB uploaded per person (jpeg)',
               lambda v: f"{v['per_person']['bytes_jpeg'] / 1024:.0f}")]
    for c in levels:
        out.append(row(f'persons/s, max_concurrency {c}', lambda v: (
            f"{v['persons_per_s'][c]['rate']:.2f} ({v['persons_per_s'][c]['ok']}/"
            f"{v['persons_per_s'][c]['of']} OK)")))
    out += [row('server prefix-cache hit rate (throughput runs)',
                lambda v: v['prefix_cache_hit_rate']),
            row('configure: requests', lambda v: v['configure_requests']),
            row('configure: seconds', lambda v: f"{v['configure_s']:.1f}")]
    if all('silent' in v for v in vs):
        out += [row('link silent: the frame in flight answered after (s)',
                    lambda v: f"{v['silent']['in_flight_s']:.1f} "
                              f"({'; '.join(v['silent']['in_flight'])[:70]})", '<= deadline_s'),
                row('link silent: each frame during the outage (s, most)',
                    lambda v: '-' if v['silent']['during_s'] is None else
                    f"{v['silent']['during_s']:.2f} ({v['silent']['during_frames']} frames)",
                    'at once'),
                row('link back: answers again after (s)',
                    lambda v: f"{v['silent']['resumed_s']:.1f}", 'a few')]
    if ref is not None:
        for fmt in ('png', 'jpeg'):
            for name in USE:
                for key, label in (('scores', 'scores'), ('vad', 'VAD (1-10)')):
                    out.append(row(f'max |remote - local| {label}, {name}.jpg, {fmt}',
                                   lambda v: diff(v['scores'][fmt], ref, name, key),
                                   '< 1e-3' if fmt == 'png' else 'measured'))
    return out


if __name__ == '__main__':
    sys.exit(main())
