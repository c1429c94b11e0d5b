"""core.heap: the free pages that frame-sized buffers leave in glibc's heap arenas go back to
the system (the raw-image RSS creep of issue 25, item 0; the slope of the node process itself
is measured by test_soak / bench_soak)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from emotion_perception.core.heap import trim_periodically

#: in a fresh interpreter: free one 16 MiB buffer (glibc's dynamic mmap threshold rises to it),
#: make 60 frame-sized (3 MiB) buffers, which now come from the heap, free all but the last (it
#: keeps the heap's top in use); report the RSS (MiB) after the frees and after ``wait_s``
PROBE = r'''
import json, sys, time
import numpy as np
from emotion_perception.core import heap
def rss():
    with open('/proc/self/status') as f:
        return next(int(l.split()[1]) / 1024 for l in f if l.startswith('VmRSS:'))
mode, wait_s = sys.argv[1], float(sys.argv[2])
stop = heap.trim_periodically({'EP_MALLOC_TRIM_PERIOD_S': '0.2'}) if mode == 'thread' else None
big = np.ones(16 << 20, np.uint8); del big
frames = [np.ones(3 << 20, np.uint8) for _ in range(60)]
last = frames[-1]; del frames
freed = rss()
if mode == 'now':
    heap.trim_now()
time.sleep(wait_s)
print(json.dumps({'freed': freed, 'after': rss(), 'thread': stop is not None}))
'''


def _probe(mode: str, wait_s: float = 0.0) -> dict:
    out = subprocess.run([sys.executable, '-c', PROBE, mode, str(wait_s)], capture_output=True,
                         text=True, check=True, env={k: v for k, v in os.environ.items()
                                                     if 'MALLOC' not in k}).stdout
    return json.loads(out)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc only')
def test_free_frame_buffers_stay_resident_until_trimmed():
    left = _probe('none')
    assert left['after'] - left['freed'] > -20  # ~180 MB of free holes stay resident
    trimmed = _probe('now')
    assert trimmed['freed'] - trimmed['after'] > 120  # given back
    periodic = _probe('thread', wait_s=1.0)
    assert periodic['thread'] and periodic['freed'] - periodic['after'] > 120


def test_the_off_switch_starts_no_thread():
    assert trim_periodically({'EP_MALLOC_TRIM_PERIOD_S': '0'}) is None
