"""A wrong lifecycle request must never kill a node (issue 12), nor an exception in a callback.

rclpy 7.1.6 (the Jazzy wheel) raises ``RCLError: Transition is not registered`` out of its
``change_state`` service callback for a transition that is not valid in the current state
(``LifecycleNodeMixin.__on_change_state`` -> ``__change_state`` ->
``trigger_transition_by_id``), and the executor re-raises it: the process ends (ros2/rclpy#1209).

Every (primary state, transition id) pair of the managed-node state machine is requested
through the real ``change_state`` service of both nodes, in-process; the answers are printed as
a table (``pytest -s``). Then once on node processes started as a robot starts them.
"""
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image

from emotion_perception.msg import PersonDetectionArray, PersonEmotion
from emotion_perception.nodes.base import REQUESTABLE, TRANSITION_NAMES
from emotion_perception.nodes.person_detector import PersonDetectorNode
from emotion_perception.ros.image_conversion import numpy_to_image_msg
from emotion_perception.ros.qos import RESULTS_QOS, image_qos
from emotion_perception.testing.node_rig import EmotionRig, det_array, header
from emotion_perception.testing.ros_harness import RosHarness

pytestmark = pytest.mark.ros

PERSONS = [('1', (0, 0, 32, 48)), ('2', (32, 0, 32, 48))]
ALL_IDS = sorted(TRANSITION_NAMES)  # the 30 lifecycle_msgs/Transition constants
#: the valid requests of the standard state machine: state -> {transition id: goal state}
VALID = {'unconfigured': {1: 'inactive', 5: 'finalized'},
         'inactive': {2: 'unconfigured', 3: 'active', 6: 'finalized'},
         'active': {4: 'inactive', 7: 'finalized'},
         'finalized': {}}


@pytest.fixture
def harness():
    with RosHarness() as h:
        yield h


class Lifecycle:
    """The target node's change_state / get_state services, called like a remote client."""

    def __init__(self, harness, target: str, wait_s: float = 10.0) -> None:
        self.harness = harness
        self.change_client = harness.node.create_client(ChangeState, f'{target}/change_state')
        self.get_client = harness.node.create_client(GetState, f'{target}/get_state')
        assert self.change_client.wait_for_service(timeout_sec=wait_s), target
        assert self.get_client.wait_for_service(timeout_sec=wait_s), target

    def _call(self, client, request, timeout=60.0):
        future = client.call_async(request)
        assert self.harness.wait_for(future.done, timeout), 'no answer'
        return future.result()

    def change(self, transition_id: int = 0, label: str = '') -> bool:
        req = ChangeState.Request()
        req.transition.id, req.transition.label = transition_id, label
        return bool(self._call(self.change_client, req).success)

    def state(self) -> str:
        return self._call(self.get_client, GetState.Request()).current_state.label


def walk_all_pairs(harness, make_node, target, table, check_alive):
    """Request every transition id in every primary state; ``table`` gets (state, id, name,
    success, state after). ``check_alive(node)`` proves the node still processes."""
    node = make_node()
    lc = Lifecycle(harness, target)
    refused = 0

    def try_all_invalid(state):
        nonlocal refused
        assert lc.state() == state
        for tid in ALL_IDS:
            if tid in VALID[state]:
                continue
            ok = lc.change(tid)
            after = lc.state()
            table.append((state, tid, TRANSITION_NAMES[tid], ok, after))
            assert not ok and after == state, (state, tid, ok, after)
            refused += 1

    def valid(state, tid):
        ok = lc.change(tid)
        after = lc.state()
        table.append((state, tid, TRANSITION_NAMES[tid], ok, after))
        assert ok and after == VALID[state][tid], (state, tid, ok, after)

    try_all_invalid('unconfigured')
    valid('unconfigured', 1)
    try_all_invalid('inactive')
    valid('inactive', 2)
    assert lc.change(1)
    valid('inactive', 3)
    try_all_invalid('active')
    # labels, as `ros2 lifecycle set` may send them
    for label, expect in (('activate', False), ('configure', False), ('bogus', False),
                          ('deactivate', True), ('activate', True)):
        before = lc.state()
        ok = lc.change(label=label)
        table.append((before, None, f'label {label!r}', ok, lc.state()))
        assert ok is expect, label
        refused += not ok
    check_alive(node)  # still subscribing and publishing after all that
    valid('active', 4)
    assert lc.change(3)
    valid('active', 7)
    try_all_invalid('finalized')
    assert not lc.change(label='shutdown')
    table.append(('finalized', None, "label 'shutdown'", False, lc.state()))
    refused += 1
    assert node.stats.snapshot()['lifecycle.invalid_transitions'] == refused
    # the shutdown transitions from the other two states, on fresh nodes
    for path, tid in (((), 5), ((1,), 6)):
        other = make_node(suffix=f'_{tid}')
        lco = Lifecycle(harness, f'{target}_{tid}')
        for step in path:
            assert lco.change(step)
        state = lco.state()
        valid_ok = lco.change(tid)
        table.append((state, tid, TRANSITION_NAMES[tid], valid_ok, lco.state()))
        assert valid_ok and lco.state() == 'finalized'
        del other
    return node


def print_table(title, table):
    print(f'\n{title}: {len(table)} requests')
    print('| state | transition (id) | success | state after |')
    print('|---|---|---|---|')
    for state, tid, name, ok, after in table:
        what = name if tid is None else f'{name} ({tid})'
        print(f'| {state} | {what} | {str(ok).lower()} | {after} |')


def assert_grid_covered(table):
    """Every (primary state, transition id) pair was requested."""
    asked = {(state, tid) for state, tid, *_ in table if tid is not None}
    missing = {(s, t) for s in VALID for t in ALL_IDS} - asked
    assert not missing, sorted(missing)


def test_every_state_transition_pair_on_the_emotion_node(harness, capfd):
    table = []
    rigs = {}

    def make_node(suffix=''):
        rig = EmotionRig(harness, name=f'emotion_node{suffix}', activate=False,
                         diagnostics_period_s=0.2)
        rigs[suffix] = rig
        return rig.node

    def check_alive(node):
        rig = rigs['']
        assert harness.wait_matched(rig.img_pub) and harness.wait_matched(rig.det_pub)
        rgb = np.random.default_rng(7).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        ans = rig.send(det_array(header(77), PERSONS),
                       numpy_to_image_msg(rgb, 'rgb8', header=header(77)))
        assert [p.status for p in ans.persons] == [PersonEmotion.STATUS_OK] * 2

    node = walk_all_pairs(harness, make_node, '/emotion_node', table, check_alive)
    with capfd.disabled():
        print_table('emotion_node', table)
    # the counter reaches /diagnostics
    diags = rigs[''].diagnostics
    assert harness.wait_for(lambda: any(
        kv.key == 'lifecycle.invalid_transitions' and int(kv.value) > 50
        for arr in list(diags) for st in arr.status if st.name.startswith('emotion_node:')
        for kv in st.values), 10)
    err = capfd.readouterr().err
    assert "refused lifecycle transition 'activate' (id 3) requested by service: not a valid " \
           "transition from state 'active' (valid there: deactivate, shutdown)" in err
    assert node.lifecycle_state == 'finalized'
    assert_grid_covered(table)


def test_every_state_transition_pair_on_the_person_detector(harness):
    table = []
    nodes = {}

    def make_node(suffix=''):
        node = harness.add(PersonDetectorNode(
            f'person_detector{suffix}', context=harness.context, parameter_overrides=[
                Parameter('device', value='cpu'), Parameter('tracker', value=''),
                Parameter('image_reliability', value='reliable')]))
        nodes[suffix] = node
        return node

    def check_alive(node):
        pub = harness.publisher(Image, 'image', image_qos('reliable'))
        out = harness.collect(PersonDetectionArray, 'detections', RESULTS_QOS)
        assert harness.wait_matched(pub)
        pub.publish(numpy_to_image_msg(np.zeros((64, 64, 3), np.uint8), 'rgb8',
                                       header=header(5)))
        assert harness.wait_for(lambda: len(out) == 1, 60)
        assert out[0].header.stamp.sec == 5

    walk_all_pairs(harness, make_node, '/person_detector', table, check_alive)
    print_table('person_detector', table)
    assert_grid_covered(table)


def test_in_process_triggers_are_checked_too(harness):
    rig = EmotionRig(harness, activate=False)
    node = rig.node
    assert node.trigger_activate().name == 'FAILURE'  # not configured: refused, no RCLError
    assert node.trigger_configure().name == 'SUCCESS'
    assert node.trigger_configure().name == 'FAILURE'
    assert node.lifecycle_state == 'inactive'
    assert node.request_transition(Transition.TRANSITION_ON_CONFIGURE_SUCCESS) is None
    assert set(REQUESTABLE) == {1, 2, 3, 4, 5, 6, 7}


def test_a_request_during_a_running_transition_is_refused_not_queued(harness):
    """configure blocked in a slow model load: a second configure (or activate) from a
    client is answered false at once; get_state says 'configuring'."""
    from emotion_perception.testing import fake_backends as fb
    fb.SlowLoadBackend.load_entered.clear()
    fb.SlowLoadBackend.load_release.clear()
    rig = EmotionRig(harness, fb.SlowLoadBackend, activate=False)
    lc = Lifecycle(harness, '/emotion_node')
    future = lc.change_client.call_async(ChangeState.Request(
        transition=Transition(id=Transition.TRANSITION_CONFIGURE)))
    try:
        assert fb.SlowLoadBackend.load_entered.wait(20)
        assert lc.state() == 'configuring'
        assert lc.change(Transition.TRANSITION_CONFIGURE) is False
        assert lc.change(Transition.TRANSITION_ACTIVATE) is False
        assert not future.done()
    finally:
        fb.SlowLoadBackend.load_release.set()
    assert harness.wait_for(future.done, 20) and future.result().success
    assert lc.state() == 'inactive' and lc.change(Transition.TRANSITION_ACTIVATE)
    assert rig.node.stats.snapshot()['lifecycle.invalid_transitions'] == 2


# -- exceptions escaping other callbacks -------------------------------------------------------
def test_exceptions_in_subscription_timer_and_service_callbacks_keep_the_node_spinning(
        harness, capfd):
    rig = EmotionRig(harness, activate=False, diagnostics_period_s=0.1)
    node = rig.node
    original = node._on_image
    calls = []

    def flaky_on_image(msg):  # the first image callback hits a bug
        calls.append(1)
        if len(calls) == 1:
            raise KeyError('bug in the image callback')
        return original(msg)
    node._on_image = flaky_on_image
    rig.activate()
    rgb = np.zeros((48, 64, 3), np.uint8)
    rig.img_pub.publish(numpy_to_image_msg(rgb, 'rgb8', header=header(1)))
    assert harness.wait_for(
        lambda: node.stats.snapshot().get('errors.callback.subscription') == 1, 20)
    ans = rig.send(det_array(header(2), PERSONS), numpy_to_image_msg(rgb, 'rgb8',
                                                                     header=header(2)))
    assert [p.status for p in ans.persons] == [PersonEmotion.STATUS_OK] * 2

    # a service callback: a parameter validation callback with a bug, hit via the real service
    node.add_on_set_parameters_callback(lambda params: 1 / 0)
    client = harness.node.create_client(SetParameters, '/emotion_node/set_parameters')
    assert client.wait_for_service(timeout_sec=10)
    req = SetParameters.Request(parameters=[
        Parameter('reuse.min_iou', value=0.5).to_parameter_msg()])
    for _ in range(2):
        future = client.call_async(req)
        assert harness.wait_for(future.done, 10)  # answered (empty), not left hanging
    assert node.stats.snapshot()['errors.callback.service'] == 2

    # a timer callback: /diagnostics computing its values hits a bug, repeatedly
    node.diagnostics = lambda: 1 / 0
    assert harness.wait_for(
        lambda: node.stats.snapshot().get('errors.callback.timer', 0) >= 3, 20)
    ans = rig.send(det_array(header(3), PERSONS), numpy_to_image_msg(rgb, 'rgb8',
                                                                     header=header(3)))
    assert [p.status for p in ans.persons] == [PersonEmotion.STATUS_OK] * 2
    err = capfd.readouterr().err
    for kind, exc in (('subscription', 'KeyError'), ('service', 'ZeroDivisionError'),
                      ('timer', 'ZeroDivisionError')):
        # the traceback once per kind, later ones as a throttled line
        first = f'counted as errors.callback.{kind}):\nTraceback (most recent call last):'
        assert err.count(first) == 1, (kind, err[-3000:])
        assert exc in err.split(first, 1)[1][:3000]
    assert node.stats.snapshot()['errors.callback'] >= 6


# -- node processes, as a robot starts them ----------------------------------------------------
def _start(module, name, *extra):
    cmd = [sys.executable, '-m', f'emotion_perception.nodes.{module}', '--ros-args',
           '-r', f'__node:={name}', *extra]
    return subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_node_processes_survive_invalid_requests_and_an_autostart_race(harness):
    """Two emotion_node processes with autostart: one is sent invalid requests once active;
    the other gets a launch-style configure + activate the moment its services appear (racing
    its own autostart). Both end active, alive, answering get_state; SIGINT/SIGTERM exit 0."""
    procs = {'emo_bad_requests': _start('emotion_node', 'emo_bad_requests',
                                        '-p', 'autostart:=true'),
             'emo_race': _start('emotion_node', 'emo_race', '-p', 'autostart:=true')}
    logs = {k: [] for k in procs}
    readers = [threading.Thread(target=lambda k=k: logs[k].extend(procs[k].stdout),
                                daemon=True) for k in procs]
    for r in readers:
        r.start()
    try:
        race = Lifecycle(harness, '/emo_race', wait_s=120)  # as soon as the services appear
        answers = [race.change(Transition.TRANSITION_CONFIGURE),
                   race.change(Transition.TRANSITION_ACTIVATE)]
        lc = Lifecycle(harness, '/emo_bad_requests', wait_s=120)
        assert harness.wait_for(lambda: lc.state() == 'active', 120), ''.join(
            logs['emo_bad_requests'])
        answered = [(name, lc.change(tid)) for name, tid in (
            ('activate', 3), ('configure', 1), ('cleanup', 2), ('callback_success', 97),
            ('unconfigured_shutdown', 5), ('destroy', 8), ('create', 0))]
        assert answered == [(n, False) for n, _ in answered]
        assert not lc.change(label='activate')
        assert procs['emo_bad_requests'].poll() is None
        assert lc.state() == 'active'
        assert lc.change(Transition.TRANSITION_DEACTIVATE) and lc.change(3)
        assert harness.wait_for(lambda: race.state() == 'active', 120), ''.join(logs['emo_race'])
        assert procs['emo_race'].poll() is None
        print(f'\nautostart race: launch-style configure/activate answered {answers}')
        diag = harness.collect(DiagnosticArray, '/diagnostics')
        assert harness.wait_for(lambda: any(
            kv.key == 'lifecycle.invalid_transitions' and kv.value == '8'
            for arr in list(diag) for st in arr.status if 'emo_bad_requests' in st.name
            for kv in st.values), 10)
        for name, sig in (('emo_bad_requests', signal.SIGINT), ('emo_race', signal.SIGTERM)):
            procs[name].send_signal(sig)
        for name, proc in procs.items():
            assert proc.wait(timeout=30) == 0, (name, ''.join(logs[name]))
        for r in readers:
            r.join(5)
        for name in procs:
            text = ''.join(logs[name])
            assert 'Traceback' not in text and 'RCLError' not in text, text
        assert "refused lifecycle transition 'activate' (id 3)" in ''.join(
            logs['emo_bad_requests'])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
