"""End to end, as on a robot: a bag of real photographs replayed through person_detector and
emotion_node running as separate processes (driven through their lifecycle services), with the
emotions recorded into a bag. This is `make demo` with fewer frames."""
import json
import os
import subprocess
import sys

import pytest

from emotion_perception.tools.bags import iter_bag_messages

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_bag_through_both_node_processes(tmp_path):
    out = tmp_path / 'demo'
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, '-m', 'emotion_perception.tools.cli', 'demo',
                           '--output', str(out), '--repeat', '3', '--rate', '1.0'],
                          env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert '0 unanswered' in proc.stdout
    rows = [json.loads(line) for line in (out / 'emotions.jsonl').read_text().splitlines()]
    astronaut = [r for r in rows if r['image'] == 'astronaut' and r['status'] in ('ok', 'cached')]
    assert astronaut and astronaut[0]['labels'][0] == 'Happiness'
    assert {r['image'] for r in rows} >= {'bus', 'astronaut'}
    # the recorded bag holds one emotions array per detections array, with the same headers
    recorded = list(iter_bag_messages(out / 'recorded_bag'))
    det = [(m.msg.header.stamp.sec, m.msg.header.stamp.nanosec, len(m.msg.detections))
           for m in recorded if m.topic == '/detections']
    emo = [(m.msg.header.stamp.sec, m.msg.header.stamp.nanosec, len(m.msg.persons))
           for m in recorded if m.topic == '/emotions']
    assert det and sorted(det) == sorted(emo)
    assert (out / 'annotated' / 'astronaut.jpg').is_file()
    # how each person felt over time, as the node published it: one state per person of every
    # emotions array, the astronaut's smile as an onset, a timeline per tracked person
    states = [json.loads(line) for line in (out / 'states.jsonl').read_text().splitlines()]
    events = [json.loads(line) for line in (out / 'events.jsonl').read_text().splitlines()]
    assert len(states) == sum(n for _, _, n in emo)
    smiling = {r['track_id'] for r in astronaut if r['track_id']}
    assert [e for e in events if (e['track_id'], e['category'], e['kind']) in
            {(t, 'Happiness', 'onset') for t in smiling}]
    tracked = {s['track_id'] for s in states if s['track_id']}
    assert tracked and {p.stem for p in (out / 'timelines').glob('*.png')} == tracked
