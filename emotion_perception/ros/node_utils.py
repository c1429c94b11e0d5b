"""Small pieces both nodes share: per-kind throttled logging, image subscriptions, workers,
callbacks that cannot take the executor down."""
from __future__ import annotations

import inspect
import os
import sys
import threading
import time
import traceback
from typing import Any, Callable

from rclpy.logging import LoggingSeverity
from sensor_msgs.msg import CompressedImage, Image

from .image_conversion import DEFAULT_MAX_PIXELS, compressed_to_rgb, image_msg_to_rgb
from .qos import image_qos, warn_on_incompatible_qos
from .rclpy_compat import Caller, log_with_caller, subscription_passes_message_info

def _this_file() -> str:
    return sys._getframe().f_code.co_filename


#: the file of this module's code objects: its logging wrappers are not a message's origin
_THIS_FILE = _this_file()


def caller_outside_wrappers() -> Caller:
    """(function, file, line) of the innermost frame outside this module: the code that
    called :class:`SafeLogger`, :class:`KindLogger` or :class:`CallbackGuard`."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == _THIS_FILE:
        frame = frame.f_back
    if frame is None:  # logged from this module's own top level (never, in practice)
        return '<module>', os.path.abspath(_THIS_FILE), 0
    return frame.f_code.co_name, os.path.abspath(frame.f_code.co_filename), frame.f_lineno


def exception_origin(exc: BaseException) -> Caller | None:
    """(function, file, line) where ``exc`` was raised (its innermost traceback frame)."""
    tb = traceback.extract_tb(exc.__traceback__)
    if not tb:
        return None
    return tb[-1].name, os.path.abspath(tb[-1].filename), tb[-1].lineno or 0


class SafeLogger:
    """A logger that cannot raise into the thread that logs, and logs with its caller's
    location.

    rclpy's ``RcutilsLogger.log`` takes a message's location (file, function, line: what
    /rosout carries and rqt_console shows) from the stack, so a wrapper's messages would all
    carry the wrapper's line; and it keeps one context per call site, raising
    ``ValueError('Logger severity cannot be changed between calls.')`` when one site logs at
    another severity than before; it also raises during shutdown (an invalid context) and for
    filter changes. Here every message goes out with the location of the code that called
    this class (or :class:`KindLogger` / :class:`CallbackGuard`, the wrappers of this module;
    ``caller=`` names another one), through ``rclpy_compat.log_with_caller``, which keeps no
    per-site context, so no severity change can raise. A logger that is not rclpy's (or an
    rclpy without that binding) is called from each method's own line with one fixed severity
    (so that call site has one severity, whoever calls). Any exception is swallowed: a failed
    log line is counted in ``failures`` and written to stderr, never raised. Other attributes
    (``name``, ``get_child``, ...) are the wrapped logger's.
    """

    def __init__(self, logger: Any) -> None:
        self._logger = logger
        #: log calls that raised (and were written to stderr instead)
        self.failures = 0

    def _failed(self, severity: str, message: str, exc: BaseException) -> None:
        self.failures += 1
        try:
            sys.stderr.write(f'[{severity}] {message} (logger failed: '
                             f'{type(exc).__name__}: {exc})\n')
        except Exception:  # noqa: BLE001 - a closed stderr
            pass

    def _at_caller(self, severity: LoggingSeverity, message: str, caller: Caller | None
                   ) -> bool:
        """Logged with the caller's location (True), or not an rclpy logger (False)."""
        return log_with_caller(self._logger, severity, message,
                               caller or caller_outside_wrappers())

    # The fallback: one call site per severity; do not merge these methods.
    def debug(self, message: str, caller: Caller | None = None) -> None:
        try:
            if not self._at_caller(LoggingSeverity.DEBUG, message, caller):
                self._logger.debug(message)
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            self._failed('DEBUG', message, exc)

    def info(self, message: str, caller: Caller | None = None) -> None:
        try:
            if not self._at_caller(LoggingSeverity.INFO, message, caller):
                self._logger.info(message)
        except Exception as exc:  # noqa: BLE001
            self._failed('INFO', message, exc)

    def warning(self, message: str, caller: Caller | None = None) -> None:
        try:
            if not self._at_caller(LoggingSeverity.WARN, message, caller):
                self._logger.warning(message)
        except Exception as exc:  # noqa: BLE001
            self._failed('WARN', message, exc)

    warn = warning

    def error(self, message: str, caller: Caller | None = None) -> None:
        try:
            if not self._at_caller(LoggingSeverity.ERROR, message, caller):
                self._logger.error(message)
        except Exception as exc:  # noqa: BLE001
            self._failed('ERROR', message, exc)

    def fatal(self, message: str, caller: Caller | None = None) -> None:
        try:
            if not self._at_caller(LoggingSeverity.FATAL, message, caller):
                self._logger.fatal(message)
        except Exception as exc:  # noqa: BLE001
            self._failed('FATAL', message, exc)

    def __getattr__(self, name: str) -> Any:
        if name == '_logger':  # not set yet (copy, unpickling)
            raise AttributeError(name)
        return getattr(self._logger, name)


def safe_logger(logger: Any) -> SafeLogger:
    """``logger`` wrapped in a :class:`SafeLogger` (unchanged when it already is one)."""
    return logger if isinstance(logger, SafeLogger) else SafeLogger(logger)


class KindLogger:
    """Logs each kind of problem at once, then at most every ``period_s`` seconds per kind,
    with the number of occurrences in between.

    ``kind`` must come from a fixed set of names chosen by the code (it is a key of two
    dictionaries); text a client chose belongs in ``message`` only. Logging never raises (see
    :class:`SafeLogger`): warnings and errors go out through different call sites.
    """

    #: a safety net: kinds beyond this many share one throttle key ('other_kinds')
    MAX_KINDS = 256

    def __init__(self, logger, period_s: float = 5.0) -> None:
        self._logger = safe_logger(logger)
        self._period_s = period_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def warn(self, kind: str, message: str, error: bool = False,
             caller: Caller | None = None) -> None:
        """Log ``[kind] message`` (a warning; ``error``: an error) unless ``kind`` was logged
        within ``period_s``; ``caller`` (function, file, line): the location to log with
        (default: the code that called this)."""
        now = time.monotonic()
        with self._lock:
            if kind not in self._last and len(self._last) >= self.MAX_KINDS:
                message = f'({kind[:64]}) {message}'
                kind = 'other_kinds'
            last = self._last.get(kind)
            if last is not None and now - last < self._period_s:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return
            self._last[kind] = now
            skipped = self._suppressed.pop(kind, 0)
        suffix = f' ({skipped} more since last report)' if skipped else ''
        if error:
            self._logger.error(f'[{kind}] {message}{suffix}', caller)
        else:
            self._logger.warning(f'[{kind}] {message}{suffix}', caller)

    def error(self, kind: str, message: str, caller: Caller | None = None) -> None:
        """:meth:`warn` at error severity."""
        self.warn(kind, message, error=True, caller=caller)


#: the image transports the nodes subscribe with (their ``image_transport`` parameter)
IMAGE_TRANSPORTS = ('raw', 'compressed')


def image_topic_and_type(topic: str, transport: str) -> tuple[str, type]:
    """'raw' -> (topic, Image); 'compressed' -> (topic + '/compressed', CompressedImage).

    ``topic`` should be the resolved (remapped) base topic for 'compressed', as image_transport
    does: see :func:`subscribe_image`.
    """
    if transport == 'raw':
        return topic, Image
    if transport == 'compressed':
        return f'{topic.rstrip("/")}/compressed', CompressedImage
    raise ValueError(f'image_transport must be one of {IMAGE_TRANSPORTS}, got {transport!r}')


def image_subscription_topic(node, topic: str, transport: str) -> tuple[str, type]:
    """The topic and type the node subscribes for ``topic`` with ``transport``.

    'raw' subscribes ``topic`` itself (remapping applies as usual). 'compressed' subscribes the
    *resolved* base topic + '/compressed', as image_transport does, so that a remap of the base
    topic (``image:=/cam/image_raw``, the launch file's ``camera_topic``) moves the compressed
    subscription too (``/cam/image_raw/compressed``); a relative ``image/compressed`` would not
    follow that remap.
    """
    if transport == 'compressed':
        return image_topic_and_type(node.resolve_topic_name(topic), transport)
    return image_topic_and_type(topic, transport)


def subscribe_image(node, topic: str, transport: str, reliability: str, depth: int,
                    callback: Callable, callback_group=None,
                    on_incompatible_qos: Callable[[object], None] | None = None):
    """Image subscription with the configured QoS and a clear warning on QoS mismatch
    (``on_incompatible_qos(event)`` is called too, e.g. to count it). See
    :func:`image_subscription_topic` for the topic."""
    name, msg_type = image_subscription_topic(node, topic, transport)
    return node.create_subscription(
        msg_type, name, callback, image_qos(reliability, depth), callback_group=callback_group,
        event_callbacks=warn_on_incompatible_qos(node.get_logger(), name, on_incompatible_qos))


def with_message_info(callback: Callable[[object, dict | None], None]) -> Callable:
    """A subscription callback that receives ``(msg, message_info)`` where rclpy supports it
    (message_info is a dict with 'publication_sequence_number', ...), else ``(msg, None)``."""
    if subscription_passes_message_info():
        return lambda msg, info: callback(msg, info)
    return lambda msg: callback(msg, None)


def decode_image(msg, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Image or CompressedImage -> (H, W, 3) uint8 RGB. Raises ImageConversionError (its
    ``kind`` names the problem); oversized images are refused before anything is allocated."""
    if isinstance(msg, CompressedImage):
        return compressed_to_rgb(msg, max_pixels=max_pixels)
    return image_msg_to_rgb(msg, max_pixels=max_pixels)


def reason_kind(reason: str) -> str:
    """A short counter name for a result's reason: the text before the first ':' or '(',
    as an identifier ('bad box: box is inverted ...' -> 'bad_box')."""
    head = reason
    for sep in (':', '('):
        head = head.split(sep, 1)[0]
    slug = ''.join(c if c.isalnum() else '_' for c in head.strip().lower()).strip('_')
    while '__' in slug:
        slug = slug.replace('__', '_')
    return slug[:40] or 'unspecified'


class WorkerBusyError(RuntimeError):
    """A previous worker thread has not ended yet (it is still inside a model call)."""


class _Run:
    """One thread of a :class:`WorkerThread`: done once its loop has returned, and what is to
    run then (``after_stopped``)."""

    def __init__(self) -> None:
        self.done = False
        self.deferred: list[Callable[[], None]] = []


class WorkerThread:
    """A daemon thread running ``loop(stop_event)`` until ``stop()``; restartable.

    Every start creates a fresh stop event, so a previous thread that outlived ``stop()``'s
    join timeout (stuck in a long model call) still sees its own event set and ends when the
    call returns; :meth:`start` refuses to start a second thread while it is alive, and
    :meth:`after_stopped` defers freeing the model it uses until then.

    A loop that ends by an exception (any ``BaseException``, while it was not asked to stop)
    has died: ``on_death(reason, gave_up)`` is called (the node answers what the loop held,
    counts and logs it) and the loop is started again in the same thread after a short
    backoff, up to ``max_restarts`` times within ``restart_window_s``; past that the thread
    gives up (``gave_up=True``), ``failed_reason`` says why and ``running`` is False (the
    node's diagnostics turn ERROR). The next :meth:`start` clears it.
    """

    def __init__(self, name: str, loop: Callable[[threading.Event], None],
                 on_death: Callable[[str, bool], None] | None = None, max_restarts: int = 5,
                 restart_window_s: float = 60.0) -> None:
        self._name, self._loop = name, loop
        self.on_death = on_death
        self.max_restarts, self.restart_window_s = max_restarts, restart_window_s
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None
        #: a thread that did not end within stop()'s timeout, with when it was asked to stop
        self._straggler: tuple[threading.Thread, float, _Run] | None = None
        self._run_rec: _Run | None = None
        self._lock = threading.Lock()
        #: the last exception of a deferred action ('' none)
        self.deferred_error = ''
        #: times the loop died and was started again (since construction)
        self.restarts = 0
        #: why the loop last died ('' never), and why the thread gave up ('' it did not)
        self.last_failure = ''
        self.failed_reason = ''
        self._deaths: list[float] = []

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def straggler_age_s(self) -> float | None:
        """Seconds since a previous thread was asked to stop and has not ended (None: none)."""
        if self._straggler is None:
            return None
        thread, since, _ = self._straggler
        if not thread.is_alive():
            self._straggler = None
            return None
        return time.monotonic() - since

    def start(self) -> None:
        """Start a new thread (no-op while one runs).

        Raises:
            WorkerBusyError: the previous thread is still running after ``stop()``.
        """
        if self.running:
            return
        age = self.straggler_age_s()
        if age is not None:
            raise WorkerBusyError(
                f'the previous {self._name} thread is still inside a model call, {age:.1f} s '
                'after it was asked to stop; not starting a second one on the same model '
                '(try again when the call has returned)')
        self._stop = threading.Event()
        self.failed_reason = ''
        self._deaths = []
        self._run_rec = _Run()
        self._thread = threading.Thread(target=self._run, args=(self._stop, self._run_rec),
                                        name=self._name, daemon=True)
        self._thread.start()

    def after_stopped(self, action: Callable[[], None]) -> bool:
        """Run ``action`` now if no stopped thread is still inside its loop (a model call);
        else in that thread, right after its loop returns (the call has let go of the model).
        Returns True when it ran now. Actions run in order; an exception of one is kept in
        ``deferred_error`` (and raised when it runs now)."""
        with self._lock:
            straggler = self._straggler
            if straggler is not None and not straggler[2].done:
                straggler[2].deferred.append(action)
                return False
        action()
        return True

    def _run(self, stop: threading.Event, rec: _Run) -> None:
        try:
            self._run_loop(stop)
        finally:
            while True:
                with self._lock:
                    actions, rec.deferred = rec.deferred, []
                    if not actions:
                        rec.done = True
                        break
                for action in actions:
                    try:
                        action()
                    except BaseException as exc:  # noqa: BLE001 - the thread ends anyway
                        self.deferred_error = f'{type(exc).__name__}: {exc}'

    def _run_loop(self, stop: threading.Event) -> None:
        while True:
            try:
                self._loop(stop)
                return
            except BaseException as exc:  # noqa: BLE001 - any death is reported, see class
                if stop.is_set():
                    return
                where = ''
                tb = traceback.extract_tb(exc.__traceback__)
                if tb:
                    where = f' at {tb[-1].filename.rsplit("/", 1)[-1]}:{tb[-1].lineno}'
                reason = f'{type(exc).__name__}: {exc}{where}'
                now = time.monotonic()
                self._deaths = [t for t in self._deaths if now - t < self.restart_window_s]
                self._deaths.append(now)
                gave_up = len(self._deaths) > self.max_restarts
                self.last_failure = reason
                if gave_up:
                    self.failed_reason = (
                        f'the {self._name} thread died {len(self._deaths)} times within '
                        f'{self.restart_window_s:.0f} s, not restarted; last: {reason}')
                if self.on_death is not None:
                    try:
                        self.on_death(reason, gave_up)
                    except BaseException:  # noqa: BLE001 - reporting must not end the restart
                        pass
                if gave_up:
                    return
                self.restarts += 1
                if stop.wait(min(0.05 * 2 ** (len(self._deaths) - 1), 2.0)):
                    return

    def stop(self, wake: Callable[[], None] | None = None, timeout: float = 30.0) -> bool:
        """Ask the thread to end and wait up to ``timeout`` s. Returns True when it ended (or
        none ran); False when it is still running (kept as a straggler, see :meth:`start`)."""
        if self._stop is not None:
            self._stop.set()
        if wake is not None:
            wake()
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        thread.join(timeout)
        if thread.is_alive():
            with self._lock:
                self._straggler = (thread, time.monotonic(), self._run_rec)
            return False
        return True


def _arity(callback: Callable) -> int:
    """1 or 2: how many positional arguments a subscription callback takes (as rclpy decides
    between message-only and message + message_info callbacks)."""
    try:
        sig = inspect.signature(callback)
    except (TypeError, ValueError):  # builtins without a signature
        return 1
    try:
        sig.bind(object())
        return 1
    except TypeError:
        pass
    try:
        sig.bind(object(), object())
        return 2
    except TypeError:
        return 1


class CallbackGuard:
    """Wraps executor callbacks so that an exception escaping one does not end the process.

    rclpy re-raises an exception from a subscription, timer or service callback out of
    ``executor.spin()``; a node process then dies on one bad message. A guarded callback
    logs the exception with its traceback the first time for each kind (then a throttled
    one-line error), calls ``count(kind)`` and returns: the executor keeps spinning. A guarded
    service callback answers with the (empty) response it was given, so the client is not left
    waiting.

    ``logger`` and ``count`` may be set after construction (rclpy creates the parameter
    services inside ``Node.__init__``, before the node's own attributes exist).
    """

    def __init__(self, logger: Any = None, count: Callable[[str], None] | None = None,
                 period_s: float = 5.0) -> None:
        self.logger = logger
        self.count = count
        #: returns True once the process is shutting down (the node's context is no longer ok):
        #: an exception then (a timer publishing on an invalidated context after SIGINT) is the
        #: shutdown itself, counted but not logged as a failure
        self.shutting_down: Callable[[], bool] | None = None
        self._logged: set[str] = set()
        self._kind_log: KindLogger | None = None
        self._period_s = period_s
        self._lock = threading.Lock()

    def _during_shutdown(self) -> bool:
        try:
            return self.shutting_down is not None and bool(self.shutting_down())
        except Exception:  # noqa: BLE001 - a destroyed context during shutdown
            return True

    def failed(self, kind: str, where: str, exc: BaseException) -> None:
        if self.count is not None:
            try:
                self.count(kind)
            except Exception:  # noqa: BLE001 - counting must never raise out of here
                pass
        if self.logger is None or self._during_shutdown():
            return
        logger = safe_logger(self.logger)
        with self._lock:
            first = kind not in self._logged
            self._logged.add(kind)
            if self._kind_log is None:
                self._kind_log = KindLogger(logger, self._period_s)
        text = f'{type(exc).__name__}: {exc}'
        origin = exception_origin(exc)  # the location logged: where the callback raised
        try:
            if first:
                tb = ''.join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                logger.error(f'[callback.{kind}] exception in {kind} callback {where} '
                             f'(the node keeps running; counted as errors.callback.{kind}):'
                             f'\n{tb}', origin)
            else:
                self._kind_log.error(f'callback.{kind}', f'exception in {kind} callback {where}:'
                                     f' {text}', origin)
        except Exception:  # noqa: BLE001 - logging during shutdown
            pass

    def wrap(self, kind: str, callback: Callable) -> Callable:
        """A callback with the same arity as ``callback`` that never raises ``Exception``."""
        if getattr(callback, '_ep_guarded', False):
            return callback
        where = getattr(callback, '__qualname__', None) or repr(callback)
        guard = self

        if kind == 'subscription':
            if _arity(callback) == 2:
                def wrapped(msg, info):
                    try:
                        return callback(msg, info)
                    except Exception as exc:  # noqa: BLE001 - see the class docstring
                        guard.failed(kind, where, exc)
                        return None
            else:
                def wrapped(msg):
                    try:
                        return callback(msg)
                    except Exception as exc:  # noqa: BLE001
                        guard.failed(kind, where, exc)
                        return None
        elif kind == 'service':
            def wrapped(request, response):
                try:
                    return callback(request, response)
                except Exception as exc:  # noqa: BLE001
                    guard.failed(kind, where, exc)
                    return response
        else:
            def wrapped(*args):
                try:
                    return callback(*args)
                except Exception as exc:  # noqa: BLE001
                    guard.failed(kind, where, exc)
                    return None
        wrapped._ep_guarded = True  # type: ignore[attr-defined]
        wrapped.__qualname__ = f'guarded({where})'
        return wrapped
