#!/usr/bin/env python3
"""Identity through occlusion: how often a person keeps their track id when hidden, how often a
different person in the same place inherits one, and the identity check that catches the latter.

Sequences of ``emotion_perception.testing.sequences`` (real photos that ship in packages, camera
noise on every frame: shake, zoom, brightness, sensor noise, JPEG at mixed qualities) go through
the real ``PersonDetector`` (core/detector.py, as the person_detector node runs it, with the
settings of config/person_detector.yaml) once per tracker configuration; the ids are scored
against the ground truth by ``emotion_perception.testing.identity_eval``:

1. Id survival: an occluder passes in front of each person, hiding them for 0.5 / 1 / 2 s,
   with and without a step sideways while hidden (``--shift``), at 10 and 30 fps: the person's
   id over their last second of clear view before equals the one over their first second after.
2. False inheritance: a different person takes a person's place (a cut, as when one photo
   replaces another in ``make demo``, or behind the passing occluder): the newcomer's id is the
   previous person's.
3. The identity check (``core.identity.IdentityGuard``) on the detections of the configured
   tracker: id handovers (the same track id on another person: swaps the tracker followed, and
   its mix-ups) flagged within 1.5 s, and flags on the same person (false, per observation).

Counts, not timings (the run time is printed for planning only). Run alone or through
/work/helpers/bin/ep-time; a full run takes 10-30 minutes on 2 shared CPU cores.

    .venv/bin/python bench/bench_tracking.py [--fps 10 30] [--hide 0.5 1 2] [--shift 0 0.6]
        [--variant 'name:tracker=botsort.yaml,with_reid=true,proximity_thresh=0.2'] [--quick]
        [--json out.json]
"""
from __future__ import annotations

import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('YOLO_OFFLINE', '1')

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotion_perception.core.detector import (ULTRALYTICS_TRACKING,  # noqa: E402
                                              DetectorOptions, PersonDetector)
from emotion_perception.core.identity import IdentityGuard  # noqa: E402
from emotion_perception.testing import sequences as S  # noqa: E402
from emotion_perception.testing.identity_eval import (GuardRun, event_outcomes,  # noqa: E402
                                                      handovers, run_detectors, score_guard,
                                                      sequence_owners)
from emotion_perception.tools.config import load_pipeline_config  # noqa: E402

#: A swap counts as caught when the check flags the inheriting id within this after the swap.
CATCH_WITHIN_S = 1.5


def tracker_configs(base: DetectorOptions, variants: list[str]) -> dict[str, DetectorOptions]:
    """The columns: ByteTrack, BoT-SORT + ReID with ultralytics' thresholds, the configured
    default (config/person_detector.yaml) and ``--variant`` ones; all with the configured
    track_buffer and detector settings. Duplicates are dropped."""
    ultra = dataclasses.replace(ULTRALYTICS_TRACKING, track_buffer=base.tracking.track_buffer)
    configs = {
        'ByteTrack': dataclasses.replace(base, tracker='bytetrack.yaml', tracking=ultra),
        'BoT-SORT+ReID': dataclasses.replace(base, tracker='botsort.yaml', tracking=dataclasses
                                             .replace(ultra, with_reid=True)),
        'configured': base,
    }
    for spec in variants:
        name, _, settings = spec.partition(':')
        tracking, top = {}, {}
        for item in filter(None, settings.split(',')):
            key, _, value = item.partition('=')
            value = yaml_value(value)
            (top if key == 'tracker' else tracking)[key] = value
        configs[name] = dataclasses.replace(base, **top, tracking=dataclasses.replace(
            base.tracking, **tracking))
    out: dict[str, DetectorOptions] = {}
    for name, options in configs.items():
        if options not in out.values():
            out[name] = options
    return out


def yaml_value(text: str):
    import yaml
    return yaml.safe_load(text)


def describe(options: DetectorOptions) -> str:
    t = options.tracking
    if options.tracker == 'bytetrack.yaml':
        return f'ByteTrack, track_buffer {t.track_buffer}'
    reid = (f'ReID proximity {t.proximity_thresh:g} appearance {t.appearance_thresh:g}'
            if t.with_reid else 'no ReID')
    return f'BoT-SORT, track_buffer {t.track_buffer}, {reid}, gmc {t.gmc_method}'


def load_detectors(configs: dict[str, DetectorOptions]) -> dict[str, PersonDetector]:
    out = {}
    for name, options in configs.items():
        out[name] = PersonDetector(options)
        out[name].load()
    return out


def reset(detectors: dict[str, PersonDetector]) -> None:
    """A new sequence is a new video: forget every track (ids keep counting up)."""
    for det in detectors.values():
        det.reset_tracker()


def run_sequence(seq: S.Sequence, detectors: dict[str, PersonDetector], guard: GuardRun | None):
    """Per detector: the outcomes of the 'hidden' and 'swap' events, and the number of times an
    id passed from one person to another (``handovers``); the guard is fed on the way."""
    reset(detectors)
    if guard is not None:
        guard.guard.clear()
    ids = run_detectors(seq, {n: d.detect for n, d in detectors.items()}, on_frame=guard)
    return ({name: event_outcomes(seq, per_frame) for name, per_frame in ids.items()},
            {name: len(handovers(sequence_owners(seq, per_frame)))
             for name, per_frame in ids.items()})


def survival_table(args, detectors, guard_name, guard_scores) -> dict:
    """Table 1: per fps, hide and shift, kept / events per detector."""
    rows = {}
    for fps in args.fps:
        for hide in args.hide:
            for shift in args.shift:
                seq = S.occlusion_sequence(fps=fps, hide_s=hide, shift=shift, seed=args.seed,
                                           passes=args.passes)
                guard = GuardRun(IdentityGuard(), guard_name)
                outcomes, passed = run_sequence(seq, detectors, guard)
                rows[(fps, hide, shift)] = {n: (sum(o.same_id for o in out), len(out), passed[n])
                                            for n, out in outcomes.items()}
                guard_scores['occlusions'].append(score_guard(guard, CATCH_WITHIN_S))
                print(f'  {seq.name}: {len(seq)} frames, kept '
                      f'{ {n: f"{c[0]}/{c[1]}" for n, c in rows[(fps, hide, shift)].items()} }',
                      file=sys.stderr)
    return rows


def inheritance_table(args, detectors, guard_name, guard_scores) -> dict:
    """Table 2: per fps and swap mode, inherited / swaps per detector."""
    rows = {}
    pairs = S.SWAPS[:2] if args.quick else S.SWAPS
    for fps in args.fps:
        for mode in ('cut', 'occluded'):
            counts = {n: [0, 0, 0] for n in detectors}
            for k in range(0, len(pairs), 2):
                seq = S.swap_sequence(fps=fps, pairs=pairs[k:k + 2], mode=mode, seed=args.seed)
                guard = GuardRun(IdentityGuard(), guard_name)
                outcomes, passed = run_sequence(seq, detectors, guard)
                for name, out in outcomes.items():
                    counts[name][0] += sum(o.same_id for o in out)
                    counts[name][1] += len(out)
                    counts[name][2] += passed[name]
                guard_scores['swaps'].append(score_guard(guard, CATCH_WITHIN_S))
                print(f'  {seq.name}: {len(seq)} frames', file=sys.stderr)
            rows[(fps, mode)] = {n: tuple(c) for n, c in counts.items()}
    return rows


def still_scores(args, detector: PersonDetector, guard_name: str, guard_scores) -> None:
    """The check on people who only stand there (every flag is false)."""
    groups = [('carlo_ancelotti', 'zinedine_zidane', 'man_in_beige_coat'),
              ('man_in_black_coat', 'eileen_collins', 'grace_hopper')]
    for fps in args.fps:
        for people in groups[:1] if args.quick else groups:
            seq = S.still_sequence(fps=fps, duration_s=args.still_s, people=people,
                                   seed=args.seed)
            guard = GuardRun(IdentityGuard(), guard_name)
            run_sequence(seq, {guard_name: detector}, guard)
            guard_scores['still'].append(score_guard(guard, CATCH_WITHIN_S))


def _frac(kept: int, total: int, *_) -> str:
    return f'{kept}/{total}' if total else '-'


def _passed(cells: list, name: str) -> int:
    return sum(c[name][2] for c in cells)


def print_tables(configs, survival, inheritance, guard_scores, guard_name) -> None:
    names = list(configs)
    print('\nTracker configurations (detector settings of config/person_detector.yaml):')
    for name, options in configs.items():
        print(f'- {name}: {describe(options)}')
    print('\n### 1. Id survival through occlusion (same id before and after / events)\n')
    print('| fps | hidden | shift | ' + ' | '.join(names) + ' |')
    print('|---|---|---|' + '---|' * len(names))
    for (fps, hide, shift), cells in survival.items():
        print(f'| {fps:g} | {hide:g} s | {shift:g} | '
              + ' | '.join(_frac(*cells[n]) for n in names) + ' |')
    for fps in sorted({k[0] for k in survival}):
        total = {n: [sum(c[n][i] for k, c in survival.items() if k[0] == fps) for i in (0, 1)]
                 for n in names}
        print(f'| {fps:g} | all | all | ' + ' | '.join(_frac(*total[n]) for n in names) + ' |')
    print('| | id handed to the other person | | ' + ' | '.join(
        str(_passed(list(survival.values()), n)) for n in names) + ' |')
    if inheritance:
        print('\n### 2. False inheritance: a different person in the same place gets the '
              "previous person's id (inherited / swaps)\n")
        print('| fps | swap | ' + ' | '.join(names) + ' |')
        print('|---|---|' + '---|' * len(names))
        for (fps, mode), cells in inheritance.items():
            print(f'| {fps:g} | {mode} | ' + ' | '.join(_frac(*cells[n]) for n in names) + ' |')
        print('| | id handed from one person to another | ' + ' | '.join(
            str(_passed(list(inheritance.values()), n)) for n in names) + ' |')
    print(f'\n### 3. Identity check (core.identity.IdentityGuard, defaults) on the '
          f"'{guard_name}' tracker's detections\n")
    print('An id handover: a track id on one person, then on another (a swap the tracker '
          'followed, or a mix-up); a false flag: a new identity flagged on the same person.\n')
    print('| sequences | observations | flags | false flags | false-flag rate | id handovers | '
          f'flagged within {CATCH_WITHIN_S:g} s |')
    print('|---|---|---|---|---|---|---|')
    rows = [(k, v) for k, v in guard_scores.items() if v]
    rows += [('all', [g for v in guard_scores.values() for g in v])]
    for kind, scores in rows:
        obs, flags, false, hand, caught = (sum(getattr(g, k) for g in scores) for k in (
            'observations', 'flags', 'false_flags', 'handovers', 'caught'))
        print(f'| {kind} | {obs} | {flags} | {false} | {false / max(obs, 1):.2%} | {hand} | '
              f'{caught} ({caught / max(hand, 1):.0%}) |')
    every = [g for v in guard_scores.values() for g in v]
    for name, key in (('true flags', 'true_distances'), ('false flags', 'false_distances')):
        values = sorted(d for g in every for d in getattr(g, key))
        if values:
            print(f'\nColour distance at the {name}: min {values[0]:.3f}, median '
                  f'{values[len(values) // 2]:.3f}, max {values[-1]:.3f} (threshold '
                  f'{IdentityGuard().options.threshold:g})')


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--fps', type=float, nargs='+', default=[10.0, 30.0])
    p.add_argument('--hide', type=float, nargs='+', default=[0.5, 1.0, 2.0],
                   help='seconds each person is hidden')
    p.add_argument('--shift', type=float, nargs='+', default=[0.0, 0.6],
                   help='sideways step while hidden, in box widths')
    p.add_argument('--passes', type=int, default=2, help='occluder passes per sequence')
    p.add_argument('--still-s', type=float, default=10.0, help='length of the still sequences')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', default='cpu')
    p.add_argument('--variant', action='append', default=[],
                   help="another column: 'name:tracker=botsort.yaml,with_reid=true,...' "
                        '(tracking.* names without the prefix)')
    p.add_argument('--only', nargs='+', help='run only these columns (names)')
    p.add_argument('--quick', action='store_true',
                   help='10 fps, 1 s hidden, one pass, two swaps per mode: a smoke run')
    p.add_argument('--skip', nargs='*', default=[], choices=('occlusions', 'swaps', 'still'),
                   help='leave out the occlusion (table 1), swap (table 2) or still sequences')
    p.add_argument('--json', type=Path, help='also write the tables as JSON')
    args = p.parse_args(argv)
    if args.quick:
        args.fps, args.hide, args.passes, args.still_s = [10.0], [1.0], 1, 3.0
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.monotonic()
    base = dataclasses.replace(load_pipeline_config().detector, device=args.device)
    configs = tracker_configs(base, args.variant)
    if args.only:
        configs = {n: o for n, o in configs.items() if n in args.only}
    detectors = load_detectors(configs)
    guard_name = next((n for n, o in configs.items() if o == base), next(iter(configs)))
    guard_scores = {'occlusions': [], 'swaps': [], 'still': []}
    survival = ({} if 'occlusions' in args.skip
                else survival_table(args, detectors, guard_name, guard_scores))
    inheritance = ({} if 'swaps' in args.skip
                   else inheritance_table(args, detectors, guard_name, guard_scores))
    if 'still' not in args.skip:
        still_scores(args, detectors[guard_name], guard_name, guard_scores)
    print_tables(configs, survival, inheritance, guard_scores, guard_name)
    print(f'\n(run time {time.monotonic() - t0:.0f} s)')
    if args.json:
        args.json.write_text(json.dumps({
            'configs': {n: describe(o) for n, o in configs.items()},
            'survival': [{'fps': k[0], 'hide_s': k[1], 'shift': k[2], **{
                n: list(v) for n, v in cells.items()}} for k, cells in survival.items()],
            'inheritance': [{'fps': k[0], 'mode': k[1], **{n: list(v) for n, v in c.items()}}
                            for k, c in inheritance.items()],
            'guard': {k: [dataclasses.asdict(g) for g in v] for k, v in guard_scores.items()},
        }, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
