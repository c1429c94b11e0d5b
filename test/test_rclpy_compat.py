"""The rclpy internals the package relies on (``emotion_perception.ros.rclpy_compat``), checked
against the installed rclpy: each function's result against what rclpy's public interfaces
say (the lifecycle services, a publisher's gid in the graph), and each behaviour the package
depends on (a moved service is served outside the default group, a replaced callback answers).

Runs in both test environments (``make test``): Jazzy's rclpy 7.1.6 (.venv) and Kilted's 9.1.2
(.venv-kilted). An rclpy that changes one of these fails here, naming the function.
"""
from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip('rclpy')

import rclpy  # noqa: E402
from lifecycle_msgs.msg import State, Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetAvailableTransitions, GetState  # noqa: E402
from rclpy.callback_groups import ReentrantCallbackGroup  # noqa: E402
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.service import Service  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from emotion_perception.ros import rclpy_compat as compat  # noqa: E402
from emotion_perception.ros.publisher_restarts import gid_from_message_info  # noqa: E402
from emotion_perception.testing.ros_harness import RosHarness  # noqa: E402

pytestmark = pytest.mark.ros

#: primary state -> (the transition that reaches it from the previous one, its id)
PATH = [('configure', Transition.TRANSITION_CONFIGURE, (State.PRIMARY_STATE_INACTIVE, 'inactive')),
        ('activate', Transition.TRANSITION_ACTIVATE, (State.PRIMARY_STATE_ACTIVE, 'active')),
        ('deactivate', Transition.TRANSITION_DEACTIVATE, (State.PRIMARY_STATE_INACTIVE,
                                                          'inactive')),
        ('cleanup', Transition.TRANSITION_CLEANUP, (State.PRIMARY_STATE_UNCONFIGURED,
                                                    'unconfigured'))]


class _Recorder(LifecycleNode):
    """Records what ``lifecycle_state`` says inside its own transition callbacks."""

    def __init__(self, name: str, **kwargs) -> None:
        super().__init__(name, **kwargs)
        self.seen: list[tuple[int, str]] = []

    def on_configure(self, state):
        self.seen.append(compat.lifecycle_state(self))
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state):
        self.seen.append(compat.lifecycle_state(self))
        return super().on_activate(state)


def _rclpy_major() -> int:
    from importlib import metadata
    for dist in ('ros-rclpy', 'rclpy'):  # PyPI wheels; apt / colcon installs
        try:
            return int(metadata.version(dist).split('.')[0])
        except metadata.PackageNotFoundError:
            continue
    return 0


@pytest.fixture
def harness():
    with RosHarness('compat_harness') as h:
        yield h


def _call(harness, srv_type, name: str, request, timeout: float = 10.0):
    client = harness.node.create_client(srv_type, name)
    try:
        assert client.wait_for_service(timeout_sec=timeout), f'{name} not available'
        future = client.call_async(request)
        assert harness.wait_for(future.done, timeout), f'{name} did not answer'
        return future.result()
    finally:
        harness.node.destroy_client(client)


def _service_state(harness, node_name: str) -> tuple[int, str]:
    state = _call(harness, GetState, f'/{node_name}/get_state', GetState.Request()).current_state
    return state.id, state.label


def _service_transitions(harness, node_name: str) -> dict[int, str]:
    resp = _call(harness, GetAvailableTransitions, f'/{node_name}/get_available_transitions',
                 GetAvailableTransitions.Request())
    return {t.transition.id: t.transition.label for t in resp.available_transitions}


def test_lifecycle_state_and_available_transitions_match_the_lifecycle_services(harness):
    node = harness.add(_Recorder('compat_states', context=harness.context))
    assert compat.lifecycle_state(node) == (State.PRIMARY_STATE_UNCONFIGURED, 'unconfigured')
    assert compat.lifecycle_state(node) == _service_state(harness, 'compat_states')
    assert compat.available_transitions(node) == {
        Transition.TRANSITION_CONFIGURE: 'configure',
        Transition.TRANSITION_UNCONFIGURED_SHUTDOWN: 'shutdown'}
    for name, tid, reached in PATH:
        assert tid in compat.available_transitions(node), name
        assert getattr(node, f'trigger_{name}')() == TransitionCallbackReturn.SUCCESS, name
        # the id/label pair, and the same answer as the public get_state service
        assert compat.lifecycle_state(node) == reached
        assert compat.lifecycle_state_label(node) == reached[1]
        assert compat.lifecycle_state(node) == _service_state(harness, 'compat_states')
        assert compat.available_transitions(node) == _service_transitions(harness,
                                                                          'compat_states')
        assert all(isinstance(k, int) and isinstance(v, str)
                   for k, v in compat.available_transitions(node).items())
    # inside a transition callback: the transition state (what the nodes' diagnostics show)
    assert node.seen == [(State.TRANSITION_STATE_CONFIGURING, 'configuring'),
                         (State.TRANSITION_STATE_ACTIVATING, 'activating')]
    assert node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS
    assert compat.lifecycle_state(node) == (State.PRIMARY_STATE_FINALIZED, 'finalized')
    assert compat.available_transitions(node) == {}


def test_parameter_overrides_holds_every_source_declared_or_not(tmp_path):
    params_file = tmp_path / 'p.yaml'
    params_file.write_text('compat_params:\n  ros__parameters:\n    from_file: [1, 2]\n'
                           '    declared: 3.5\n')
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = Node('compat_params', context=context,
                    parameter_overrides=[Parameter('from_code', value='x')],
                    cli_args=['--ros-args', '-p', 'from_cli:=true',
                              '--params-file', str(params_file)])
        node.declare_parameter('declared', 0.0)
        overrides = compat.parameter_overrides(node)
        assert sorted(overrides) == ['declared', 'from_cli', 'from_code', 'from_file']
        assert all(isinstance(p, Parameter) for p in overrides.values())
        assert {k: (p.value if k != 'from_file' else list(p.value))
                for k, p in overrides.items()} == {
            'declared': 3.5, 'from_cli': True, 'from_code': 'x', 'from_file': [1, 2]}
        assert overrides['from_file'].type_ == Parameter.Type.INTEGER_ARRAY
        # a copy: the caller cannot change rclpy's own dict
        overrides.clear()
        assert len(compat.parameter_overrides(node)) == 4
        # the public list of declared names that params.unknown_parameter_overrides uses
        assert 'declared' in node.list_parameters([], 0).names
        assert 'from_cli' not in node.list_parameters([], 0).names
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_a_changed_parameter_overrides_is_reported_not_fatal(monkeypatch):
    """If rclpy drops or retypes ``_parameter_overrides``, the compat function says so, and the
    nodes' undeclared-key check is skipped (with a warning) instead of failing the node."""
    from emotion_perception.ros.params import unknown_parameter_overrides
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = Node('compat_changed', context=context,
                    parameter_overrides=[Parameter('typo', value=1)])
        assert unknown_parameter_overrides(node) == {'typo': None}
        monkeypatch.setattr(node, '_parameter_overrides', [('typo', 1)])
        with pytest.raises(compat.RclpyInternalsChanged, match='not a dict'):
            compat.parameter_overrides(node)
        assert unknown_parameter_overrides(node) == {}
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_lifecycle_services_are_the_five_named_typed_services():
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = LifecycleNode('compat_services', namespace='/ns', context=context)
        found = compat.lifecycle_services(node)
        assert sorted(found) == sorted(compat.LIFECYCLE_SERVICES)
        for suffix, srv in found.items():
            assert isinstance(srv, Service)
            assert srv.srv_name == f'/ns/compat_services/{suffix}'
            assert srv.srv_type.__name__ == compat.LIFECYCLE_SERVICES[suffix]
            assert any(s is srv for s in node.services)  # served by the executor
        assert found['change_state'].srv_type is ChangeState
        quiet = LifecycleNode('compat_quiet', context=context,
                              enable_communication_interface=False)
        assert compat.lifecycle_services(quiet) == {}
        node.destroy_node()
        quiet.destroy_node()
    finally:
        rclpy.shutdown(context=context)


@pytest.mark.parametrize('moved', [True, False])
def test_moved_services_answer_while_the_default_group_is_busy(harness, moved):
    """A timer blocks the node's default (mutually exclusive) group; get_state answers only when
    ``move_to_callback_group`` moved the lifecycle services out of it (the control case shows
    the test can tell)."""
    name = f'compat_groups_{int(moved)}'
    node = LifecycleNode(name, context=harness.context)
    release, entered = threading.Event(), threading.Event()

    def block():
        entered.set()
        release.wait(10.0)
    if moved:
        group = ReentrantCallbackGroup()
        for srv in compat.lifecycle_services(node).values():
            compat.move_to_callback_group(srv, group)
            assert srv.callback_group is group and group.has_entity(srv)
    timer = node.create_timer(0.01, block)
    harness.add(node)
    try:
        assert entered.wait(10.0)
        client = harness.node.create_client(GetState, f'/{name}/get_state')
        assert client.wait_for_service(timeout_sec=10.0)
        future = client.call_async(GetState.Request())
        answered = harness.wait_for(future.done, timeout=3.0 if moved else 1.5)
        assert answered == moved
        if moved:
            assert future.result().current_state.label == 'unconfigured'
    finally:
        timer.cancel()
        release.set()


def test_replaced_service_callback_answers_requests(harness):
    node = LifecycleNode('compat_callback', context=harness.context)
    requests = []

    def refuse(request, response):
        requests.append(request.transition.id)
        response.success = False
        return response
    compat.replace_service_callback(compat.lifecycle_services(node)['change_state'], refuse)
    harness.add(node)
    req = ChangeState.Request()
    req.transition.id = Transition.TRANSITION_CONFIGURE
    assert _call(harness, ChangeState, '/compat_callback/change_state', req).success is False
    assert requests == [Transition.TRANSITION_CONFIGURE]
    # rclpy's own callback did not run: the node did not move
    assert compat.lifecycle_state_label(node) == 'unconfigured'
    with pytest.raises(compat.RclpyInternalsChanged):
        compat.replace_service_callback(object(), refuse)


def test_two_argument_subscription_callbacks_get_message_info(harness):
    """What the emotion node's restart detection reads (``with_message_info``,
    ``gid_from_message_info``): a dict with the publication sequence number counting from 1,
    and, where rclpy gives it (9.x), the publisher's gid as the ROS graph reports it."""
    if _rclpy_major() < 7:
        pytest.skip('rclpy < 7 (Humble) passes no message_info: the node falls back to the graph')
    assert compat.subscription_passes_message_info()
    got: list = []
    node = harness.add(Node('compat_info', context=harness.context))
    node.create_subscription(String, 'compat_info_topic', lambda msg, info: got.append(info), 10)
    pub = harness.node.create_publisher(String, 'compat_info_topic', 10)
    assert harness.wait_matched(pub)
    for i in range(3):
        pub.publish(String(data=str(i)))
        time.sleep(0.05)
    assert harness.wait_for(lambda: len(got) == 3, 10.0)
    assert all(isinstance(info, dict) for info in got)
    seqs = [info['publication_sequence_number'] for info in got]
    assert seqs == [1, 2, 3]  # rmw_fastrtps: per-writer, from 1
    gid = gid_from_message_info(got[0])
    if 'publisher_gid' in got[0]:
        graph = [bytes(i.endpoint_gid) for i in
                 node.get_publishers_info_by_topic('/compat_info_topic')]
        assert gid is not None and len(graph) == 1
        assert graph[0][:len(gid)] == gid
    else:
        assert gid is None


def _rclpy_private_names() -> set[str]:
    """Single-underscore attribute names of rclpy's classes and of a live LifecycleNode."""
    import rclpy.callback_groups
    import rclpy.client
    import rclpy.context
    import rclpy.executors
    import rclpy.publisher
    import rclpy.service
    import rclpy.subscription
    import rclpy.timer
    classes = [LifecycleNode, rclpy.executors.MultiThreadedExecutor, rclpy.service.Service,
               rclpy.subscription.Subscription, rclpy.publisher.Publisher,
               rclpy.client.Client, rclpy.timer.Timer, rclpy.context.Context,
               rclpy.callback_groups.MutuallyExclusiveCallbackGroup, Parameter]
    names = set()
    for cls in classes:
        for klass in cls.__mro__:
            names |= {k for k in vars(klass) if k.startswith('_') and not k.startswith('__')}
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = LifecycleNode('compat_names', context=context)
        names |= {k for k in vars(node) if k.startswith('_') and not k.startswith('__')}
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    return names


def test_no_rclpy_internals_outside_the_compat_module():
    """A new use of an rclpy internal must go through ``rclpy_compat`` (with its reason and a
    test here). Flags ``<expr>._name`` for rclpy's private names, except names our own classes
    assign (``self._logger = ...`` in KindLogger is ours), and imports of rclpy's C binding."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    files = [p for tree in ('emotion_perception', 'examples', 'bench', 'test')
             for p in sorted((root / tree).rglob('*.py'))
             if 'msg' not in p.relative_to(root).parts and p.name != 'rclpy_compat.py'
             and p.name != Path(__file__).name]
    texts = {p: p.read_text() for p in files}
    ours = {m for text in texts.values()
            for m in re.findall(r'\bself\.(_\w+)\s*(?::[^=\n]*)?=', text)}
    private = _rclpy_private_names() - ours
    assert {'_state_machine', '_parameter_overrides', '_services'} <= private
    pattern = re.compile(r'\.(' + '|'.join(map(re.escape, sorted(private))) + r')\b')
    found = []
    for path, text in texts.items():
        for lineno, line in enumerate(text.splitlines(), 1):
            code = line.split('#', 1)[0]
            if pattern.search(code) or re.search(r'rclpy\.impl|\b_rclpy\b', code):
                found.append(f'{path.relative_to(root)}:{lineno}: {line.strip()}')
    assert not found, 'rclpy internals outside rclpy_compat.py:\n' + '\n'.join(found)


def _raise_here():
    raise RuntimeError('callback failed')


def test_safe_logger_records_carry_the_callers_location_on_rosout(harness):
    """``log_with_caller``: a /rosout record (what rqt_console shows) of a message logged
    through SafeLogger, KindLogger or CallbackGuard carries the file, function and line of the
    code that logged it (for the guard: where the callback raised), not the wrapper's; one
    call site may still log at several severities (rclpy's own ``log`` raises then)."""
    import inspect
    import os

    from rcl_interfaces.msg import Log
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    from emotion_perception.ros.node_utils import CallbackGuard, KindLogger, SafeLogger
    qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
    got = harness.collect(Log, '/rosout', qos)
    node = harness.add(Node('caller_probe', context=harness.context))
    safe, kinds = SafeLogger(node.get_logger()), KindLogger(node.get_logger(), period_s=0.0)
    guard = CallbackGuard(logger=node.get_logger(), period_s=0.0)
    line = inspect.currentframe().f_lineno
    for error in (False, True, False):
        (safe.error if error else safe.warning)(f'safe {error}')      # line + 2
        kinds.warn('k', f'kind {error}', error=error)                 # line + 3
    for _ in range(2):  # the first with its traceback, then through KindLogger
        try:
            _raise_here()
        except RuntimeError as exc:
            guard.failed('subscription', 'probe', exc)
    mine = lambda: [r for r in got if r.name == 'caller_probe']  # noqa: E731
    assert harness.wait_for(lambda: len(mine()) >= 8, 10), [r.msg for r in mine()]
    here = os.path.realpath(__file__)
    raised = inspect.getsourcelines(_raise_here)[1] + 1
    expected = [(30, 'safe False', line + 2), (30, '[k] kind False', line + 3),
                (40, 'safe True', line + 2), (40, '[k] kind True', line + 3),
                (30, 'safe False', line + 2), (30, '[k] kind False', line + 3)]
    records = mine()
    assert [(r.level, r.msg, r.line) for r in records[:6]] == expected
    assert all(os.path.realpath(r.file) == here for r in records)
    assert all(r.function == 'test_safe_logger_records_carry_the_callers_location_on_rosout'
               for r in records[:6])
    assert [(r.level, r.function, r.line) for r in records[6:8]] == [(40, '_raise_here',
                                                                     raised)] * 2
    assert 'Traceback' in records[6].msg and '[callback.subscription]' in records[7].msg
    assert safe.failures == 0
