"""Small pieces both nodes share: per-kind throttled logging, image subscriptions, workers,
callbacks that cannot take the executor down."""
from __future__ import annotations

import inspect
import threading
import time
import traceback
from typing import Any, Callable

from sensor_msgs.msg import CompressedImage, Image

from .image_conversion import compressed_to_rgb, image_msg_to_rgb
from .qos import image_qos, warn_on_incompatible_qos
from .rclpy_compat import subscription_passes_message_info

#: Refuse images larger than this before allocating (8K UHD is 33 Mpx).
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


class KindLogger:
    """Logs each kind of problem at once, then at most every ``period_s`` seconds per kind,
    with the number of occurrences in between."""

    def __init__(self, logger, period_s: float = 5.0) -> None:
        self._logger = logger
        self._period_s = period_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def warn(self, kind: str, message: str, error: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self._period_s:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return
            self._last[kind] = now
            skipped = self._suppressed.pop(kind, 0)
        suffix = f' ({skipped} more since last report)' if skipped else ''
        (self._logger.error if error else self._logger.warning)(f'[{kind}] {message}{suffix}')


def image_topic_and_type(topic: str, transport: str) -> tuple[str, type]:
    """'raw' -> (topic, Image); 'compressed' -> (topic + '/compressed', CompressedImage).

    ``topic`` should be the resolved (remapped) base topic for 'compressed', as image_transport
    does: see :func:`subscribe_image`.
    """
    if transport == 'raw':
        return topic, Image
    if transport == 'compressed':
        return f'{topic.rstrip("/")}/compressed', CompressedImage
    raise ValueError(f"image_transport must be 'raw' or 'compressed', got {transport!r}")


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


def decode_image(msg, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
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


class WorkerThread:
    """A daemon thread running ``loop(stop_event)`` until ``stop()``; restartable.

    Every start creates a fresh stop event, so a previous thread that outlived ``stop()``'s
    join timeout (stuck in a long model call) still sees its own event set and ends when the
    call returns; :meth:`start` refuses to start a second thread while it is alive.
    """

    def __init__(self, name: str, loop: Callable[[threading.Event], None]) -> None:
        self._name, self._loop = name, loop
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None
        #: a thread that did not end within stop()'s timeout, with when it was asked to stop
        self._straggler: tuple[threading.Thread, float] | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def straggler_age_s(self) -> float | None:
        """Seconds since a previous thread was asked to stop and has not ended (None: none)."""
        if self._straggler is None:
            return None
        thread, since = self._straggler
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
        self._thread = threading.Thread(target=self._loop, args=(self._stop,), name=self._name,
                                        daemon=True)
        self._thread.start()

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
            self._straggler = (thread, time.monotonic())
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

    KINDS = ('subscription', 'timer', 'service')

    def __init__(self, logger: Any = None, count: Callable[[str], None] | None = None,
                 period_s: float = 5.0) -> None:
        self.logger = logger
        self.count = count
        self._logged: set[str] = set()
        self._kind_log: KindLogger | None = None
        self._period_s = period_s
        self._lock = threading.Lock()

    def failed(self, kind: str, where: str, exc: BaseException) -> None:
        if self.count is not None:
            try:
                self.count(kind)
            except Exception:  # noqa: BLE001 - counting must never raise out of here
                pass
        if self.logger is None:
            return
        with self._lock:
            first = kind not in self._logged
            self._logged.add(kind)
            if self._kind_log is None:
                self._kind_log = KindLogger(self.logger, self._period_s)
        text = f'{type(exc).__name__}: {exc}'
        try:
            if first:
                tb = ''.join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                self.logger.error(f'[callback.{kind}] exception in {kind} callback {where} '
                                  f'(the node keeps running; counted as errors.callback.{kind}):'
                                  f'\n{tb}')
            else:
                self._kind_log.warn(f'callback.{kind}', f'exception in {kind} callback {where}:'
                                    f' {text}', error=True)
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
