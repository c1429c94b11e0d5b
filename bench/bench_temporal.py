#!/usr/bin/env python3
"""How each person feels over time (issue 22): the per-person state against the raw per-frame
stream, on camera sequences built from the real photos, through the real pipeline.

Sequences of ``emotion_perception.testing.sequences`` (people cut from the photos that ship in
packages: bus.jpg, zidane.jpg, the astronaut, Grace Hopper; every frame with a few pixels of
shake, slight zoom, brightness / contrast changes, sensor noise and JPEG re-encoding at qualities
drawn from 40-95) go through the project's configuration as ``process`` and the nodes run it
(config/*.yaml via ``tools.config.load_pipeline_config``): ``core.detector.PersonDetector``
with its tracker, ``core.pipeline.EmotionPipeline`` with the face baseline and per-track reuse,
and ``core.state.EmotionStates`` fed each frame's results, image and boxes (its identity check
included), exactly as ``process`` feeds it.

1. Flicker, on people who only stand there (``still``, 10 and 30 fps): per person-minute of
   tracked person, for the raw stream (each result's labels: what ``/emotions`` carries) and
   for the state (``emotion_states``): label changes (a category switching on or off counts
   one) and top-category changes (the highest score's category). Raw frames without an
   answer (SKIPPED: no face found; ERROR) keep the previous frame's labels, so they add no
   changes to the raw stream (the comparison is conservative). Goal: >= 5x fewer label
   changes in the state than raw.
2. Following a real change (``expression``: one person's face replaced half-way by a real face
   of another expression in the same spot): the labels the raw stream settles on after the
   change (on in most fresh results from 0.5 s after it) against those before; the time from
   the change until the state's first changed label switched (on, or off), and until its
   labels have switched on every label that appeared and off every one that went (the raw
   stream's times for reference). Goal: all within 1.5 s at 10 fps.
3. Id survival through occlusion (table 1 of bench/bench_tracking.py, called here:
   ``--tracking-args`` picks what; by default 10 fps, one pass, hidden 1 s, the default
   tracker and ByteTrack; ``--tracking-args ''`` for the full run, false inheritance included,
   which make bench runs just before).

Counts and stamps, not timings (the run time is printed for planning only). About 4 minutes
on 2 shared CPU cores by default; run alone or through /work/helpers/bin/ep-time.

    .venv/bin/python bench/bench_temporal.py [--fps 10 30] [--duration-s 15] [--seeds 0]
        [--param state.half_life_s=1.0 ...] [--variant 'name:state.min_hold_s=1.5,...']
        [--tracking-args '--fps 10 --passes 1'] [--no-tracking] [--json out.json]
"""
from __future__ import annotations

import os
import random

os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_DOMAIN_ID', str(random.SystemRandom().randint(10, 200)))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('YOLO_OFFLINE', '1')

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_tracking  # noqa: E402
from emotion_perception.core.backends import create_backend  # noqa: E402
from emotion_perception.core.categories import EMOTIC_CATEGORIES  # noqa: E402
from emotion_perception.core.detector import PersonDetector  # noqa: E402
from emotion_perception.core.pipeline import EmotionPipeline  # noqa: E402
from emotion_perception.core.state import EmotionStates, StateOptions  # noqa: E402
from emotion_perception.core.types import Status  # noqa: E402
from emotion_perception.testing import sequences as S  # noqa: E402
from emotion_perception.testing.identity_eval import slot_track_ids  # noqa: E402
from emotion_perception.tools.config import load_pipeline_config  # noqa: E402

#: The goals of issue 22.
GOAL_FEWER_CHANGES = 5.0
GOAL_FOLLOW_S = 1.5
#: still sequences: who stands there (two groups: six people)
STILL_GROUPS = (('carlo_ancelotti', 'zinedine_zidane', 'man_in_beige_coat'),
                ('man_in_black_coat', 'eileen_collins', 'grace_hopper'))
#: the labels after a change are read from this long after it
SETTLE_S = 0.5
#: results that answer (fresh or reused); the others keep the previous labels in the raw stream
ANSWERED = (Status.OK, Status.CACHED)


@dataclasses.dataclass
class Track:
    """What one track id showed over a sequence, per frame it was in: stamp, raw labels and
    top category (None: no answer), state labels and top category per state variant."""

    stamps: list = dataclasses.field(default_factory=list)
    raw: list = dataclasses.field(default_factory=list)
    state: dict = dataclasses.field(default_factory=dict)  # variant -> [(labels, top)]


def _top(scores) -> str | None:
    scores = np.asarray(scores, np.float64)
    return EMOTIC_CATEGORIES[int(np.nanargmax(scores))] if np.isfinite(scores).any() else None


class Runner:
    """The configured pipeline (detector + tracker, backend with reuse) and one
    ``EmotionStates`` per state variant, run over sequences."""

    def __init__(self, overrides: dict, variants: dict[str, dict], device: str) -> None:
        cfg = load_pipeline_config(overrides={**overrides, 'backend.device': device},
                                   detector_overrides={'device': device})
        self.config = cfg
        self.detector = PersonDetector(cfg.detector)
        self.detector.load()
        self.backend = create_backend(cfg.backend_name, cfg.backend_options)
        self.backend.load()
        self.pipeline = EmotionPipeline(self.backend, cfg.reuse)
        self.variants = {name: dataclasses.replace(cfg.state, **{
            k.split('.', 1)[1]: v for k, v in params.items()}) for name, params in
            variants.items()}
        for options in self.variants.values():
            options.validate()

    def run(self, seq: S.Sequence):
        """Every frame: detect, evaluate, update each variant's states (image and boxes for
        the identity check). Returns (track id -> ``Track``, per frame slot -> track id)."""
        self.detector.reset_tracker()
        self.pipeline.cache.clear()
        states = {n: EmotionStates.for_backend(o, self.backend) for n, o in self.variants.items()}
        tracks: dict[str, Track] = {}
        slots = []
        for frame in seq.frames():
            dets = self.detector.detect(frame.rgb).detections
            results = self.pipeline.process(frame.rgb, dets, frame.stamp_s).results
            ids, boxes = [d.track_id for d in dets], [d.bbox for d in dets]
            outs = {n: st.update_frame(ids, results, frame.stamp_s, image=frame.rgb,
                                       boxes=boxes) for n, st in states.items()}
            for k, (tid, res) in enumerate(zip(ids, results)):
                if not tid:
                    continue
                track = tracks.setdefault(tid, Track())
                track.stamps.append(frame.stamp_s)
                track.raw.append((list(res.labels), _top(res.scores))
                                 if res.status in ANSWERED else None)
                for name, out in outs.items():
                    s = out.states[k]
                    track.state.setdefault(name, []).append((list(s.labels), _top(s.scores)))
            slots.append(slot_track_ids(frame.truth, dets))
        return tracks, slots


def _changes(series: list) -> tuple[int, int]:
    """(label switches, top-category changes) along one track's per-frame (labels, top);
    None entries (no answer) keep the previous value."""
    labels, tops, last = 0, 0, None
    for item in series:
        if item is None:
            continue
        if last is not None:
            labels += len(set(item[0]) ^ set(last[0]))
            tops += item[1] != last[1] and item[1] is not None and last[1] is not None
        last = item
    return labels, tops


def flicker(tracks: dict[str, Track], fps: float, variants) -> dict:
    """Per stream ('raw' and each variant): label and top-category changes, person-minutes."""
    minutes = sum(len(t.stamps) for t in tracks.values()) / fps / 60.0
    out = {'person_minutes': minutes}
    for name in ('raw', *variants):
        counts = [_changes(t.raw if name == 'raw' else t.state[name]) for t in tracks.values()]
        out[name] = (sum(c[0] for c in counts), sum(c[1] for c in counts))
    return out


def _majority(series: list, stamps: list, t0: float, t1: float) -> set[str]:
    """The labels on in more than half of the answered frames with t0 <= stamp < t1."""
    items = [s for s, t in zip(series, stamps) if s is not None and t0 <= t < t1]
    counts = Counter(label for s in items for label in s[0])
    return {label for label, n in counts.items() if n > len(items) / 2}


def _followed_at(series: list, stamps: list, t_change: float, gone: set, new: set,
                 first: bool = False) -> float | None:
    """Seconds from ``t_change`` until the labels include all of ``new`` and none of ``gone``
    (``first``: until one label of ``new`` is on, or one of ``gone`` off); None: never."""
    for s, t in zip(series, stamps):
        if t < t_change or s is None:
            continue
        on = set(s[0])
        if (new & on or gone - on) if first else (new <= on and not gone & on):
            return t - t_change
    return None


def follow(seq: S.Sequence, tracks: dict[str, Track], slots: list, variants) -> dict:
    """The expression change of ``seq``: labels before / after (raw majority) and the delay
    of the raw stream and of each variant's state (None: never)."""
    event = seq.events[0]
    t_change = event.t0
    # the person's track: the id slot 0 has most often after the change
    after_ids = Counter(s.get(0) for i, s in enumerate(slots) if seq.stamp(i) >= t_change)
    tid = next((t for t, _ in after_ids.most_common() if t), '')
    track = tracks.get(tid)
    if track is None:
        return {'track': tid, 'before': [], 'after': [], 'delays': {}, 'changed': False}
    before = _majority(track.raw, track.stamps, t_change - 3.0, t_change)
    after = _majority(track.raw, track.stamps, t_change + SETTLE_S, seq.duration_s)
    gone, new = before - after, after - before
    if not (gone or new):  # the model saw no change: nothing to follow
        return {'track': tid, 'before': sorted(before), 'after': sorted(after), 'delays': {},
                'changed': False}
    delays = {name: tuple(_followed_at(track.raw if name == 'raw' else track.state[name],
                                       track.stamps, t_change, gone, new, first)
                          for first in (True, False)) for name in ('raw', *variants)}
    return {'track': tid, 'before': sorted(before), 'after': sorted(after), 'delays': delays,
            'changed': True}


def _fmt_s(v) -> str:
    return 'never' if v is None else f'{v:.1f}'


def _fmt_delays(pair) -> str:
    return '-' if pair is None else f'{_fmt_s(pair[0])} / {_fmt_s(pair[1])}'


def print_flicker(rows: dict, variants) -> None:
    print('\n### 1. Flicker on people standing still (changes per person-minute)\n')
    print('| fps | person-minutes | stream | label changes / min | x fewer than raw | '
          'top-category changes / min | x fewer than raw |')
    print('|---|---|---|---|---|---|---|')
    for fps, row in rows.items():
        m = row['person_minutes']
        raw = row['raw']
        for name in ('raw', *variants):
            lab, top = row[name]
            fewer = ('' if name == 'raw' else
                     f'{raw[0] / lab:.1f}' if lab else f'> {raw[0]:d} (none)')
            fewer_top = ('' if name == 'raw' else
                         f'{raw[1] / top:.1f}' if top else f'> {raw[1]:d} (none)')
            print(f'| {fps:g} | {m:.2f} | {"state: " + name if name != "raw" else "raw"} | '
                  f'{lab / m:.1f} | {fewer} | {top / m:.1f} | {fewer_top} |')


def print_follow(rows: list, variants) -> None:
    print('\n### 2. Following a real change of expression (seconds from the change until '
          'the first changed label / all changed labels follow)\n')
    print('| sequence | labels before -> after (raw majority) | raw | '
          + ' | '.join(f'state: {n}' for n in variants) + ' |')
    print('|---|---|---|' + '---|' * len(variants))
    for name, row in rows:
        change = f'{",".join(row["before"]) or "none"} -> {",".join(row["after"]) or "none"}'
        if not row['changed']:
            change += ' (the model saw no change)'
        print(f'| {name} | {change} | {_fmt_delays(row["delays"].get("raw"))} | '
              + ' | '.join(_fmt_delays(row['delays'].get(n)) for n in variants) + ' |')


def describe(runner: Runner) -> None:
    cfg, det = runner.config, runner.detector
    print(f'Pipeline (config/*.yaml): detector {cfg.detector.model} ({det.runtime.runtime}), '
          f'{bench_tracking.describe(cfg.detector)}; backend {runner.backend.name}, reuse '
          f'max_age_s {runner.pipeline.reuse.max_age_s:g}')
    for name, o in runner.variants.items():
        o = o.resolved(runner.backend.state_half_life_s)
        check = f'identity check {o.identity_threshold:g}' if o.identity_check else 'no check'
        print(f'- state {name}: half-life {o.half_life_s:g} s, margin {o.margin:g}, hold '
              f'{o.min_hold_s:g} s, {check}')


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--fps', type=float, nargs='+', default=[10.0, 30.0])
    p.add_argument('--duration-s', type=float, default=12.0, help='length of each sequence')
    p.add_argument('--seeds', type=int, nargs='+', default=[0], help='camera-noise seeds')
    p.add_argument('--follow-fps', type=float, nargs='+', default=[10.0],
                   help='frame rates of the expression-change sequences')
    p.add_argument('--device', default='cpu')
    p.add_argument('--param', action='append', default=[], metavar='KEY=VALUE',
                   help='an emotion node parameter for the whole run (e.g. reuse.max_age_s=0.5)')
    p.add_argument('--variant', action='append', default=[],
                   help="another state column: 'name:state.half_life_s=1,state.min_hold_s=2'")
    p.add_argument('--tracking-args', default='--fps 10 --passes 1 --hide 1 --skip swaps '
                   'still --only ByteTrack configured', help="bench_tracking.py's arguments for "
                   "table 3 ('' = its full run, as make bench runs it before)")
    p.add_argument('--no-tracking', action='store_true', help='leave out table 3')
    p.add_argument('--json', type=Path, help='also write the tables as JSON')
    return p.parse_args(argv)


def _settings(items) -> dict:
    return {k: bench_tracking.yaml_value(v) for k, _, v in (i.partition('=') for i in items)}


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.monotonic()
    variants = {'defaults': {}}
    for spec in args.variant:
        name, _, settings = spec.partition(':')
        variants[name] = _settings(filter(None, settings.split(',')))
    runner = Runner(_settings(args.param), variants, args.device)
    describe(runner)
    still = {}
    for fps in args.fps:
        merged: dict[str, Track] = {}
        for seed in args.seeds:
            for g, people in enumerate(STILL_GROUPS):
                seq = S.still_sequence(fps=fps, duration_s=args.duration_s, people=people,
                                       seed=seed)
                tracks, _ = runner.run(seq)
                merged.update({f'{seed}/{g}/{k}': v for k, v in tracks.items()})
                print(f'  {seq.name}: {len(seq)} frames, {len(tracks)} tracks', file=sys.stderr)
        still[fps] = flicker(merged, fps, variants)
    followed = []
    for fps in args.follow_fps:
        for seed in args.seeds:
            for change in S.EXPRESSION_CHANGES:
                seq = S.expression_sequence(fps=fps, change=change, duration_s=args.duration_s,
                                            seed=seed)
                tracks, slots = runner.run(seq)
                followed.append((seq.name, follow(seq, tracks, slots, variants)))
                print(f'  {seq.name}: {len(seq)} frames', file=sys.stderr)
    print_flicker(still, variants)
    print_follow(followed, variants)
    print(f'\nGoals: >= {GOAL_FEWER_CHANGES:g}x fewer label changes than raw; the state '
          f'follows a real change within {GOAL_FOLLOW_S:g} s at 10 fps.')
    if not args.no_tracking:
        print('\n## Identity through occlusion (bench/bench_tracking.py '
              f'{args.tracking_args})')
        sys.stdout.flush()
        bench_tracking.main(shlex.split(args.tracking_args) + ['--device', args.device])
    print(f'\n(bench_temporal run time {time.monotonic() - t0:.0f} s)')
    if args.json:
        args.json.write_text(json.dumps({'still': {str(k): v for k, v in still.items()},
                                         'follow': dict(followed)}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
