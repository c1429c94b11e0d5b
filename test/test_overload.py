"""Overload in reduced form (issue 5): bench/bench_overload.py for 8 s instead of 60 s.

A 30 Hz camera with 5 people and a 300 ms/call backend: every detections array answered
exactly once, stale frames dropped on purpose, the drop counters of the node and of a real
/diagnostics message equal what the subscriber saw, RSS growth bounded (generously). No timing
asserts.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ros]

REPO = Path(__file__).resolve().parents[1]


def test_overload_invariants_hold(tmp_path):
    out_json = tmp_path / 'overload.json'
    proc = subprocess.run(
        [sys.executable, str(REPO / 'bench' / 'bench_overload.py'), '--seconds', '8',
         '--max-rss-growth-mb', '100', '--json', str(out_json)],
        cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f'{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    assert '### Emotion node under overload' in proc.stdout
    r = json.loads(out_json.read_text())
    assert r['invariants_failed'] == []
    assert r['frames_sent'] == 240 == r['arrays_received']
    assert r['arrays_unanswered'] == 0 and r['arrays_answered_twice'] == 0
    assert r['drops_in_node'] == r['drops_seen_by_subscriber'] == r['drops_in_diagnostics_msg']
    assert r['drops_in_node']['drops.stale_frame'] > 0
    assert set(r['persons_by_status']) <= {'ok', 'cached', 'skipped'}
    assert sum(r['persons_by_status'].values()) == 5 * r['frames_sent']
    assert r['peak_image_cache'] <= 30 and r['peak_pending'] <= 100 and r['peak_track_cache'] <= 5
    assert r['rss_mb_end'] - r['rss_mb_start'] < 100
