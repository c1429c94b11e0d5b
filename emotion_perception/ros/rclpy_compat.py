"""Every use of rclpy internals (and of rclpy behaviour that is not its documented API) in one
place, one function per use, each with the reason and the rclpy versions it was checked with.

rclpy can change a private attribute in any release without a deprecation. Each function here
is exercised against the installed rclpy by ``test/test_rclpy_compat.py`` (shape, type and
behaviour, not just ``hasattr``), which runs in both test environments: ``.venv`` (ROS 2 Jazzy,
rclpy 7.1.6) and ``.venv-kilted`` (ROS 2 Kilted, rclpy 9.1.2). An rclpy upgrade that changes one
of them fails that test, naming the function, instead of breaking a node silently.

Checked (sources read, test run): rclpy 7.1.6 (Jazzy) and 9.1.2 (Kilted). Humble's rclpy
(3.3.x) is not on PyPI (no ros-humble-* wheels) and was not checked: on a Humble robot,
run ``python -m pytest test/test_rclpy_compat.py`` against apt's rclpy.

Everything else in the package uses rclpy's public API only: ``Node.services`` (not
``_services``), ``Node.list_parameters`` (not ``_parameters``), ``Executor.context`` (not
``_context``), the lifecycle services found by their ``lifecycle_msgs`` type (not the
``_service_*`` attributes).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

#: ``lifecycle_msgs`` service name suffix -> service type name, as LifecycleNodeMixin creates them
LIFECYCLE_SERVICES = {
    'change_state': 'ChangeState',
    'get_state': 'GetState',
    'get_available_states': 'GetAvailableStates',
    'get_available_transitions': 'GetAvailableTransitions',
    'get_transition_graph': 'GetAvailableTransitions',
}


class RclpyInternalsChanged(RuntimeError):
    """An rclpy internal this package relies on is not what it was (an rclpy upgrade)."""


def lifecycle_state(node: Any) -> tuple[int, str]:
    """The lifecycle node's current state: ``(lifecycle_msgs/State id, label)``, e.g.
    ``(2, 'inactive')``; transition states too (``(10, 'configuring')``).

    Reason: rclpy's ``LifecycleNode`` has no public getter for its state (rclcpp has
    ``get_current_state()``); the only public way is the node's own ``get_state`` service, a
    round trip through DDS and an executor, which a node cannot use from inside its own callbacks
    (diagnostics timer, request checks). Reads ``node._state_machine.current_state`` (the
    ``_rclpy.LifecycleStateMachine`` binding; a ``(int, str)`` tuple).

    Checked: rclpy 7.1.6, 9.1.2.
    """
    try:
        state_id, label = node._state_machine.current_state
    except (AttributeError, TypeError, ValueError) as exc:
        raise RclpyInternalsChanged(
            f'LifecycleNode._state_machine.current_state is not an (id, label) pair: {exc}') \
            from exc
    return int(state_id), str(label)


def lifecycle_state_label(node: Any) -> str:
    """The label of :func:`lifecycle_state` ('unconfigured', 'inactive', 'active',
    'finalized', or a transition state such as 'configuring')."""
    return lifecycle_state(node)[1]


def available_transitions(node: Any) -> dict[int, str]:
    """Transitions valid from the node's current state: ``{lifecycle_msgs/Transition id:
    label}`` (e.g. ``{1: 'configure', 5: 'shutdown'}`` when unconfigured).

    Reason: no public API (rclcpp has ``get_available_transitions()``); the node checks a
    requested transition before triggering it because rclpy 7.1.6 raises ``RCLError`` out of its
    ``change_state`` callback for an invalid one and ends the process (ros2/rclpy#1209; 9.1.2
    answers ERROR instead). Reads ``node._state_machine.available_transitions``: a sequence of
    ``(transition_id, transition_label, start_id, start_label, goal_id, goal_label)`` tuples.

    Checked: rclpy 7.1.6, 9.1.2.
    """
    try:
        return {int(t[0]): str(t[1]) for t in node._state_machine.available_transitions}
    except (AttributeError, TypeError, IndexError, ValueError) as exc:
        raise RclpyInternalsChanged(
            f'LifecycleNode._state_machine.available_transitions changed: {exc}') from exc


def parameter_overrides(node: Any) -> dict[str, Any]:
    """The parameter values the node was started with (``--params-file``, ``-p name:=value``,
    ``Node(parameter_overrides=...)``), declared or not: ``{name: rclpy.parameter.Parameter}``.

    Reason: rclpy keeps overrides of parameters the node never declares without a word, and has
    no public accessor for them (rclcpp: ``NodeParametersInterface::get_parameter_overrides()``);
    the nodes report such keys (a typo in a parameter file) with the closest declared name.
    Reads ``node._parameter_overrides`` (a dict name -> Parameter, filled in ``Node.__init__``).

    Checked: rclpy 7.1.6, 9.1.2.
    """
    overrides = getattr(node, '_parameter_overrides', None)
    if not isinstance(overrides, dict):
        raise RclpyInternalsChanged(
            f'Node._parameter_overrides is {type(overrides).__name__}, not a dict')
    return dict(overrides)


def lifecycle_services(node: Any) -> dict[str, Any]:
    """The five lifecycle services rclpy created for ``node``: ``{'change_state': Service, ...}``
    (keys of :data:`LIFECYCLE_SERVICES`); empty for a node without the communication interface.

    Public API only (``Node.services``, ``Service.srv_type``, ``Service.srv_name``); here
    because it relies on how rclpy builds them: LifecycleNodeMixin adds them to the node's
    service list, typed ``lifecycle_msgs.srv.*``, named ``<node>/<suffix>``. It replaces the
    private ``_service_change_state`` ... ``_service_get_transition_graph`` attributes.

    Checked: rclpy 7.1.6, 9.1.2.
    """
    found = {}
    for srv in node.services:
        srv_type = getattr(srv, 'srv_type', None)
        if getattr(srv_type, '__module__', '').split('.')[0] != 'lifecycle_msgs':
            continue
        suffix = str(getattr(srv, 'srv_name', '')).rsplit('/', 1)[-1]
        if LIFECYCLE_SERVICES.get(suffix) == srv_type.__name__:
            found[suffix] = srv
    return found


def move_to_callback_group(entity: Any, group: Any) -> None:
    """Move a service (or another entity) that rclpy created into ``group``.

    Reason: ``Node.__init__`` creates the parameter services, and ``LifecycleNode.__init__`` the
    lifecycle services, in the node's default (mutually exclusive) callback group, with no
    argument to choose another (``LifecycleNodeMixin`` takes a ``callback_group``, but
    ``LifecycleNode.__init__`` does not pass one). In that group they would wait for every
    subscription callback and for a running transition, so ``get_state`` and ``ros2 param``
    would not answer while ``configure`` loads a model. The executor reads
    ``entity.callback_group`` each time it collects ready work, so reassigning it (before the
    node is added to an executor) and adding the entity to the new group is enough.

    Checked: rclpy 7.1.6, 9.1.2 (``Executor._wait_for_ready_callbacks`` ->
    ``entity.callback_group.can_execute(entity)``).
    """
    entity.callback_group = group
    group.add_entity(entity)


def replace_service_callback(service: Any, callback: Callable[[Any, Any], Any]) -> None:
    """Make ``service`` answer with ``callback(request, response)`` from now on.

    Reason: rclpy's lifecycle ``change_state`` callback is a name-mangled private method
    (``LifecycleNodeMixin.__on_change_state``) that cannot be overridden, and in rclpy 7.1.6 it
    raises ``RCLError`` for an invalid transition, which ends the process (ros2/rclpy#1209).
    The executor calls ``service.callback`` for each request, so replacing that attribute
    routes requests through the node's own checks; the other services get a guarded wrapper
    of their callback the same way.

    Checked: rclpy 7.1.6, 9.1.2 (``Executor._take_service`` -> ``_execute`` awaits
    ``srv.callback`` when a request is taken).
    """
    if not callable(getattr(service, 'callback', None)):
        raise RclpyInternalsChanged(f'{type(service).__name__}.callback is not a callable')
    service.callback = callback


def subscription_passes_message_info() -> bool:
    """Whether a two-argument subscription callback receives ``(msg, message_info)``.

    rclpy 7.1.6 and 9.1.2 inspect the callback's signature (``Subscription.CallbackType``) and
    pass a ``message_info`` dict ('source_timestamp', 'received_timestamp',
    'publication_sequence_number', 'reception_sequence_number'; 9.1.2 adds 'publisher_gid').
    An rclpy without ``Subscription.CallbackType`` is taken to pass the message only (the
    callback then gets ``None`` for the info: restart detection falls back to the graph).

    Checked: rclpy 7.1.6, 9.1.2.
    """
    try:
        from rclpy.subscription import Subscription
    except ImportError:  # pragma: no cover - rclpy itself missing
        return False
    return hasattr(Subscription, 'CallbackType')



#: (function name, absolute file path, line number) of a log message's origin
Caller = tuple[str, str, int]


def log_with_caller(logger: Any, severity: int, message: str, caller: Caller) -> bool:
    """Log ``message`` at ``severity`` (a ``LoggingSeverity``) on ``logger`` with ``caller`` as
    its location (what /rosout's ``rcl_interfaces/Log`` carries as ``function``, ``file``,
    ``line``, and rqt_console shows). Returns False, having logged nothing, when ``logger`` is
    not an rclpy ``RcutilsLogger`` or the binding below is missing (log it the public way).

    Reason: ``RcutilsLogger.log`` has no parameter for the location: it takes the first stack
    frame outside rclpy's own logging files (``CallerId()``), which for a wrapper such as
    ``SafeLogger`` is the wrapper's line, and it keys a per-call-site context (severity,
    filters) by that frame, raising when one site changes severity. Here, as ``log`` does
    after its filters, the logger's public ``is_enabled_for`` decides, then the C binding
    ``rclpy_logging_rcutils_log(severity, name, message, function, file, line)`` that ``log``
    ends in is called with the caller's location. No per-site context is made (so no
    severity-change error can arise), and rclpy's filters (``throttle_duration_sec``, ``once``,
    ``skip_first``) are not available on this path.

    Checked: rclpy 7.1.6, 9.1.2 (the same binding signature and call in ``log``).
    """
    from rclpy.impl.implementation_singleton import rclpy_implementation
    from rclpy.impl.rcutils_logger import RcutilsLogger
    from rclpy.logging import LoggingSeverity
    log = getattr(rclpy_implementation, 'rclpy_logging_rcutils_log', None)
    if not isinstance(logger, RcutilsLogger) or not callable(log):
        return False
    severity = LoggingSeverity(severity)
    if logger.is_enabled_for(severity):
        function, file_path, line = caller
        log(severity, logger.name, message, function, file_path, int(line))
    return True
