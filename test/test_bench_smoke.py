"""Smoke run of bench/bench_pipeline.py --quick: it runs to the end and prints every table.

No timing asserts: the numbers of a 2-frame run on a shared machine mean nothing.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ros]

REPO = Path(__file__).resolve().parents[1]
TABLES = ('### 1. Detector throughput', '### 1b. PersonDetectorNode open loop',
          '### 2. Image-to-emotions latency, in-process nodes',
          '### 2b. Image-to-emotions latency, nodes as separate processes',
          '### 3. Memory (RSS, MB)')


def test_bench_pipeline_quick_prints_all_tables(tmp_path):
    out_json = tmp_path / 'bench.json'
    env = dict(os.environ, HF_HUB_OFFLINE='1', YOLO_OFFLINE='1',
               ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    proc = subprocess.run(
        [sys.executable, str(REPO / 'bench' / 'bench_pipeline.py'), '--quick', '--device', 'cpu',
         '--json', str(out_json)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f'exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    for title in TABLES:
        assert title in proc.stdout, f'{title!r} not printed:\n{proc.stdout[-3000:]}'
    assert '| path | frames |' in proc.stdout  # Markdown table headers
    report = json.loads(out_json.read_text())
    assert {'machine', 'detector', 'latency_inprocess', 'latency_processes', 'rss'} <= set(report)
