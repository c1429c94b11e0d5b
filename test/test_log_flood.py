"""Log floods (issue 18, item 3): throttle keys come from a fixed set; text a client chose only
appears in counted, throttled lines. Any peer can call ``change_state`` with endless distinct
labels: the log and the node's dictionaries stay bounded."""
import time

import pytest
from lifecycle_msgs.srv import ChangeState

from emotion_perception.ros.diagnostics import NodeStats
from emotion_perception.ros.node_utils import KindLogger
from emotion_perception.testing.node_rig import EmotionRig
from emotion_perception.testing.ros_harness import RosHarness

pytestmark = pytest.mark.ros


@pytest.fixture
def harness():
    with RosHarness() as h:
        yield h


def test_a_thousand_distinct_bogus_labels_give_bounded_log_lines_and_memory(harness, capfd):
    rig = EmotionRig(harness, name='flooded_node')
    node = rig.node
    client = harness.node.create_client(ChangeState, '/flooded_node/change_state')
    assert client.wait_for_service(timeout_sec=10)
    counters_before = len(node.stats.snapshot())
    capfd.readouterr()
    t0 = time.monotonic()
    answers = []
    for batch in range(100):  # 1,000 requests, 10 in flight at a time
        futures = []
        for i in range(10):
            req = ChangeState.Request()
            req.transition.label = f'bogus-{batch * 10 + i}-' + 'x' * (batch % 7) * 100
            futures.append(client.call_async(req))
        assert harness.wait_for(lambda: all(f.done() for f in futures), 30)
        answers += [f.result().success for f in futures]
    elapsed = time.monotonic() - t0
    err = capfd.readouterr().err
    assert answers == [False] * 1000
    assert node.stats.snapshot()['lifecycle.invalid_transitions'] == 1000
    lines = [line for line in err.splitlines() if 'refused lifecycle transition' in line]
    # one key ('invalid_transition.active.unknown'): at most one line per 5 s throttle period
    assert 1 <= len(lines) <= 2 + elapsed / 5, (len(lines), elapsed)
    assert "refused lifecycle transition 'bogus-0-'" in lines[0]
    assert all(len(line) < 600 for line in lines)  # a long label is cut (64 characters)
    assert len(node.kind_log._last) <= 3 and len(node.kind_log._suppressed) <= 3
    assert len(node.stats.snapshot()) <= counters_before + 1
    if len(lines) == 1:
        assert node.kind_log._suppressed['invalid_transition.active.unknown'] == 999
    assert node.lifecycle_state == 'active'


def test_kind_logger_and_counters_stay_bounded_whatever_the_keys():
    """The safety nets behind the fixed keys: beyond MAX_KINDS throttle keys (MAX_NAMES
    counters), new ones share one key."""
    lines = []

    class Recorder:
        def warning(self, text):
            lines.append(text)
        error = warning
    log = KindLogger(Recorder(), period_s=3600)
    for i in range(5000):
        log.warn(f'kind{i}', 'm')
    assert len(log._last) == KindLogger.MAX_KINDS + 1
    assert len(lines) == KindLogger.MAX_KINDS + 1
    assert lines[-1] == f'[other_kinds] (kind{KindLogger.MAX_KINDS}) m'
    stats = NodeStats()
    for i in range(5000):
        stats.count(f'errors.c{i}')
    counts = stats.snapshot()
    assert len(counts) == NodeStats.MAX_NAMES + 1
    assert counts['counters_overflow'] == 5000 - NodeStats.MAX_NAMES
