"""An emotion node running in-process with its topics wired to a test harness.

``EmotionRig`` starts the real ``EmotionNode`` (by default with a fake backend from
``fake_backends``), publishers for ``image`` / ``image/compressed`` / ``detections`` and
collectors for ``emotions`` and ``/diagnostics``; ``send`` publishes one frame and waits for
its answer. Used by the robustness tests and ``bench/bench_overload.py``.
The caller must have set ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a ROS_DOMAIN_ID.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image, RegionOfInterest
from std_msgs.msg import Header

from emotion_perception.msg import PersonDetection, PersonDetectionArray, PersonEmotionArray

from ..nodes.emotion_node import EmotionNode
from ..ros.messages import stamp_key
from ..ros.qos import RESULTS_QOS, image_qos
from .fake_backends import FakeBackend, spec
from .ros_harness import RosHarness


def header(sec: int, nsec: int = 0, frame: str = 'camera') -> Header:
    h = Header(frame_id=frame)
    h.stamp.sec, h.stamp.nanosec = int(sec), int(nsec)
    return h


def det_array(hdr: Header, boxes: Iterable[tuple[str, tuple[int, int, int, int]]],
              width: int = 64, height: int = 48) -> PersonDetectionArray:
    """boxes: (track_id, (x_offset, y_offset, width, height)) per person."""
    msg = PersonDetectionArray(header=hdr, image_width=width, image_height=height)
    for tid, (x, y, w, h) in boxes:
        msg.detections.append(PersonDetection(
            track_id=tid, confidence=0.9,
            bbox=RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h)))
    return msg


def key(msg: Any) -> tuple[int, int]:
    """The (sec, nanosec) stamp of a message's header."""
    return stamp_key(msg.header)


class EmotionRig:
    """Emotion node + publishers + collectors on one harness."""

    def __init__(self, harness: RosHarness, backend: type[FakeBackend] | str = FakeBackend,
                 name: str = 'emotion_node', activate: bool = True,
                 keep: Callable[[PersonEmotionArray], Any] | None = None, **params: Any) -> None:
        """``keep`` turns each received emotions array into what ``out`` stores (default: the
        message itself; a long run keeps a compact summary so the collector does not grow the
        process's memory)."""
        self.harness = harness
        params.setdefault('backend.name', backend if isinstance(backend, str) else spec(backend))
        params.setdefault('image_reliability', 'reliable')
        params.setdefault('reuse.enabled', False)
        params.setdefault('pair_timeout_s', 0.3)
        self.node = harness.add(EmotionNode(name, context=harness.context, parameter_overrides=[
            Parameter(k, value=v) for k, v in params.items()]))
        self.out: list = []
        store = self.out.append if keep is None else (lambda m: self.out.append(keep(m)))
        harness.node.create_subscription(PersonEmotionArray, 'emotions', store, RESULTS_QOS)
        self.diagnostics: list[DiagnosticArray] = harness.collect(DiagnosticArray,
                                                                  '/diagnostics')
        transport = params.get('image_transport', 'raw')
        reliability = 'reliable' if params['image_reliability'] == 'reliable' else 'best_effort'
        depth = max(10, params.get('image_queue_depth', 10))  # the camera keeps as many
        if transport == 'compressed':
            self.img_pub = harness.publisher(CompressedImage, 'image/compressed',
                                             image_qos(reliability, depth))
        else:
            self.img_pub = harness.publisher(Image, 'image', image_qos(reliability, depth))
        self.det_pub = harness.publisher(PersonDetectionArray, 'detections', RESULTS_QOS)
        if activate:
            self.activate()

    def activate(self) -> None:
        node = self.node
        assert node.trigger_configure().name == 'SUCCESS', node.failure_reason
        assert node.trigger_activate().name == 'SUCCESS', node.failure_reason
        assert self.harness.wait_matched(self.img_pub) and self.harness.wait_matched(self.det_pub)

    @property
    def backend(self) -> Any:
        return self.node.pipeline.backend

    def counts(self) -> dict[str, int]:
        return self.node.stats.snapshot()

    def answers(self, stamp: tuple[int, int]) -> list[PersonEmotionArray]:
        return [m for m in list(self.out) if key(m) == stamp]

    def send(self, dets: PersonDetectionArray, image: Any = None, timeout: float = 30.0,
             wait_images: int | None = None) -> PersonEmotionArray:
        """Publish ``image`` (if any; waits until the node stored it) then ``dets``; return the
        one answer with the same stamp."""
        if image is not None:
            before = self.counts().get('images_in', 0)
            self.img_pub.publish(image)
            assert self.harness.wait_for(
                lambda: self.counts().get('images_in', 0) > before, timeout), 'image not received'
        self.det_pub.publish(dets)
        stamp = key(dets)
        assert self.harness.wait_for(lambda: self.answers(stamp), timeout), \
            f'no answer for stamp {stamp}'
        return self.answers(stamp)[0]
