"""Lifecycle plumbing both nodes share; each node supplies its model, topics and worker.

Transitions (what SUCCESS / FAILURE lead to):
  configure   reads and validates the parameters, creates and loads the model, creates the
              publishers and the /diagnostics timer. FAILURE (a bad parameter, a model that
              cannot be loaded) leaves the node unconfigured; the reason is logged and kept in
              ``failure_reason``.
  activate    reloads the model if deactivate freed it, subscribes, starts the worker thread.
              FAILURE (e.g. out of GPU memory) leaves it inactive.
  deactivate  unsubscribes, stops the worker (answering what is pending), frees the model
              (and GPU memory).
  cleanup / shutdown   also destroys publishers and timers and drops the model: no thread of
              the node is left running.
"""
from __future__ import annotations

import threading
from typing import Any, ClassVar

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from ..ros.diagnostics import NodeStats, diagnostics_msg, make_status
from ..ros.node_utils import KindLogger, WorkerThread
from ..ros.params import ParamSpec, declare_params, read_params


class PerceptionNode(LifecycleNode):
    """Base class: parameters, lifecycle, worker thread, diagnostics (see module docstring).

    Subclasses set ``PARAMS`` and ``DIAGNOSTIC_NAME`` and implement the hooks below.
    """

    PARAMS: ClassVar[list[ParamSpec]] = []
    DIAGNOSTIC_NAME: ClassVar[str] = ''
    WORKER_NAME: ClassVar[str] = 'perception_worker'

    def __init__(self, node_name: str, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        declare_params(self, self.PARAMS)
        self.kind_log = KindLogger(self.get_logger())
        self.stats = NodeStats()
        self.params: dict[str, Any] = {}
        #: why the last configure/activate failed ('' when it did not)
        self.failure_reason = ''
        self._outputs: list = []  # lifecycle publishers
        self._subs: list = []
        self._diag_pub = self._diag_timer = None
        self._busy_since: float | None = None  # when the worker started the current item
        self._worker = WorkerThread(self.WORKER_NAME, self._work_loop)

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

    def diagnostics(self) -> tuple[int, str, dict]:
        """(level, message, key values) now: what /diagnostics carries."""
        raise NotImplementedError

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
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.params = read_params(self, self.PARAMS)
            description = self._configure_model(self.params)
        except Exception as exc:  # noqa: BLE001 - any failure: stay unconfigured, say why
            self._release_model()
            return self._fail('configure', exc)
        self.failure_reason = ''
        self._create_outputs()
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._diag_timer = self.create_timer(self.params['diagnostics_period_s'],
                                             self._publish_diagnostics)
        self.get_logger().info(f'configured: {description}')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._load_model()  # no-op unless deactivate freed it
        except Exception as exc:  # noqa: BLE001 - ModelLoadError, GPU out of memory, ...
            return self._fail('activate', exc)
        self._subs = self._subscribe()
        self._worker.start()
        self.get_logger().info('active')
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._unload_model()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _stop_processing(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        self._worker.stop(wake=self._wake)
        self._drain()

    def _teardown(self) -> None:
        """Everything back to unconfigured; safe to call twice (spin_node calls it on exit)."""
        self._stop_processing()
        for pub in self._outputs:
            self.destroy_lifecycle_publisher(pub)
        self._outputs = []
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        if self._diag_pub is not None:
            self.destroy_publisher(self._diag_pub)
            self._diag_pub = None
        self._release_model()

    def _publish_diagnostics(self) -> None:
        level, message, values = self.diagnostics()
        status = make_status(f'{self.get_name()}: {self.DIAGNOSTIC_NAME}',
                             self.get_fully_qualified_name(), level, message, values)
        if self._diag_pub is not None:
            self._diag_pub.publish(diagnostics_msg(self.get_clock().now().to_msg(), [status]))
