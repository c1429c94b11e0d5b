#!/usr/bin/env python3
"""Soak of the emotion node process (issue 25, item 0): people coming and going for a long
time, the node's memory over time.

The four configurations (raw / compressed images, with / without ``rep155.publish``) run at
once, each in its own ROS domain: the node process with the project's config/emotion_node.yaml
(face baseline), a camera + tracker peer process at ``--hz`` (zidane.jpg, 1280x720, two
people whose track ids change every ``--id-period`` seconds: thousands of ids), the node's RSS
sampled from /proc every 2 s (``emotion_perception.testing.soak``). Printed per configuration:
the node alive at the end, detections arrays sent / answered exactly once / not answered,
track ids used, RSS after the warm-up and at the end, and the RSS slope after the warm-up
(MiB per minute: median of the second half minus the first). Exit code 1 when a node died, an array was not answered exactly
once, or a slope is above ``--max-slope``.

    .venv/bin/python bench/bench_soak.py                      # 30 min (make bench)
    .venv/bin/python bench/bench_soak.py --minutes 5 --json out/soak.json
"""
from __future__ import annotations

import os
import random

os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('ROS_DOMAIN_ID', str(random.SystemRandom().randint(10, 200)))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('YOLO_OFFLINE', '1')

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

from emotion_perception.testing import ros_interfaces  # noqa: E402
from emotion_perception.testing.soak import CONFIGS, run_soak  # noqa: E402

COLUMNS = ('config', 'alive', 'sent', 'answered_once', 'unanswered', 'ids',
           'rss_after_warmup_mib', 'rss_end_mib', 'rss_max_mib', 'slope_mib_per_min')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--minutes', type=float, default=30.0, help='length of the run')
    parser.add_argument('--hz', type=float, default=5.0, help='camera frames per second')
    parser.add_argument('--id-period', type=float, default=0.4,
                        help='seconds between track id changes of each person')
    parser.add_argument('--warmup-minutes', type=float, default=None,
                        help='left out of the slope (default: a third of the run)')
    parser.add_argument('--max-slope', type=float, default=4.0,
                        help='MiB per minute above which a configuration fails')
    parser.add_argument('--json', default='', help='write the results here too')
    args = parser.parse_args(argv)
    missing = ros_interfaces.ensure(('hri_msgs',))
    if missing:
        print(f'cannot run the REP-155 configurations: {missing}')
        return 1
    seconds = args.minutes * 60.0
    warmup = None if args.warmup_minutes is None else args.warmup_minutes * 60.0
    print(f'### Soak: {len(CONFIGS)} node processes at once, {args.minutes:g} min, '
          f'{args.hz:g} Hz, ids change every {args.id_period:g} s', flush=True)
    results = run_soak(CONFIGS, seconds=seconds, hz=args.hz, id_period_s=args.id_period,
                       warmup_s=warmup)
    rows = [r.summary() for r in results]
    print('\n| ' + ' | '.join(COLUMNS) + ' |')
    print('|' + '---|' * len(COLUMNS))
    for row in rows:
        print('| ' + ' | '.join(str(row[c]) for c in COLUMNS) + ' |')
    failed = [r.config.name for r in results
              if not r.alive or r.report.get('answered_once') != r.report.get('sent')
              or not r.slope_mib_per_min < args.max_slope]
    for r in results:
        if not r.alive:
            print(f'\n{r.config.name}: the node process ended ({r.exit_code}):\n{r.log_tail}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'args': vars(args), 'results': rows,
                       'rss': {r.config.name: r.rss for r in results}}, f, indent=1)
    print(f'\n{"FAILED: " + ", ".join(failed) if failed else "ok"}')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
