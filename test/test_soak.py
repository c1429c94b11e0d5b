"""The emotion node process as a robot runs it, for minutes, while people come and go (issue
25, item 0): alive, every detections array answered exactly once, memory flat.

Separate processes over DDS (``testing.soak``): the node (``python -m
emotion_perception.nodes.emotion_node``, the project's config/emotion_node.yaml, autostart),
a camera + tracker peer (``testing.detection_peer`` ``stream``: zidane.jpg, 1280x720, two
people whose track ids change every few frames) that accounts for every answer, and the node's
RSS sampled from /proc. Each configuration runs in its own ROS domain.
"""
from __future__ import annotations

import pytest

from emotion_perception.testing import ros_interfaces
from emotion_perception.testing.fake_backends import FakeBackend, spec
from emotion_perception.testing.soak import CONFIGS, SoakConfig, run_soak

pytestmark = pytest.mark.ros
MISSING = ros_interfaces.ensure(('hri_msgs',))
needs_hri = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))

#: the C heap of a node fed raw frames grew by 5-10 MiB/min once its caches were full (issue 25;
#: 6.0 and 9.1 by testing.soak.rss_slope; core.heap trims it now); a growth above this fails.
#: With the trim, two ten-minute runs on this 2-core machine read -3.1 to +2.7 MiB/min (saw-tooth
#: of the trimmed heap; README "Running for hours (soak)")
MAX_SLOPE_MIB_PER_MIN = 4.0


def _check_answered(result) -> None:
    r = result.report
    assert result.alive, (result.config.name, result.exit_code, result.log_tail)
    assert r.get('done') and r['sent'] > 0, (result.config.name, r)
    assert r['answered_once'] == r['sent'], (result.config.name, r, result.log_tail)
    assert r['answered_twice_or_more'] == 0 and r['unanswered'] == 0, r
    for bad in ('Traceback', 'InvalidHandle'):
        assert bad not in result.log_tail, result.log_tail


@needs_hri
def test_per_id_topics_churning_at_camera_rate_leave_the_node_process_running(tmp_path):
    """REP-155 output with new track ids at every frame (30 Hz, two people: 60 per-id
    publishers made and, 2 s later, destroyed every second) for 12 s. The process used to end
    within seconds: ``InvalidHandle`` out of ``executor.spin()`` (a per-id publisher's event
    handler destroyed while the executor built its wait set). The node is also the face source
    (issue 23: MTCNN on every processed frame, per-face roi / cropped / expression publishers
    made and destroyed with the ids): the peer sees face ids come."""
    [result] = run_soak((SoakConfig('raw', True),), seconds=12.0, hz=30.0, id_period_s=1 / 30,
                        node_params={'backend.name': spec(FakeBackend)}, folder=str(tmp_path))
    _check_answered(result)
    assert result.report['ids'] >= 600
    # (a face stage of ~50 ms a frame and 12 per-id publishers made per frame: on 2 busy cores
    # about one frame a second is processed under this churn; 24 face ids in 12 s measured)
    assert result.report['face_ids'] >= 4, result.report


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ten minutes of stream, the nodes' start and the peers' matching
@needs_hri
def test_ten_minutes_of_people_coming_and_going_alive_answered_and_flat(tmp_path):
    """The four configurations (raw / compressed, with / without REP-155 output) at once, ten
    minutes each, the face baseline: 5 Hz, track ids changing every 0.4 s (thousands of ids).
    The RSS slope after the first third (the track cache full) stays below
    ``MAX_SLOPE_MIB_PER_MIN``."""
    results = run_soak(CONFIGS, seconds=600.0, hz=5.0, id_period_s=0.4, folder=str(tmp_path))
    print('\n' + '\n'.join(str(r.summary()) for r in results))
    for result in results:
        _check_answered(result)
        assert result.report['ids'] >= 2000, result.report
        if result.config.rep155:
            assert result.report['face_ids'] >= 200, result.report
        slope = result.slope_mib_per_min
        assert slope == slope and slope < MAX_SLOPE_MIB_PER_MIN, result.summary()
