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
TABLES = ('### 0a. Person detector per runtime', '### 0b. Default pipeline end to end',
          '### 1. Detector throughput', '### 1b. PersonDetectorNode open loop',
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
    assert {'machine', 'detector', 'latency_inprocess', 'latency_processes', 'rss',
            'runtimes'} <= set(report)
    runtimes = report['runtimes']
    assert 'torch' in runtimes['detectors'] and len(runtimes['end_to_end']) == 4
    for name, row in runtimes['detectors'].items():  # boxes as torch's (float32 runtimes)
        if 'half' not in name:
            assert all(x >= 0.95 for v in row['min_iou'].values() for x in v), row['min_iou']


@pytest.mark.parametrize('family', ['llava', 'idefics3'])
def test_bench_vlm_runs_every_table(tmp_path, family):
    """bench_vlm on a tiny model of a family with its real tokenizer: every table printed, the
    tree agrees with the per-question re-encoding, the KV cache stays within the budget."""
    from emotion_perception.testing.tiny_models import missing_reason
    if missing_reason(family):
        pytest.skip(missing_reason(family))
    out = tmp_path / 'bench.json'
    proc = subprocess.run(
        [sys.executable, str(REPO / 'bench' / 'bench_vlm.py'), '--family', family, '--frames',
         '1', '--persons', '1,2', '--new-tokens', '4', '--hidden', '32', '--layers', '2',
         '--device', 'cpu', '--json', str(out)],
        cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS='2'),
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for title in ('### 1. score vs generate', '### 2. question tree vs re-encoding',
                  '### 3. persons of one frame', '### 4. KV cache per person', '### 5. memory'):
        assert title in proc.stdout
    report = json.loads(out.read_text())
    assert report['naive_max_abs_diff'] < 1e-4
    assert report['kv_over_budget'] <= 1.1
    assert [b['persons'] for b in report['batching']] == [1, 2]


def test_bench_vlm_quantization_table_on_a_tiny_family(tmp_path):
    """bench_vlm --quantization at --config tiny: one row per option, the library that did it,
    none differs from itself by 0 and every quantized option changes the scores."""
    from emotion_perception.testing.tiny_models import missing_reason
    if missing_reason('llava'):
        pytest.skip(missing_reason('llava'))
    out = tmp_path / 'quant.json'
    proc = subprocess.run(
        [sys.executable, str(REPO / 'bench' / 'bench_vlm.py'), '--quantization',
         'none,int8,nf4,int4', '--families', 'llava', '--hidden', '64', '--layers', '2',
         '--frames', '1', '--json', str(out)],
        cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS='2'),
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert '| family | option | library |' in proc.stdout
    rows = {r['quantization']: r for r in json.loads(out.read_text())}
    assert [rows[o]['library'] for o in ('int8', 'nf4', 'int4')] == [
        'torchao', 'bitsandbytes', 'torchao']
    assert rows['none']['score_diff'] == 0.0
    assert all(rows[o]['score_diff'] > 0 for o in ('int8', 'nf4', 'int4'))
