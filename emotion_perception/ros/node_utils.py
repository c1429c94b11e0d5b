"""Small pieces both nodes share: per-kind throttled logging, image subscriptions, workers."""
from __future__ import annotations

import threading
import time
from typing import Callable

from sensor_msgs.msg import CompressedImage, Image

from .image_conversion import compressed_to_rgb, image_msg_to_rgb
from .qos import image_qos, warn_on_incompatible_qos

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
    """'raw' -> (topic, Image); 'compressed' -> (topic + '/compressed', CompressedImage)."""
    if transport == 'raw':
        return topic, Image
    if transport == 'compressed':
        return f'{topic}/compressed', CompressedImage
    raise ValueError(f"image_transport must be 'raw' or 'compressed', got {transport!r}")


def subscribe_image(node, topic: str, transport: str, reliability: str, depth: int,
                    callback: Callable, callback_group=None,
                    on_incompatible_qos: Callable[[object], None] | None = None):
    """Image subscription with the configured QoS and a clear warning on QoS mismatch
    (``on_incompatible_qos(event)`` is called too, e.g. to count it)."""
    name, msg_type = image_topic_and_type(topic, transport)
    return node.create_subscription(
        msg_type, name, callback, image_qos(reliability, depth), callback_group=callback_group,
        event_callbacks=warn_on_incompatible_qos(node.get_logger(), name, on_incompatible_qos))


def with_message_info(callback: Callable[[object, dict | None], None]) -> Callable:
    """A subscription callback that receives ``(msg, message_info)`` where rclpy supports it
    (message_info is a dict with 'publication_sequence_number', ...), else ``(msg, None)``."""
    try:
        from rclpy.subscription import Subscription
        supported = hasattr(Subscription, 'CallbackType')
    except ImportError:  # pragma: no cover
        supported = False
    if supported:
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


class WorkerThread:
    """A daemon thread running ``loop(stop_event)`` until ``stop()``; restartable."""

    def __init__(self, name: str, loop: Callable[[threading.Event], None]) -> None:
        self._name, self._loop = name, loop
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, args=(self._stop,), name=self._name,
                                        daemon=True)
        self._thread.start()

    def stop(self, wake: Callable[[], None] | None = None, timeout: float = 30.0) -> None:
        self._stop.set()
        if wake is not None:
            wake()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None
