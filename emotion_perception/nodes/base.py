"""Lifecycle plumbing both nodes share; each node supplies its model, topics and worker.

Transitions (what SUCCESS / FAILURE lead to):
  configure   reads and validates the parameters, creates and loads the model, creates the
              publishers. FAILURE (a bad parameter, a model that cannot be loaded) leaves the
              node unconfigured; the reason is logged and kept in ``failure_reason``.
  activate    reloads the model if deactivate freed it, subscribes, starts the worker thread.
              FAILURE (e.g. out of GPU memory, or the previous worker still inside a model call)
              leaves it inactive, with the reason.
  deactivate  unsubscribes and stops the worker (answering what is pending). The model stays
              loaded (inactive = configured: a later activate is fast) unless the parameter
              ``free_on_deactivate`` is true, which frees it (and its GPU memory).
  cleanup / shutdown   also destroys the output publishers and drops the model: no thread of
              the node is left running (``/diagnostics`` keeps reporting the state).

A model call that outlives deactivate's ``worker_stop_timeout_s`` (a straggler) keeps its
worker thread until it returns. Meanwhile configure and activate fail with the reason (never
two models alive), and freeing the model (cleanup, shutdown, ``free_on_deactivate``) is done by
that thread right after the call returns, GPU cache included: freed under the call, the
weights and activations the call still holds would stay allocated. A backend whose ``unload``
cancels its calls (``unload_cancels_calls``: remote) is unloaded at once.

A worker loop that dies by an exception is restarted (the array it held is answered ERROR);
after ``WorkerThread.max_restarts`` deaths within a minute it is not, and ``/diagnostics`` is
ERROR with the reason until deactivate + activate. Logging never raises (``SafeLogger``).

A transition that is not valid in the current state (``activate`` twice, ``configure`` while
active, any request while another transition runs, an unknown id or label) is answered
``success: false`` with a throttled warning naming the state and the transition, and counted
(``lifecycle.invalid_transitions``); the node keeps running. rclpy 7.1.6 (the Jazzy wheel)
would raise ``RCLError: Transition is not registered`` out of its ``change_state`` service
callback and end the process (ros2/rclpy#1209). All transitions, from the services and from
the process itself (autostart), run one at a time.

Executor: the lifecycle services run in their own reentrant callback group, the parameter
services and ``/diagnostics`` in groups of their own, so ``get_state``, ``ros2 param`` and
``/diagnostics`` answer while ``configure`` loads a model (on the multi-threaded executor of
``lifecycle.spin_node``). ``/diagnostics`` is published from start-up, in every state.

An exception escaping a subscription, timer or service callback is logged with its traceback
(once per kind), counted (``errors.callback.<kind>``) and the node keeps spinning
(``node_utils.CallbackGuard``); one escaping ``executor.spin()`` itself is logged, counted
(``errors.executor``) and reported (``/diagnostics`` WARN for ``SPIN_FAILURE_SHOWN_S``) by
:meth:`PerceptionNode.executor_failed`, and the executor spun again (``lifecycle.spin_guarded``).
"""
from __future__ import annotations

import threading
import time
from typing import Any, ClassVar

from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter

from ..ros.diagnostics import ERROR, OK, WARN, NodeStats, diagnostics_msg, make_status
from ..ros.node_utils import (CallbackGuard, KindLogger, SafeLogger, WorkerBusyError,
                              WorkerThread)
from ..ros.params import (ParamSpec, declare_params, in_range, read_only_names, read_params,
                          unknown_parameter_overrides)
from ..ros.rclpy_compat import (available_transitions, destroy_entity, lifecycle_services,
                                lifecycle_state_label, move_to_callback_group,
                                replace_service_callback)

#: Parameters every node has (appended to each node's own table).
COMMON_PARAMS = [
    ParamSpec('free_on_deactivate', False, 'deactivate frees the model (and its GPU memory); '
              'false keeps it loaded so that activate is fast (cleanup always frees it)'),
    ParamSpec('worker_stop_timeout_s', 30.0, 'deactivate waits this long for the worker to '
              'finish a model call; a worker still busy after that makes the next activate '
              'fail with the reason until the call returns', in_range(0.01, 3600.0)),
]

#: Transitions a client may request, by id (the others are the state machine's internal ones).
REQUESTABLE = {
    Transition.TRANSITION_CONFIGURE: 'configure',
    Transition.TRANSITION_CLEANUP: 'cleanup',
    Transition.TRANSITION_ACTIVATE: 'activate',
    Transition.TRANSITION_DEACTIVATE: 'deactivate',
    Transition.TRANSITION_UNCONFIGURED_SHUTDOWN: 'shutdown',
    Transition.TRANSITION_INACTIVE_SHUTDOWN: 'shutdown',
    Transition.TRANSITION_ACTIVE_SHUTDOWN: 'shutdown',
}
#: lifecycle_msgs/Transition constant names by id, for messages
TRANSITION_NAMES = {v: k[len('TRANSITION_'):].lower() for k, v in vars(Transition).items()
                    if k.startswith('TRANSITION_') and isinstance(v, int)}
#: transition labels worth their own throttle key (any other label is 'unknown')
_KNOWN_LABELS = frozenset(TRANSITION_NAMES.values()) | frozenset(REQUESTABLE.values())
#: at most this many characters of a client's label appear in a log line
MAX_LABEL_SHOWN = 64
#: /diagnostics is (at least) WARN for this long after an exception escaped executor.spin()
SPIN_FAILURE_SHOWN_S = 60.0


class PerceptionNode(LifecycleNode):
    """Base class: parameters, lifecycle, worker thread, diagnostics (see module docstring).

    Subclasses set ``PARAMS`` and ``DIAGNOSTIC_NAME`` and implement the hooks below.
    """

    PARAMS: ClassVar[list[ParamSpec]] = []
    DIAGNOSTIC_NAME: ClassVar[str] = ''
    WORKER_NAME: ClassVar[str] = 'perception_worker'

    def __init__(self, node_name: str, **kwargs: Any) -> None:
        # Before Node.__init__: it creates the parameter services through create_service.
        self._callback_guard = CallbackGuard()
        super().__init__(node_name, **kwargs)
        self.stats = NodeStats()
        self.kind_log = KindLogger(self.get_logger())
        self._callback_guard.logger = self.get_logger()
        self._callback_guard.count = self._count_callback_error
        self._callback_guard.shutting_down = lambda: not self.context.ok()
        self._all_params = [*self.PARAMS, *COMMON_PARAMS]
        declare_params(self, self._all_params)
        self._read_only = read_only_names(self._all_params)
        self.add_pre_set_parameters_callback(self._on_pre_set_parameters)
        self.params: dict[str, Any] = {}
        #: why the last configure/activate failed ('' when it did not)
        self.failure_reason = ''
        self._outputs: list = []  # lifecycle publishers
        self._subs: list = []
        self._busy_since: float | None = None  # when the worker started the current item
        self._worker = WorkerThread(self.WORKER_NAME, self._work_loop,
                                    on_death=self._on_worker_death)
        self._transition_lock = threading.RLock()
        self._transition: tuple[str, float] | None = None  # (name, started) while one runs
        #: (monotonic, 'Type: message') of the last exception out of executor.spin()
        self._spin_failure: tuple[float, str] | None = None
        self._setup_callback_groups()
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._diag_timer = self.create_timer(self._diagnostics_period(),
                                             self._publish_diagnostics,
                                             callback_group=self._diag_group)
        #: keys of the parameter files / overrides this node does not declare -> closest name
        self.unknown_parameters = unknown_parameter_overrides(self)
        if self.unknown_parameters:
            self.stats.count('unknown_parameters', len(self.unknown_parameters))
            hints = ', '.join(f'{k!r}' + (f' (did you mean {v!r}?)' if v else '')
                              for k, v in self.unknown_parameters.items())
            self.get_logger().warning(
                f'ignoring {len(self.unknown_parameters)} parameter(s) that {self.get_name()} '
                f'does not declare: {hints}. Check the spelling in the parameter file; '
                '`ros2 param list` shows the declared names.')

    def get_logger(self) -> SafeLogger:
        """The node's logger, wrapped so that a log call can never raise into the calling
        thread (rclpy raises when one call site changes severity; see ``SafeLogger``)."""
        logger = self.__dict__.get('_safe_logger')
        if logger is None:
            logger = self._safe_logger = SafeLogger(super().get_logger())
        return logger

    # -- hooks ---------------------------------------------------------------------------------
    def _configure_model(self, params: dict[str, Any]) -> str:
        """Create and load the model from ``params``; return a description for the log.
        Raise (anything) with a clear message when it cannot be loaded."""
        raise NotImplementedError

    def _load_model(self) -> None:
        """(Re)load the model freed by ``_unload_model`` (no-op when loaded)."""
        raise NotImplementedError

    def _unload_model(self) -> None:
        """Free the model's weights (and GPU memory), keeping its configuration."""
        raise NotImplementedError

    def _release_model(self) -> None:
        """Drop the model entirely (cleanup/shutdown)."""
        raise NotImplementedError

    def _create_outputs(self) -> None:
        """Create the lifecycle publishers (``self._lifecycle_publisher``)."""
        raise NotImplementedError

    def _subscribe(self) -> list:
        """Create and return the subscriptions (on activate)."""
        raise NotImplementedError

    def _work_loop(self, stop: threading.Event) -> None:
        """The worker thread's loop; returns when ``stop`` is set."""
        raise NotImplementedError

    def _wake(self) -> None:
        """Wake the worker (so it sees a stop request)."""

    def _drain(self) -> None:
        """After the worker stopped: answer or drop what is still queued."""

    def _worker_died(self, reason: str, gave_up: bool) -> None:
        """The worker loop ended by an exception: answer what it held (and, when it is not
        restarted, what is queued). Runs in the dying worker thread."""

    def diagnostics(self) -> tuple[int, str, dict]:
        """(level, message, key values) while configured: what /diagnostics carries."""
        raise NotImplementedError

    # -- executor plumbing -----------------------------------------------------------------------
    def create_subscription(self, msg_type, topic, callback, qos_profile, **kwargs):
        """``Node.create_subscription`` with a guarded callback (see ``CallbackGuard``)."""
        events = kwargs.get('event_callbacks')
        if events is not None:
            for attr, value in list(vars(events).items()):
                if callable(value):
                    setattr(events, attr, self._callback_guard.wrap('event', value))
        return super().create_subscription(
            msg_type, topic, self._callback_guard.wrap('subscription', callback), qos_profile,
            **kwargs)

    def create_timer(self, timer_period_sec, callback, *args, **kwargs):
        """``Node.create_timer`` with a guarded callback."""
        return super().create_timer(timer_period_sec,
                                    self._callback_guard.wrap('timer', callback), *args, **kwargs)

    def create_service(self, srv_type, srv_name, callback, **kwargs):
        """``Node.create_service`` with a guarded callback."""
        return super().create_service(srv_type, srv_name,
                                      self._callback_guard.wrap('service', callback), **kwargs)

    def _on_worker_death(self, reason: str, gave_up: bool) -> None:
        self._busy_since = None
        self.stats.count('errors.worker_died')
        what = ('not restarted: ' + self._worker.failed_reason if gave_up else
                'restarted; the array it held is answered ERROR')
        self.kind_log.error('worker_died', f'the {self.WORKER_NAME} thread died ({reason}); '
                            f'{what}')
        self._worker_died(reason, gave_up)

    def executor_failed(self, exc: BaseException, text: str, giving_up: bool) -> None:
        """An exception escaped ``executor.spin()`` (``lifecycle.spin_guarded``, ``text``: its
        traceback): logged, counted (``errors.executor``), named in ``/diagnostics`` (WARN) for
        ``SPIN_FAILURE_SHOWN_S``; the executor is spun again unless ``giving_up``."""
        reason = f'{type(exc).__name__}: {exc}'
        self.stats.count('errors.executor')
        self._spin_failure = (time.monotonic(), reason)
        what = ('too many in a row: the process exits (exit code 1)' if giving_up else
                'spinning it again; the node keeps running')
        self.get_logger().error(f'the executor raised {reason}; {what}\n{text}')

    def _count_callback_error(self, kind: str) -> None:
        self.stats.count('errors.callback')
        self.stats.count(f'errors.callback.{kind}')

    def _setup_callback_groups(self) -> None:
        """Lifecycle services: reentrant (get_state answers while a transition runs; the
        transitions themselves are serialized by ``_transition_lock``). Parameter (and other
        node) services: their own group. /diagnostics: its own group (set on its timer).
        Everything else (subscriptions) stays in the default group."""
        self._lifecycle_group = ReentrantCallbackGroup()
        self._node_services_group = MutuallyExclusiveCallbackGroup()
        self._diag_group = MutuallyExclusiveCallbackGroup()
        lifecycle = lifecycle_services(self)
        for srv in list(self.services):
            if srv in lifecycle.values():
                move_to_callback_group(srv, self._lifecycle_group)
            else:
                move_to_callback_group(srv, self._node_services_group)
            replace_service_callback(srv, self._callback_guard.wrap('service', srv.callback))
        if 'change_state' in lifecycle:
            replace_service_callback(lifecycle['change_state'], self._callback_guard.wrap(
                'service', self._on_change_state_request))

    # -- lifecycle requests ----------------------------------------------------------------------
    @property
    def lifecycle_state(self) -> str:
        """'unconfigured', 'inactive', 'active', 'finalized' or a transition state."""
        return lifecycle_state_label(self)

    def _on_change_state_request(self, request, response):
        """The ``change_state`` service: never raises (rclpy#1209), never waits for another
        transition to finish (it is refused instead, as rclcpp's state machine does)."""
        ret = self.request_transition(request.transition.id, request.transition.label,
                                      wait=False, source='service')
        response.success = ret == TransitionCallbackReturn.SUCCESS
        return response

    def request_transition(self, transition_id: int, label: str = '', wait: bool = True,
                           source: str = 'local') -> TransitionCallbackReturn | None:
        """Run a lifecycle transition if it is valid now; else refuse it (warning, counter).

        Args:
            transition_id: a ``lifecycle_msgs/Transition`` id (ignored when ``label`` is set).
            label: a transition label ('configure', 'activate', 'shutdown', ...), as
                ``ros2 lifecycle set`` and ``change_state`` requests may carry.
            wait: wait for a transition in progress to finish (in-process callers) instead of
                refusing at once (service requests).

        Returns:
            The transition's result (SUCCESS / FAILURE / ERROR), or None when refused.
        """
        if not self._transition_lock.acquire(blocking=wait):
            running = self._transition[0] if self._transition else 'a transition'
            self._refuse(transition_id, label, source,
                         f'{running} is in progress (state {self.lifecycle_state!r})')
            return None
        try:
            state = self.lifecycle_state
            available = available_transitions(self)
            if label:
                tid = next((i for i, lab in available.items() if lab == label), None)
            else:
                tid = transition_id
            if tid is None or tid not in available or tid not in REQUESTABLE:
                valid = sorted({available[i] for i in available if i in REQUESTABLE})
                self._refuse(transition_id, label, source,
                             f'not a valid transition from state {state!r} (valid there: '
                             f'{", ".join(valid) or "none"})')
                return None
            self._transition = (REQUESTABLE[tid], time.monotonic())
            try:
                name = REQUESTABLE[tid]
                if name == 'shutdown':
                    return super().trigger_shutdown()
                return getattr(super(), f'trigger_{name}')()
            finally:
                self._transition = None
        finally:
            self._transition_lock.release()

    def _refuse(self, transition_id: int, label: str, source: str, why: str) -> None:
        """Count and log (throttled) a refused request. The throttle key comes from a fixed
        set (state x known transition name, or 'unknown'): a client-chosen label only appears
        in the text of a throttled line, so endless distinct labels cannot flood the log or
        grow the throttle's dictionaries."""
        if label:
            name = label if label in _KNOWN_LABELS else 'unknown'
            what = repr(label[:MAX_LABEL_SHOWN]) + ('...' if len(label) > MAX_LABEL_SHOWN
                                                     else '')
        else:
            name = TRANSITION_NAMES.get(transition_id, 'unknown')
            what = f'{name!r} (id {transition_id})'
        self.stats.count('lifecycle.invalid_transitions')
        state = self.lifecycle_state
        self.kind_log.warn(f'invalid_transition.{state}.{name}',
                           f'refused lifecycle transition {what} requested by {source}: {why}; '
                           'the node keeps running')

    # In-process triggers go through the same checks and lock (autostart, tests, tools).
    def trigger_configure(self):
        return self.request_transition(Transition.TRANSITION_CONFIGURE) \
            or TransitionCallbackReturn.FAILURE

    def trigger_activate(self):
        return self.request_transition(Transition.TRANSITION_ACTIVATE) \
            or TransitionCallbackReturn.FAILURE

    def trigger_deactivate(self):
        return self.request_transition(Transition.TRANSITION_DEACTIVATE) \
            or TransitionCallbackReturn.FAILURE

    def trigger_cleanup(self):
        return self.request_transition(Transition.TRANSITION_CLEANUP) \
            or TransitionCallbackReturn.FAILURE

    def trigger_shutdown(self):
        return self.request_transition(0, label='shutdown') or TransitionCallbackReturn.FAILURE

    # -- parameters -------------------------------------------------------------------------------
    def _on_pre_set_parameters(self, params: list[Parameter]) -> list[Parameter]:
        """Runs before rclpy's own read-only check refuses a run-time change: say why."""
        refused = [p.name for p in params if p.name in self._read_only]
        if refused:
            self.stats.count('parameters.read_only_refused', len(refused))
            self.kind_log.warn('read_only_parameter', (
                f'refused a run-time change of read-only parameter(s) {refused}: they choose '
                'code or weights to load, so they are only set by the parameter file, the '
                'launch file or the command line at start-up (use SROS2 on untrusted networks)'))
        return params

    def _diagnostics_period(self) -> float:
        value = self.get_parameter('diagnostics_period_s').value
        spec = next(s for s in self._all_params if s.name == 'diagnostics_period_s')
        if spec.check is not None and spec.check(value):
            return float(spec.default)
        return float(value)

    # -- helpers -------------------------------------------------------------------------------
    def _lifecycle_publisher(self, msg_type: type, topic: str, qos: Any):
        pub = self.create_lifecycle_publisher(msg_type, topic, qos)
        self._outputs.append(pub)
        return pub

    def _fail(self, stage: str, exc: BaseException) -> TransitionCallbackReturn:
        self.failure_reason = f'{type(exc).__name__}: {exc}'
        what = 'configure failed, staying unconfigured' if stage == 'configure' else \
            f'{stage} failed'
        self.get_logger().error(f'{what}: {self.failure_reason}')
        return TransitionCallbackReturn.FAILURE

    def _on_incompatible_qos(self, event) -> None:
        self.stats.count('qos_incompatible')

    # -- lifecycle -----------------------------------------------------------------------------
    def _worker_busy_error(self, what: str) -> WorkerBusyError | None:
        """The reason to refuse ``what`` while a stopped worker is still inside a model call
        on the old model (None: no such call)."""
        age = self._worker.straggler_age_s()
        if age is None:
            return None
        self.stats.count(f'{what}_refused.worker_busy')
        return WorkerBusyError(
            f'the previous worker thread is still inside a model call ({age:.1f} s after '
            f'deactivate asked it to stop); not {what.rstrip("e")}ing while it holds the model '
            '(its model is freed when the call returns): try again then')

    def _free_model(self, what: str, action) -> None:
        """Run ``action`` (unload or release the model) now, or, while a stopped worker is
        still inside a model call, in that worker right after the call returns (freeing the
        model and emptying the GPU cache under a running call frees nothing: the call holds
        the weights and its activations until it returns). A backend whose ``unload`` cancels
        its calls (``unload_cancels_calls``: the remote backend, which holds no weights)
        is unloaded at once."""
        if self._unload_cancels_calls():
            action()
            return
        caller = threading.get_ident()

        def run() -> None:
            action()
            if threading.get_ident() != caller:
                self.get_logger().info(f'the straggling model call returned: {what} done now')
        if not self._worker.after_stopped(run):
            self.stats.count('model_free_deferred')
            self.get_logger().warning(
                f'{what} deferred: the previous worker thread is still inside a model call; '
                'the model is freed (and the GPU cache emptied) when that call returns')

    def _unload_cancels_calls(self) -> bool:
        """True when unloading the model makes a running call return (nothing to wait for)."""
        return False

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        busy = self._worker_busy_error('configure')
        if busy is not None:
            return self._fail('configure', busy)
        try:
            self.params = read_params(self, self._all_params)
            description = self._configure_model(self.params)
        except Exception as exc:  # noqa: BLE001 - any failure: stay unconfigured, say why
            self._release_model()
            return self._fail('configure', exc)
        self.failure_reason = ''
        self._create_outputs()
        self.get_logger().info(f'configured: {description}')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        busy = self._worker_busy_error('activate')
        if busy is not None:
            return self._fail('activate', busy)
        try:
            self._load_model()  # no-op unless deactivate freed it
        except Exception as exc:  # noqa: BLE001 - ModelLoadError, GPU out of memory, ...
            return self._fail('activate', exc)
        self._subs = self._subscribe()
        try:
            self._worker.start()
        except WorkerBusyError as exc:
            self._unsubscribe()
            return self._fail('activate', exc)
        self.failure_reason = ''
        self.get_logger().info('active')
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        if self.params.get('free_on_deactivate'):
            self._free_model('free_on_deactivate unload', self._unload_model)
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f'a transition from {state.label!r} raised; back to unconfigured')
        try:
            self._teardown()
        except Exception:  # noqa: BLE001 - best effort
            pass
        return TransitionCallbackReturn.SUCCESS

    def _unsubscribe(self) -> None:
        for sub in self._subs:
            destroy_entity(self, sub)  # while the executor spins (rclpy_compat says why)
        self._subs = []

    def _stop_processing(self, worker_timeout_s: float | None = None) -> None:
        self._unsubscribe()
        timeout = float(self.params.get('worker_stop_timeout_s', 30.0)
                        if worker_timeout_s is None else worker_timeout_s)
        if not self._worker.stop(wake=self._wake, timeout=timeout):
            self.stats.count('worker_stop_timeouts')
            self.get_logger().warning(
                f'the worker did not finish its model call within worker_stop_timeout_s='
                f'{timeout}; it ends when the call returns (its result is not published), and '
                'activate is refused until then')
        self._drain()

    def _teardown(self, worker_timeout_s: float | None = None) -> None:
        """Everything back to unconfigured; safe to call twice (spin_node calls it on exit,
        with a short ``worker_timeout_s``)."""
        self._stop_processing(worker_timeout_s)
        for pub in self._outputs:
            destroy_entity(self, pub)
        self._outputs = []
        self._free_model('model release', self._release_model)

    def _publish_diagnostics(self) -> None:
        state = self.lifecycle_state
        if state in ('inactive', 'active') and self.params:
            level, message, values = self.diagnostics()
            if state == 'inactive' and level == OK:
                message = 'inactive (configured; activate to process)'
            worker = self._worker
            values['worker_restarts'] = worker.restarts
            if worker.last_failure:
                values['worker_last_failure'] = worker.last_failure
            if state == 'active' and not worker.running and self._transition is None:
                level = ERROR
                message = ('worker thread not running: ' + (worker.failed_reason or
                           worker.last_failure or 'ended') + ' (deactivate + activate restarts it)')
        else:
            level, message, values = self._lifecycle_diagnostics(state)
        level, message = self._with_spin_failure(level, message, values)
        values = {'lifecycle_state': state, **values}
        status = make_status(f'{self.get_name()}: {self.DIAGNOSTIC_NAME}',
                             self.get_fully_qualified_name(), level, message, values)
        self._diag_pub.publish(diagnostics_msg(self.get_clock().now().to_msg(), [status]))

    def _with_spin_failure(self, level: int, message: str, values: dict) -> tuple[int, str]:
        """(level, message) raised to WARN and naming a recent exception out of
        ``executor.spin()`` (see :meth:`executor_failed`)."""
        failure = self._spin_failure
        if failure is None:
            return level, message
        values['executor_last_error'] = failure[1]
        age = time.monotonic() - failure[0]
        if age > SPIN_FAILURE_SHOWN_S:
            return level, message
        note = f'the executor raised {failure[1]} {age:.0f} s ago and was spun again'
        if level == OK:
            return WARN, note
        return level, f'{message}; {note}'

    def _lifecycle_diagnostics(self, state: str) -> tuple[int, str, dict]:
        """What /diagnostics says while not configured (or in a transition)."""
        running = self._transition
        if running is not None:
            level, message = OK, (f'{state}: {running[0]} running for '
                                  f'{time.monotonic() - running[1]:.1f} s')
        elif state == 'unconfigured' and self.failure_reason:
            level, message = ERROR, f'unconfigured: configure failed: {self.failure_reason}'
        elif state == 'unconfigured':
            level, message = OK, 'unconfigured (waiting for configure)'
        elif state == 'finalized':
            level, message = OK, 'finalized (shut down)'
        else:
            level, message = WARN, state
        values: dict[str, object] = dict(sorted(self.stats.snapshot().items()))
        if self.failure_reason:
            values['failure_reason'] = self.failure_reason
        return level, message, values

    def destroy_node(self) -> None:
        try:
            self.destroy_timer(self._diag_timer)
        except Exception:  # noqa: BLE001 - already destroyed
            pass
        super().destroy_node()

