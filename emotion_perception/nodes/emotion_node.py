"""``emotion_node``: how each detected person feels, as a ROS 2 lifecycle node.

Subscribes ``image`` (sensor_msgs/Image, or with image_transport 'compressed' the resolved
``image`` topic + ``/compressed``, so a remap of ``image`` moves it too) and ``detections``
(PersonDetectionArray), pairs them by exact header stamp (the detector copies the image header)
in a bounded image cache, runs the configured emotion backend (face baseline, VLM, caption +
LLM) through the ROS-free ``EmotionPipeline`` (with per-track result reuse), and publishes
``emotions`` (PersonEmotionArray, same header as the detections), optionally ``debug_image``,
and ``/diagnostics`` at 1 Hz.

Other stacks' detections (``detections_format``, read-only; ``ros.detection_formats``):
``vision_msgs`` (Detection2DArray) and ``yolo`` (yolo_msgs/DetectionArray) on ``detections``,
non-person classes and scores below ``min_confidence`` left out of the answer (counted
``left_out.<kind>``), unusable boxes answered ERROR; ``rep155``: ROS4HRI bodies
(``/humans/bodies/tracked`` + each ``/humans/bodies/<id>/roi``, ``ros.rep155``): every image
is a body frame, answered when the rois of all ids of its stamp's tracked list are here or
after ``pair_timeout_s`` (missing bodies ERROR 'no roi for this stamp'); frames waiting for
rois hold their image (at most ``image_cache_size`` / ``image_cache_mb``, older ones answered
SKIPPED). ``rep155.publish`` adds the REP-155 outputs (``ros.rep155_output.Rep155Output``:
bodies, faces found by the pipeline's face stage, expressions from the per-person states,
face-body matches; a timer forgets ids that left also when no frame comes). The message
packages are imported only for the format chosen; a missing one fails configure naming the apt
package.

Guarantee: exactly one ``emotions`` array for every ``detections`` array received while
active, in arrival order of processing, also when it is empty, late or failed; then each person
carries status CACHED / SKIPPED / ERROR and a reason.

How each person feels over time (``state.*``, ``core.state``): every answered array also updates
the per-person states (fresh results are evidence, the others let the state age) and publishes
``emotion_states`` (PersonEmotionStateArray: same header, one state per person, same order) and,
when labels switched or persons were forgotten, ``emotion_events`` (EmotionEventArray: onset /
offset / left; reliable, transient local). Stamps decide, never wall time, except for a timer
that forgets persons once the input has stopped (``_on_state_timer``).

Concurrency: subscription callbacks only store messages (images in a cache bounded in count and
bytes, detections in a bounded queue) and wake the worker thread. The worker takes the NEWEST
pending detections array; older pending arrays are answered at once from the track cache or as
SKIPPED 'dropped: stale frame under load' (latest-wins; every drop is counted). The executor
thread never runs the model.

Robustness: every problem is answered, counted and logged once per kind (throttled): bad
images (``errors.bad_image.<kind>``), a stamp with no image (``errors.no_image``) or whose image
was evicted (``errors.image_evicted``), detections whose ``image_width/height`` differ from the
paired image (``errors.size_mismatch``; 0x0 means "size not given" and is not checked),
per-person errors/skips by reason (``errors.<kind>``, ``skipped.<kind>``), duplicate track ids,
stamps going backwards and a restarted detections publisher (both clear the track cache; the
restart is told per publisher, see ``ros.publisher_restarts``: a second publisher on the topic
is not a restart), an incompatible image publisher (``qos_incompatible``). ``/diagnostics``
turns ERROR when a frame has been in processing (or waiting) longer than ``stall_timeout_s``.

Lifecycle (``nodes.base``): configure validates parameters and loads the backend (FAILURE,
staying unconfigured with the reason logged, when the model cannot be loaded); activate
subscribes and starts the worker; deactivate stops the worker (a remote call in flight is cut
short: ``cancel_calls``) and keeps the model (frees it with ``free_on_deactivate``); cleanup/shutdown destroy the publishers and free the model.
``backend.name``, ``backend.model``, ``backend.llm``, ``backend.adapter``,
``backend.quantization``, ``backend.quantization_library``, ``backend.trust_remote_code``,
``backend.url``, ``backend.api_key_env``, ``backend.ca_bundle``, ``backend.verify_tls``,
``backend.processor`` and ``detections_format`` are read-only: set at start-up only.
"""
from __future__ import annotations

if __name__ == '__main__':  # `python -m`: quiet signal handlers before the imports below
    from emotion_perception.nodes import signals as _signals
    _signals.install()

import collections
import dataclasses
import sys
import threading
import time

import numpy as np

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image

from std_msgs.msg import Header

from emotion_perception.msg import (EmotionEventArray, PersonDetectionArray, PersonEmotionArray,
                                    PersonEmotionStateArray)

from ..core.backends import BACKENDS, BackendError, ImageError, backend_class
from ..core.drawing import draw_persons
from ..core.pipeline import EmotionPipeline, FrameEmotions, ReuseOptions
from ..core.state import EmotionStates, EventKind, FrameStates, StateEvent, StateOptions
from ..core.types import EmotionResult, Status
from ..ros import detection_formats as formats
from ..ros import rep155, rep155_output
from ..ros.diagnostics import ERROR, OK, WARN
from ..ros.image_conversion import DEFAULT_MAX_PIXELS, ImageConversionError, numpy_to_image_msg
from ..ros.messages import (detections_from_msg, emotions_to_msg, events_to_msg, stamp_key,
                            stamp_seconds, states_to_msg, time_from_seconds)
from ..ros.node_utils import (IMAGE_TRANSPORTS, decode_image, image_size, reason_kind,
                              subscribe_image, with_message_info)
from ..ros.params import ParamSpec, in_range, one_of
from ..ros.publisher_restarts import RestartDetector, gid_from_message_info
from ..ros.qos import EVENTS_QOS, RELIABILITY, RESULTS_QOS
from .base import PerceptionNode
from .lifecycle import run_node_process

#: Backend options settable as node parameters ('backend.<name>'); each backend uses those
#: its Options dataclass has. Empty strings mean "the backend's default".
BACKEND_PARAMS = [
    ParamSpec('backend.model', '', "model id or path ('' = the backend's offline default)",
              read_only=True),
    ParamSpec('backend.llm', '', 'caption_llm: text LLM id or path (pkg:// allowed)',
              read_only=True),
    ParamSpec('backend.device', 'auto', "torch device: 'auto', 'cpu', 'cuda', 'cuda:1'"),
    ParamSpec('backend.device_map', '', "from_pretrained device map spreading a large model "
              "over devices, e.g. 'auto' (a 13B model over two GPUs); '' = all on "
              'backend.device'),
    ParamSpec('backend.dtype', 'auto', "VLM weights dtype: 'auto' (CUDA: bfloat16; CPU: "
              'bfloat16 where it has bf16 matmuls, AVX512-BF16/AMX, and the LM is >= 512 wide, '
              "else float32), 'float32', 'bfloat16', 'float16'",
              one_of('auto', 'float32', 'bfloat16', 'float16')),
    ParamSpec('backend.quantization', 'none', "vlm (and caption_llm's captioner) weights "
              "quantized while loading: 'none', "
              "'int8' (torchao weight-only), 'nf4' (bitsandbytes), 'int4' (torchao): a 7B "
              "model in about 4 GB with nf4/int4 (README 'Choosing a model for the robot's "
              "GPU'); needs the quant extra", one_of('none', 'int8', 'nf4', 'int4'),
              read_only=True),
    ParamSpec('backend.quantization_library', 'auto', "which library quantizes: 'auto' (int8 "
              "and int4: torchao, nf4: bitsandbytes), 'bitsandbytes' (int8 = LLM.int8) or "
              "'torchao'", one_of('auto', 'bitsandbytes', 'torchao'), read_only=True),
    ParamSpec('backend.mode', 'score', "'score' (a score per category from one prefill) or "
              "'generate' (free text, labels parsed: the paper's protocol)",
              one_of('score', 'generate')),
    ParamSpec('backend.adapter', '', 'path of a LoRA adapter (peft) to load on the VLM',
              read_only=True),
    ParamSpec('backend.parser', 'robust', "generate mode: how labels are found in the answer: "
              "'robust' (word forms, negation) or 'paper' (the authors' substring protocol)",
              one_of('robust', 'paper')),
    ParamSpec('backend.score_prompt', 'question', "score mode: 'question' (each category a "
              "user question) or 'prefill' (each question starts the assistant's answer line, "
              "'Anger:': fewer tokens per question)", one_of('question', 'prefill')),
    ParamSpec('backend.marking', 'red_box', "how the target person is shown to a VLM: "
              "'red_box' on the full frame (paper), 'crop', 'crop_context'",
              one_of('red_box', 'crop', 'crop_context')),
    ParamSpec('backend.definitions', False, 'add short category definitions to the prompt'),
    ParamSpec('backend.num_labels', 0, "generate mode: ask for exactly this many labels (the "
              "paper's '*' variant: definitions + 6); 0 = as many as apply",
              in_range(0, 26)),
    ParamSpec('backend.max_new_tokens', 64, 'generate mode: answer length bound',
              in_range(1, 4096)),
    ParamSpec('backend.caption_max_new_tokens', 96, 'caption_llm: length bound of the '
              "captioner's narrative (tokens)", in_range(1, 4096)),
    ParamSpec('backend.batch_size', 8, 'max persons per model call', in_range(1, 256)),
    ParamSpec('backend.trust_remote_code', False, 'allow model repos to run their own code '
              '(off unless you trust the model source)', read_only=True),
    ParamSpec('backend.thresholds', '', 'JSON file of per-category thresholds (from '
              "`emotion-perception evaluate --tune-thresholds-on val`); '' = 0.5 for all"),
    ParamSpec('backend.url', [], "remote: base URL(s) of OpenAI-compatible servers (vLLM), "
              "ending in /v1, e.g. ['http://gpu-server:8000/v1']; several = balanced, a "
              'failing one is taken out and probed back in', list_of=str, read_only=True),
    ParamSpec('backend.api_key_env', '', 'remote: name of the environment variable holding '
              "the API key ('' = none); the key itself is never logged", read_only=True),
    ParamSpec('backend.timeout_s', 30.0, 'remote: the longest one request waits for its answer '
              '(s; within backend.deadline_s at run time)', in_range(0.01, 3600)),
    ParamSpec('backend.connect_timeout_s', 3.0, 'remote: the longest a connection may take to '
              'open, and a health probe of a server to be answered (s)', in_range(0.01, 600)),
    ParamSpec('backend.deadline_s', 10.0, "remote: the longest all of a frame's requests, "
              'retries and backoff may take together (s); persons not answered by then are '
              "ERROR 'deadline exceeded'. Raise it for slow servers", in_range(0.1, 3600)),
    ParamSpec('backend.max_concurrency', 16, 'remote: most requests in flight (all servers)',
              in_range(1, 1024)),
    ParamSpec('backend.retries', 3, 'remote: retries of a request after a transient failure '
              '(HTTP 5xx, 429, connection refused or reset, timeout, a broken answer), on the '
              'same server with backoff', in_range(0, 10)),
    ParamSpec('backend.verify_tls', True, 'remote: verify https certificates (keep on; false '
              'is warned)', read_only=True),
    ParamSpec('backend.ca_bundle', '', "remote: CA bundle file for https ('' = the system's "
              'trust store)', read_only=True),
    ParamSpec('backend.processor', '', "remote: the served model's image processor config "
              "(a folder, or a hub id when online), e.g. 'llava-hf/llava-1.5-7b-hf': the pixels "
              "sent are exactly the local backend's; '' = letterbox to a square",
              read_only=True),
    ParamSpec('backend.image_format', 'png', "remote: 'png' (lossless: the scores of the local "
              "backend) or 'jpeg' (smaller)", one_of('png', 'jpeg')),
]

#: The per-person state over time (``core.state``; README "How each person feels over time").
STATE_PARAMS = [
    ParamSpec('state.enabled', True, 'keep a state per person over time (smoothed scores, '
              'labels with hysteresis) and publish emotion_states and emotion_events'),
    ParamSpec('state.half_life_s', -1.0, 'half-life of the exponential forgetting of scores '
              "and VAD, in seconds of sensor time; < 0 = by the backend's cost (face_baseline "
              '0.5 s; vlm, caption_llm, remote 2 s)',
              lambda v: None if v < 0 or 0.001 <= v <= 3600 else
              f'must be < 0 (the backend default) or in [0.001, 3600], got {v}'),
    ParamSpec('state.margin', 0.05, 'hysteresis: a label switches on at its threshold + margin, '
              'off below threshold - margin', in_range(0.0, 0.5)),
    ParamSpec('state.min_hold_s', 1.0, 'a label stays on (or off) at least this long after '
              'it switched (s)', in_range(0.0, 3600.0)),
    ParamSpec('state.forget_after_s', 3.0, 'a person in no frame for this long (s of sensor '
              "time) is forgotten: offsets of their labels and a 'left' event",
              in_range(0.01, 3600.0)),
    ParamSpec('state.max_tracks', 256, 'most person states kept; beyond, the least recently '
              'seen is evicted (counted state.evicted)', in_range(1, 100000)),
    ParamSpec('state.identity_check', True, 'check on each frame that a track id still shows '
              'the same person (colours of the body); when another person took the id (one '
              'replaced by another in the same place), its state restarts (a left event with '
              'reason new_identity) instead of passing on the previous person\'s emotions'),
    ParamSpec('state.identity_threshold', 0.25, 'identity check: colour-signature distance '
              '(0, 1) above which the id shows someone else (same person under camera noise '
              '<= ~0.16)', in_range(0.01, 0.99)),
]

PARAMS = [
    ParamSpec('backend.name', 'face_baseline', f'emotion backend: one of {sorted(BACKENDS)} or '
              "'package.module:ClassName'", read_only=True),
    *BACKEND_PARAMS,
    ParamSpec('reuse.enabled', True, 'reuse a track\'s last result while its box is steady'),
    ParamSpec('reuse.max_age_s', -1.0, 're-run the model for a steady track after this many '
              "seconds; < 0 = by the backend's cost (face_baseline 0.08 s: about 10 times a "
              'second; vlm, caption_llm, remote 2 s)', in_range(-1.0, 3600.0)),
    ParamSpec('reuse.min_iou', 0.6, 're-run when the box IoU with the cached box is below this',
              in_range(0.0, 1.0)),
    ParamSpec('reuse.max_size_change', 0.25, 're-run when box width/height changed by more '
              'than this fraction', in_range(0.0, 100.0)),
    ParamSpec('image_transport', 'raw', "'raw' (Image on image) or 'compressed' "
              '(CompressedImage on the resolved image topic + /compressed)',
              one_of(*IMAGE_TRANSPORTS)),
    ParamSpec('image_reliability', 'best_effort', "image subscription reliability "
              "('best_effort' or 'reliable'); must be compatible with the camera",
              one_of('best_effort', 'reliable')),
    ParamSpec('image_queue_depth', 10, 'keep-last depth of the image subscription: frames the '
              'middleware holds while the node is busy (the node then drops stale ones itself and '
              'counts them); a frame pushed out of it never arrives, and its detections are '
              "answered ERROR 'no image'", in_range(1, 1000)),
    ParamSpec('image_cache_size', 30, 'images kept for pairing with detections by stamp '
              '(rep155: camera frames waiting for their body rois)', in_range(1, 1000)),
    ParamSpec('image_cache_mb', 512.0, 'most megabytes of images kept for pairing (the image '
              'cache; rep155: the frames waiting for their rois); beyond it the oldest go, as '
              'beyond image_cache_size', in_range(1.0, 1e6)),
    ParamSpec('pair_timeout_s', 1.0, 'how long a detections array waits for its image',
              in_range(0.0, 60.0)),
    ParamSpec('max_pending', 100, 'bound of the detections queue (older ones are answered as '
              'dropped)', in_range(1, 10000)),
    ParamSpec('max_image_pixels', DEFAULT_MAX_PIXELS,
              'images with more pixels are refused before decoding', in_range(1, 2**31 - 1)),
    ParamSpec('publish_debug_image', False, 'publish debug_image with boxes, top labels and '
              'scores (only computed while someone subscribes)'),
    ParamSpec('diagnostics_period_s', 1.0, 'period of /diagnostics messages', in_range(0.1, 60)),
    ParamSpec('slow_latency_ms', 2000.0, 'diagnostics WARN when p90 latency exceeds this',
              in_range(0.0, 1e7)),
    ParamSpec('stall_timeout_s', 10.0, 'diagnostics ERROR when detections arrive but nothing '
              'was published for this long', in_range(0.1, 3600)),
    ParamSpec('autostart', False, 'configure and activate by itself at start-up'),
    ParamSpec('detections_format', 'native', "what arrives on detections: 'native' "
              "(PersonDetectionArray), 'vision_msgs' (vision_msgs/Detection2DArray), 'yolo' "
              "(yolo_ros' yolo_msgs/DetectionArray) or 'rep155' (ROS4HRI bodies: "
              '/humans/bodies/tracked + /humans/bodies/<id>/roi; no detections topic)',
              one_of(*formats.FORMATS), read_only=True),
    ParamSpec('detections_reliability', 'reliable', "detections subscription reliability "
              "('reliable' or 'best_effort' for a best-effort detector)",
              one_of('best_effort', 'reliable')),
    ParamSpec('person_classes', ['person', '0'], "vision_msgs / yolo: class ids or names "
              'counted as persons (other classes are left out of the answer)', list_of=str),
    ParamSpec('min_confidence', 0.0, 'vision_msgs / yolo: persons with a lower score are left '
              'out of the answer', in_range(0.0, 1.0)),
    *STATE_PARAMS,
    ParamSpec('rep155.publish', False, 'also publish REP-155 (README "ROS4HRI"): '
              '/humans/bodies/<id>/emotion per person; faces (see rep155.faces) with roi, '
              'cropped and expression, /humans/candidate_matches; with a non-rep155 input also '
              '/humans/bodies/tracked and each body roi and cropped'),
    ParamSpec('rep155.faces', 'auto', "who publishes the REP-155 faces: 'auto' (this node "
              '(MTCNN, face ids f<body id>) while no other node publishes /humans/faces/tracked, '
              "else expressions for that stack's faces), 'detect' (always this node), 'input' "
              "(never: expressions for another stack's faces only; no face detection)",
              one_of(*rep155_output.FACE_MODES)),
    ParamSpec('rep155.forget_after_s', 2.0, 'body (face) source: a body (face) unseen this '
              'long leaves /humans/bodies/tracked (/humans/faces/tracked) and its topics are '
              'removed', in_range(0.0, 3600.0)),
    ParamSpec('rep155.max_ids', 64, 'most body (and face) ids followed or published at once; '
              'ids beyond are ignored and counted (rep155.ids_over_cap)', in_range(1, 10000)),
]


#: period of the timer that forgets persons when no frame arrives (``_on_state_timer``)
STATE_TIMER_PERIOD_S = 0.5


@dataclasses.dataclass
class _Pending:
    msg: PersonDetectionArray | None  # None: a rep155 body frame still waiting for its rois
    received: float  # time.monotonic()
    #: index in msg.detections -> reason: answered ERROR without evaluation (unusable box)
    errors: dict = dataclasses.field(default_factory=dict)
    image: object = None  # rep155 body frames: their image message (until answered)
    body: tuple | None = None  # rep155 body frames: (ids, rois) once taken
    #: rep155 body frames: (width, height) of the image as known before decoding (the raw
    #: message's fields, a compressed image's header; (0, 0): unknown), and its bytes
    size: tuple[int, int] = (0, 0)
    nbytes: int = 0


class EmotionNode(PerceptionNode):
    """See the module docstring; lifecycle plumbing in ``PerceptionNode``."""

    PARAMS = PARAMS
    WORKER_NAME = 'emotion_worker'
    DIAGNOSTIC_NAME = 'emotion perception'

    def __init__(self, node_name: str = 'emotion_node', **kwargs) -> None:
        self.pipeline: EmotionPipeline | None = None
        self._pub = self._debug_pub = None
        self._cond = threading.Condition()
        self._images: collections.OrderedDict = collections.OrderedDict()  # stamp -> msg
        self._image_bytes = 0  # of the messages in _images
        self._pending: collections.deque[_Pending] = collections.deque()
        self._last_stamp: float | None = None
        self._evicted: collections.OrderedDict = collections.OrderedDict()  # stamps evicted
        self._restarts = RestartDetector()  # per detections publisher: gid + sequence number
        self._det_topic = 'detections'  # resolved on activate
        self._reset_tracks = False  # set by the executor thread, applied by the worker
        self._current_job: _Pending | None = None  # the array the worker is processing
        self._bodies = None  # rep155.BodyInput with detections_format rep155
        self._waiting: collections.deque[_Pending] = collections.deque()  # body frames
        self._waiting_bytes = 0  # of the images of _waiting
        self._rep155_out = None  # rep155_output.Rep155Output with rep155.publish
        self.states: EmotionStates | None = None  # with state.enabled (configured)
        self._states_pub = self._events_pub = None
        self._state_last: tuple[float, float, str] | None = None  # stamp, monotonic, frame_id
        super().__init__(node_name, **kwargs)
        # forgets REP-155 ids also when no frame comes; made once (no timer is created or
        # destroyed while the node spins: ros.rclpy_compat.destroy_entity)
        self._rep155_timer = self.create_timer(rep155_output.PRUNE_PERIOD_S, self._prune_rep155,
                                               callback_group=MutuallyExclusiveCallbackGroup())
        self._state_timer = self.create_timer(STATE_TIMER_PERIOD_S, self._on_state_timer)

    def _backend_options(self, name: str) -> dict:
        fields = {f.name for f in dataclasses.fields(backend_class(name).Options)}
        opts, unused = {}, []
        for spec in BACKEND_PARAMS:
            key = spec.name.split('.', 1)[1]
            value = self.params[spec.name]
            if key not in fields:
                if value != spec.default:
                    unused.append(spec.name)
                continue
            if value == '' and key != 'thresholds':
                continue  # the backend's own default
            opts[key] = value if value != '' else None
        if unused:
            self.get_logger().warning(f'parameters {unused} are not used by backend {name!r}')
        return opts

    # -- PerceptionNode hooks ------------------------------------------------------------------
    def _configure_model(self, p: dict) -> str:
        formats.format_message_type(p['detections_format'])  # the message package is there
        if p['rep155.publish']:
            formats.message_module('hri_msgs')
        backend = backend_class(p['backend.name'])(self._backend_options(p['backend.name']))
        reuse = ReuseOptions(enabled=p['reuse.enabled'], max_age_s=p['reuse.max_age_s'],
                             min_iou=p['reuse.min_iou'],
                             max_size_change=p['reuse.max_size_change'])
        backend.load()
        self.pipeline = EmotionPipeline(backend, reuse)
        self._load_face_finder()
        self._configure_state(p, backend)
        return f'backend {backend.name} model {backend.model_id}'

    def _load_face_finder(self) -> None:
        """The face stage of the REP-155 face output (``rep155.publish``, ``rep155.faces`` not
        'input'): the backend's own (face_baseline), else one with the defaults (MTCNN) on the
        backend's device, loaded here (not at all when the output is off)."""
        p, pipe = self.params, self.pipeline
        if (pipe is None or not p['rep155.publish'] or p['rep155.faces'] == 'input'
                or getattr(pipe.backend, 'face_finder', None) is not None):
            return
        from ..core.backends.base import ModelLoadError, resolve_device
        from ..core.faces import FaceFinder, FaceModelError
        if pipe.face_finder is None:
            pipe.face_finder = FaceFinder()
        try:
            pipe.face_finder.load(resolve_device(p['backend.device']))
        except (FaceModelError, RuntimeError) as exc:
            raise ModelLoadError(f'REP-155 face detection: {exc}') from exc

    def _load_model(self) -> None:
        self.pipeline.backend.load()
        self._load_face_finder()

    def _unload_model(self) -> None:
        if self.pipeline is not None:
            self.pipeline.backend.unload()
            if self.pipeline.face_finder is not None:
                self.pipeline.face_finder.unload()

    def _unload_cancels_calls(self) -> bool:
        return bool(self.pipeline is not None
                    and getattr(self.pipeline.backend, 'unload_cancels_calls', False))

    def _release_model(self) -> None:
        self._unload_model()
        self.pipeline = None
        self.states = self._state_last = None

    def _create_outputs(self) -> None:
        self._pub = self._lifecycle_publisher(PersonEmotionArray, 'emotions', RESULTS_QOS)
        self._debug_pub = self._lifecycle_publisher(Image, 'debug_image', 1)
        if self.states is not None:
            self._states_pub = self._lifecycle_publisher(PersonEmotionStateArray,
                                                         'emotion_states', RESULTS_QOS)
            self._events_pub = self._lifecycle_publisher(EmotionEventArray, 'emotion_events',
                                                         EVENTS_QOS)

    def _subscribe(self) -> list:
        p = self.params
        image_sub = subscribe_image(self, 'image', p['image_transport'], p['image_reliability'],
                                    p['image_queue_depth'], self._on_image,
                                    on_incompatible_qos=self._on_incompatible_qos)
        subs = [image_sub]
        fmt = p['detections_format']
        if fmt == 'rep155':
            self._bodies = rep155.BodyInput(self, self._cond, p['rep155.max_ids'],
                                            4 * p['image_cache_size'])
            subs.append(self._bodies.tracked_sub)
            self._det_topic = self._bodies.tracked_sub.topic_name
        else:
            qos = RESULTS_QOS
            if p['detections_reliability'] != 'reliable':
                qos = QoSProfile(history=RESULTS_QOS.history, depth=RESULTS_QOS.depth,
                                 durability=RESULTS_QOS.durability,
                                 reliability=RELIABILITY[p['detections_reliability']])
            det_sub = self.create_subscription(formats.format_message_type(fmt), 'detections',
                                               with_message_info(self._on_detections), qos)
            subs.append(det_sub)
            self._det_topic = det_sub.topic_name
        if p['rep155.publish']:
            self._rep155_out = rep155_output.Rep155Output(
                self, p['rep155.max_ids'], p['rep155.forget_after_s'],
                body_source=fmt != 'rep155', faces=p['rep155.faces'],
                tracked=self._bodies.tracked_ids if fmt == 'rep155' else None)
            if self._rep155_out.faces is not None:
                subs.append(self._rep155_out.faces.tracked_sub)
        self.get_logger().info(f'subscribed {image_sub.topic_name} ({p["image_transport"]}) and '
                               f'{self._det_topic} ({fmt})')
        return subs

    def _drain(self) -> None:
        with self._cond:
            # Answer what is still pending so that no detections array goes unanswered.
            pending, self._pending = list(self._pending), collections.deque()
            waiting = self._take_waiting()
            self._images.clear()
            self._image_bytes = 0
            self._evicted.clear()
        for item in [*waiting, *pending]:
            self._answer_unprocessed(item, Status.SKIPPED, 'node deactivated before processing',
                                     'deactivated')
        if self._bodies is not None:
            self._bodies.close()
            self._bodies = None
        if self._rep155_out is not None:
            self._rep155_out.close()
            self._rep155_out = None

    def _prune_rep155(self) -> None:
        out = self._rep155_out
        if out is not None:
            out.prune()

    # -- callbacks (executor thread): store and wake ------------------------------------------
    def _on_image(self, msg) -> None:
        self.stats.count('images_in')
        if self._bodies is not None:  # rep155: each image is a body frame
            self._on_body_frame(msg)
            return
        size = len(msg.data)
        with self._cond:
            old = self._images.pop(stamp_key(msg.header), None)
            self._image_bytes += size - (len(old.data) if old is not None else 0)
            self._images[stamp_key(msg.header)] = msg
            while len(self._images) > 1 and (
                    len(self._images) > self.params['image_cache_size']
                    or self._image_bytes > self.params['image_cache_mb'] * 2**20):
                key, gone = self._images.popitem(last=False)
                self._image_bytes -= len(gone.data)
                self.stats.count('images_evicted')
                self._evicted[key] = None  # remembered (bounded) to answer late detections
                while len(self._evicted) > 4 * self.params['image_cache_size']:
                    self._evicted.popitem(last=False)
            self._cond.notify()

    def _on_body_frame(self, msg) -> None:
        """rep155: the image starts a body frame, which waits (holding the image) for the
        rois of its stamp. At most ``image_cache_size`` frames / ``image_cache_mb`` of images
        wait; the oldest beyond are answered SKIPPED."""
        job = _Pending(None, time.monotonic(), image=msg, size=image_size(msg),
                       nbytes=len(msg.data))
        failed = self._worker.failed_reason
        overflow = []
        waiting = 0
        with self._cond:
            if failed:  # the worker died and was not restarted: nobody else answers
                overflow = [job]
                self._take_body_frame(job)
            else:
                self._waiting.append(job)
                self._waiting_bytes += job.nbytes
                while len(self._waiting) > 1 and (
                        len(self._waiting) > self.params['image_cache_size']
                        or self._waiting_bytes > self.params['image_cache_mb'] * 2**20):
                    overflow.append(self._waiting.popleft())
                    self._waiting_bytes -= overflow[-1].nbytes
                    self._take_body_frame(overflow[-1])
                waiting = len(self._waiting)
                self._cond.notify()
        for item in overflow:
            if failed:
                self._answer_safely(item, f'internal error: worker thread not running ({failed})')
                continue
            self._answer_unprocessed(
                item, Status.SKIPPED, f'dropped: {waiting} newer camera frames were '
                'waiting for their body rois (image_cache_size / image_cache_mb reached): are '
                'the rois late?', 'body_frames_full')

    def _detections_publishers(self) -> list[bytes]:
        """gids of the publishers on the detections topic now (from the ROS graph)."""
        try:
            return [bytes(i.endpoint_gid) for i in
                    self.get_publishers_info_by_topic(self._det_topic)]
        except Exception:  # noqa: BLE001 - graph query during shutdown
            return []

    def _check_publisher(self, info: dict | None) -> None:
        """Restart detection per publisher (see ``ros.publisher_restarts``). The Jazzy rclpy
        gives no publisher gid per message: then the graph names the publisher when there is
        exactly one on the topic."""
        seq = (info or {}).get('publication_sequence_number')
        gid = gid_from_message_info(info)
        if gid is not None:
            live = self._detections_publishers
        else:
            gids = self._detections_publishers()
            gid = gids[0] if len(gids) == 1 else None
            live = gids
        why = self._restarts.observe(gid, seq, live)
        if why:
            # The detector restarted: its track ids start over and may name other people
            # than the cached ones.
            with self._cond:
                self._reset_tracks = True
            self.stats.count('detector_restarts')
            self.kind_log.warn('detector_restart', f'{why}: track cache cleared')

    def _on_detections(self, msg, info: dict | None = None) -> None:
        self.stats.count('detections_in')
        overflow = None
        self._check_publisher(info)
        fmt = self.params['detections_format']
        conv = formats.convert(fmt, msg, self.params['person_classes'],
                               self.params['min_confidence'])
        for item in conv.left_out:
            self.stats.count(f'left_out.{item.kind}')
            if item.kind == 'no_hypothesis':
                self.kind_log.warn('left_out.no_hypothesis', f'{fmt} detection {item.index} '
                                   f'left out: {item.reason}')
        failed = self._worker.failed_reason
        if failed:  # the worker died and was not restarted: nobody else answers
            self._answer_safely(_Pending(conv.msg, time.monotonic(), conv.errors),
                                f'internal error: worker thread not running ({failed})')
            return
        with self._cond:
            self._pending.append(_Pending(conv.msg, time.monotonic(), conv.errors))
            if len(self._pending) > self.params['max_pending']:
                overflow = self._pending.popleft()
            self._cond.notify()
        if overflow is not None:
            self._answer_unprocessed(overflow, Status.SKIPPED, 'dropped: queue full', 'queue_full')

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()
        cancel = getattr(self.pipeline.backend, 'cancel_calls', None) if self.pipeline else None
        if cancel is not None:  # a remote call in flight returns now, not at its deadline
            cancel('the node is stopping (deactivate)')

    # -- worker thread ------------------------------------------------------------------------
    def _next_job(self, stop: threading.Event):
        """Wait for the newest pending detections whose image is here (or timed out).

        Returns (pending, image_msg or None, stale list) or None when stopping.
        """
        with self._cond:
            while not stop.is_set():
                next_deadline = self._promote_body_frames()
                if self._pending:
                    stale = []
                    while len(self._pending) > 1:  # latest wins
                        stale.append(self._pending.popleft())
                    job = self._pending[0]
                    key = stamp_key(job.msg.header)
                    image = job.image if job.image is not None else self._images.get(key)
                    waited = time.monotonic() - job.received
                    if (image is not None or key in self._evicted
                            or waited >= self.params['pair_timeout_s']):
                        self._pending.popleft()
                        return job, image, stale
                    if stale:
                        return None, None, stale
                    self._cond.wait(max(0.005, self.params['pair_timeout_s'] - waited))
                else:
                    self._cond.wait(0.5 if next_deadline is None else
                                    max(0.005, min(0.5, next_deadline - time.monotonic())))
        return None

    def _promote_body_frames(self) -> float | None:
        """rep155 (under ``_cond``): body frames whose rois are all here, or that waited
        ``pair_timeout_s``, move (in image order) to the pending queue. Returns when the first
        still waiting one times out (monotonic), or None."""
        timeout = self.params['pair_timeout_s']
        while self._waiting:
            job = self._waiting[0]
            ready = self._bodies is not None and self._bodies.ready(stamp_key(job.image.header))
            if not ready and time.monotonic() - job.received < timeout:
                return job.received + timeout
            self._waiting.popleft()
            self._waiting_bytes -= job.nbytes
            self._take_body_frame(job)
            self.stats.count('detections_in')  # a body frame is this input's detections array
            for older in self._pending:  # latest wins: they are answered unprocessed, and
                older.image = None       # their images need not wait with them
            self._pending.append(job)
        return None

    def _take_waiting(self) -> list[_Pending]:
        """Empty the body-frame queue (under ``_cond``): its frames, each with its persons."""
        waiting, self._waiting = list(self._waiting), collections.deque()
        self._waiting_bytes = 0
        for job in waiting:
            self._take_body_frame(job)
        return waiting

    def _take_body_frame(self, job: _Pending) -> None:
        """Fill a body frame's ``msg`` (under ``_cond``): the ids of its stamp's tracked list
        and their rois (taken from ``_bodies``), boxes for the image size known before
        decoding (``job.size``; unknown: persons without boxes, rebuilt once the frame is
        decoded: :meth:`_fit_body_frame`)."""
        job.body = (self._bodies.take(stamp_key(job.image.header)) if self._bodies
                    else ([], {}))
        self._body_frame_msg(job, *job.size)

    def _body_frame_msg(self, job: _Pending, width: int, height: int) -> None:
        """Build ``job.msg`` / ``job.errors`` from ``job.body`` for a ``width`` x ``height``
        image (0 x 0: boxes not known yet)."""
        conv, clipped = formats.from_rep155(job.image.header, job.body[0], job.body[1],
                                            width, height)
        if clipped and job.msg is None:
            self.stats.count('rep155.rois_clipped', clipped)
        job.msg, job.errors = conv.msg, conv.errors

    def _work_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                got = self._next_job(stop)
            except Exception as exc:  # noqa: BLE001 - e.g. a body frame that cannot be read
                self.stats.count('errors.internal')
                self.kind_log.error('internal', f'{type(exc).__name__}: {exc}')
                time.sleep(0.01)
                continue
            if got is None:
                return
            job, image, stale = got
            for item in stale:
                self._answer_unprocessed(item, Status.SKIPPED, 'dropped: stale frame under load '
                                         '(a newer one was waiting)', 'stale_frame')
            if job is None:
                continue
            self._current_job = job  # answered by _worker_died if this loop dies with it
            self._busy_since = time.monotonic()
            try:
                self._process(job, image)
            except Exception as exc:  # never let the worker die; the array is still answered
                self.stats.count('errors.internal')
                self.kind_log.error('internal', f'{type(exc).__name__}: {exc}')
                self._answer_unprocessed(job, Status.ERROR, f'internal error: {exc}', None)
            finally:
                self._busy_since = None
            self._current_job = None

    def _worker_died(self, reason: str, gave_up: bool) -> None:
        job, self._current_job = self._current_job, None
        text = f'internal error: the worker thread died ({reason})'
        if job is not None:
            self._answer_safely(job, text)
        if gave_up:  # nobody takes the queues any more: answer them now (and what comes later)
            with self._cond:
                pending, self._pending = list(self._pending), collections.deque()
                waiting = self._take_waiting()
            for item in [*waiting, *pending]:
                self._answer_safely(item, text)

    def _answer_safely(self, job: _Pending, reason: str) -> None:
        """Answer ``job`` ERROR without the pipeline (which may be what failed)."""
        try:
            results = [EmotionResult.failed(Status.ERROR, reason)
                       for _ in job.msg.detections]
            self._publish(job, results, None)
        except Exception:  # noqa: BLE001 - a destroyed publisher during shutdown
            self.stats.count('errors.unanswered')

    def _check_stamp(self, stamp_s: float) -> None:
        with self._cond:
            reset, self._reset_tracks = self._reset_tracks, False
        if reset:
            self.pipeline.cache.clear()
            self._reset_states()
        if self._last_stamp is not None and stamp_s < self._last_stamp:
            self.stats.count('stamps_backwards')
            self.kind_log.warn('stamps_backwards', 'detection stamps went backwards (bag loop '
                               'or detector restart): track cache cleared')
            self.pipeline.cache.clear()
            self._reset_states()
        self._last_stamp = stamp_s

    def _process(self, job: _Pending, image_msg) -> None:
        """Answer ``job`` (the worker's one detections array) with ``image_msg``, its paired
        image (None: none came): in named steps, each of which may answer it and stop."""
        stamp_s = stamp_seconds(job.msg.header)
        self._check_stamp(stamp_s)
        if not job.msg.detections:
            self._publish(job, [], None)
            return
        if image_msg is None:
            self._answer_without_image(job, stamp_s)
            return
        rgb = self._decode(job, image_msg)
        if rgb is None:
            return
        if job.body is not None:
            self._fit_body_frame(job, rgb)
        elif not self._size_matches(job, rgb):
            return
        evaluated = self._evaluate(job, rgb, stamp_s)
        if evaluated is not None:
            results, faces = evaluated
            self._count_results(results)
            self._publish(job, results, rgb, image_msg.header, faces)

    def _answer_without_image(self, job: _Pending, stamp_s: float) -> None:
        """No image with the array's stamp: evicted from the cache, or never received."""
        with self._cond:
            evicted = stamp_key(job.msg.header) in self._evicted
        size = self.params['image_cache_size']
        if evicted:
            self.stats.count('errors.image_evicted')
            self.kind_log.warn('image_evicted', f'image with stamp {stamp_s:.6f} was evicted '
                               f'from the image cache ({size} images) before its detections '
                               'arrived (detector too slow? raise image_cache_size)')
            reason = (f'image evicted: detections arrived after {size} newer images '
                      '(image_cache_size)')
        else:
            self.stats.count('errors.no_image')
            self.kind_log.warn('no_image', f'no image with stamp {stamp_s:.6f} arrived within '
                               f'pair_timeout_s={self.params["pair_timeout_s"]} (image topic '
                               'or QoS wrong? detector fed from another camera?)')
            reason = 'no image with this stamp: not received within pair_timeout_s'
        self._answer_unprocessed(job, Status.ERROR, reason, None)

    def _decode(self, job: _Pending, image_msg) -> np.ndarray | None:
        """The image as (H, W, 3) uint8 RGB; None when it cannot be used (answered)."""
        try:
            return decode_image(image_msg, self.params['max_image_pixels'])
        except (ImageConversionError, ImageError) as exc:
            kind = getattr(exc, 'kind', 'invalid')
            self.stats.count('errors.bad_image')
            self.stats.count(f'errors.bad_image.{kind}')
            self.kind_log.warn(f'bad_image.{kind}', f'cannot use image: {exc}')
            self._answer_unprocessed(job, Status.ERROR, f'bad image ({kind}): {exc}', None)
            return None

    def _fit_body_frame(self, job: _Pending, rgb: np.ndarray) -> None:
        """rep155: the boxes for the decoded image's size, when they were built for another
        (a compressed image whose header could not tell, or that decodes rotated)."""
        height, width = rgb.shape[:2]
        if (job.msg.image_width, job.msg.image_height) != (width, height):
            self._body_frame_msg(job, width, height)

    def _size_matches(self, job: _Pending, rgb: np.ndarray) -> bool:
        """Whether the array's ``image_width/height`` (0 x 0: not given) are the image's;
        a mismatch is answered ERROR."""
        width, height = int(job.msg.image_width), int(job.msg.image_height)
        if not (width or height) or (width, height) == (rgb.shape[1], rgb.shape[0]):
            return True
        self.stats.count('errors.size_mismatch')
        reason = (f'size mismatch: the detections are for a {width}x{height} image, the image '
                  f'with this stamp is {rgb.shape[1]}x{rgb.shape[0]}')
        self.kind_log.warn('size_mismatch', f'{reason} (detector fed from another camera, '
                           'or a resized stream?)')
        self._answer_unprocessed(job, Status.ERROR, reason, None)
        return False

    def _evaluate(self, job: _Pending, rgb: np.ndarray, stamp_s: float
                  ) -> tuple[list[EmotionResult], list | None] | None:
        """Every person's result: the pipeline's for the usable boxes, ERROR for the others,
        and, when this node publishes the REP-155 faces, every person's face (or None); None
        when the backend failed (answered)."""
        detections = detections_from_msg(job.msg)
        todo = [i for i in range(len(detections)) if i not in job.errors]
        out = self._rep155_out
        with_faces = out is not None and out.face_source()
        try:
            frame = (self.pipeline.process(rgb, [detections[i] for i in todo], stamp_s,
                                           with_faces=with_faces) if todo
                     else FrameEmotions([]))
        except (BackendError, ImageError, RuntimeError, ValueError) as exc:
            self.stats.count('errors.backend')
            self.kind_log.error('backend', f'backend failed: {type(exc).__name__}: {exc}')
            self._answer_unprocessed(job, Status.ERROR,
                                     f'backend error: {type(exc).__name__}: {exc}', None)
            return None
        self.stats.count('model_calls', frame.model_calls)
        self.stats.count('cache_hits', frame.cache_hits)
        if frame.duplicate_ids:
            self.stats.count('duplicate_track_ids', frame.duplicate_ids)
            self.kind_log.warn('duplicate_track_ids', f'{frame.duplicate_ids} track id(s) occur '
                               'more than once in one detections array: those persons are '
                               'evaluated without the track cache')
        faces = None
        if frame.faces is not None:
            faces = [None] * len(detections)
            for i, face in zip(todo, frame.faces):
                faces[i] = face
        return self._with_errors(job, frame.results, todo), faces

    def _count_results(self, results: list[EmotionResult]) -> None:
        """Count (and log, throttled) the persons answered ERROR / SKIPPED or with a reason."""
        for res in results:
            if res.status in (Status.ERROR, Status.SKIPPED) or res.reason:
                kind = reason_kind(res.reason)
                group = {Status.ERROR: 'errors', Status.SKIPPED: 'skipped'}.get(res.status,
                                                                                 'answers')
                self.stats.count(f'{group}.{kind}')
                if kind != 'no_face_found_in_person_box':  # routine, not a fault
                    self.kind_log.warn(f'{group}.{kind}', f'person {group}: {res.reason}')

    def _with_errors(self, job: _Pending, results: list[EmotionResult], todo: list[int]
                     ) -> list[EmotionResult]:
        """All persons' results: those of ``todo`` (evaluated) and ERROR for ``job.errors``."""
        out: list[EmotionResult] = [None] * len(job.msg.detections)  # type: ignore[list-item]
        for i, res in zip(todo, results):
            out[i] = res
        for i, reason in job.errors.items():
            out[i] = EmotionResult.failed(Status.ERROR, reason)
        return out

    def _answer_unprocessed(self, job: _Pending, status: Status, reason: str,
                            drop_reason: str | None) -> None:
        if drop_reason is not None:
            self.stats.count(f'drops.{drop_reason}')
        detections = detections_from_msg(job.msg)
        if self.pipeline is not None:
            results = self.pipeline.answer_unprocessed(detections, stamp_seconds(job.msg.header),
                                                       status, reason)
        else:
            results = [EmotionResult.failed(status, reason) for _ in detections]
        for i, why in job.errors.items():  # an unusable box stays the more specific reason
            results[i] = EmotionResult.failed(Status.ERROR, why)
        self._publish(job, results, None)

    def _publish(self, job: _Pending, results: list[EmotionResult], rgb,
                 image_header: Header | None = None, faces: list | None = None) -> None:
        """Answer ``job``: ``emotions``, the states and events, the REP-155 outputs (with the
        image's header, ``rgb`` for the cropped images and ``faces``, every person's face or
        None: see ``_evaluate``) and the debug image."""
        latency_ms = (time.monotonic() - job.received) * 1e3
        out = emotions_to_msg(job.msg, results, latency_ms)
        if self._pub is not None:
            self._pub.publish(out)
        self.stats.count('emotions_out')
        frame = self._publish_states(job, results, rgb)
        self.stats.latency(latency_ms)
        if self._rep155_out is not None:
            if rgb is not None:
                height, width = rgb.shape[:2]
            else:
                width, height = int(job.msg.image_width), int(job.msg.image_height)
            try:
                self._rep155_out.publish(
                    image_header or job.msg.header, width, height, job.msg.detections,
                    results, frame.states if frame is not None else None, rgb, faces)
            except Exception as exc:  # noqa: BLE001 - the emotions array is out already
                self.stats.count('errors.rep155_publish')
                self.kind_log.warn('rep155_publish', f'REP-155 publishing failed: '
                                   f'{type(exc).__name__}: {exc}', error=True)
        if (rgb is not None and self.params.get('publish_debug_image') and self._debug_pub
                is not None and self.count_subscribers('debug_image') > 0):
            drawn = draw_persons(rgb, detections_from_msg(job.msg), results)
            self._debug_pub.publish(numpy_to_image_msg(drawn, 'rgb8', header=job.msg.header))

    # -- per-person state over time (core.state) -----------------------------------------------
    def _configure_state(self, p: dict, backend) -> None:
        """``self.states`` from the ``state.*`` parameters (None when disabled); the labels use
        the backend's thresholds, a half-life < 0 the backend's default."""
        opts = StateOptions(enabled=p['state.enabled'], half_life_s=p['state.half_life_s'],
                            margin=p['state.margin'], min_hold_s=p['state.min_hold_s'],
                            forget_after_s=p['state.forget_after_s'],
                            max_tracks=p['state.max_tracks'],
                            identity_check=p['state.identity_check'],
                            identity_threshold=p['state.identity_threshold'])
        self.states = EmotionStates.for_backend(opts, backend) if opts.enabled else None
        self._state_last = None
        if self.states is not None:
            o = self.states.options
            identity = f'at {o.identity_threshold:g}' if o.identity_check else 'off'
            self.get_logger().info(
                f'per-person state: half-life {o.half_life_s:g} s, margin {o.margin:g}, hold '
                f'{o.min_hold_s:g} s, forget after {o.forget_after_s:g} s, identity check '
                f'{identity}; results reused for {self.pipeline.reuse.max_age_s:g} s')

    def _publish_states(self, job: _Pending, results: list[EmotionResult], rgb
                        ) -> FrameStates | None:
        """Update the states with one answered frame (``rgb``: its image, (H, W, 3) uint8,
        for the identity check; None when the frame was not decoded); publish them and the
        events. Returns the frame's states (in the persons' order: what the REP-155 outputs can
        use), or None. Never raises (the emotions array is out already): a failure is counted
        and logged."""
        states = self.states
        if states is None:
            return None
        try:
            header = job.msg.header
            stamp_s = stamp_seconds(header)
            boxes = (None if rgb is None
                     else [d.bbox for d in detections_from_msg(job.msg)])
            frame = states.update_frame([d.track_id for d in job.msg.detections], results,
                                        stamp_s, image=rgb, boxes=boxes)
            last = self._state_last
            if last is None or stamp_s >= last[0]:
                self._state_last = (stamp_s, time.monotonic(), header.frame_id)
            if self._states_pub is not None:
                self._states_pub.publish(states_to_msg(job.msg, frame.states))
            self._publish_events(header, frame.events)
            return frame
        except Exception as exc:  # noqa: BLE001 - a destroyed publisher during shutdown, ...
            self.stats.count('errors.state')
            self.kind_log.warn('state', f'per-person state failed: {type(exc).__name__}: {exc}',
                               error=True)
            return None

    def _publish_events(self, header: Header, events: list[StateEvent]) -> None:
        if not events:
            return
        self.stats.count('events_out', len(events))
        if self._events_pub is not None:
            self._events_pub.publish(events_to_msg(header, events))

    def _reset_states(self) -> None:
        """End every state (stamps went backwards, the detector restarted): their tracks
        may name other people now."""
        states, last = self.states, self._state_last
        if states is None:
            return
        events = states.reset()
        if events:
            self._publish_events(Header(stamp=time_from_seconds(events[0].stamp_s),
                                        frame_id=last[2] if last else ''), events)
        self._state_last = None

    def _on_state_timer(self) -> None:
        """Forget persons also when no frame arrives: once the input has stopped (nothing
        answered for state.forget_after_s of wall time and nothing waiting), tick the states at
        the newest stamp plus the time elapsed since it was answered. The only place wall time
        enters the state, and only while no frame comes: a replay without such pauses gives
        exactly the events of the live run (README "How each person feels over time")."""
        states, last = self.states, self._state_last
        if (states is None or last is None or not self._subs or not len(states)
                or self._busy_since is not None):
            return
        with self._cond:
            if self._pending or self._waiting:
                return
        idle_s = time.monotonic() - last[1]
        if idle_s <= states.options.forget_after_s:
            return
        events = states.tick(last[0] + idle_s)
        if events:
            self.stats.count('state.forgotten_by_timer',
                             sum(e.kind == EventKind.LEFT for e in events))
            self._publish_events(Header(stamp=time_from_seconds(events[0].stamp_s),
                                        frame_id=last[2]), events)

    def _state_diagnostics(self) -> dict:
        """``state.*`` keys of /diagnostics (states held, totals, the half-life in use) and the
        reuse age in use (``reuse.max_age_s``: by the backend when the parameter is < 0)."""
        states = self.states
        reuse = {'reuse.max_age_s': self.pipeline.reuse.max_age_s} if self.pipeline else {}
        if states is None:
            return {**reuse, 'state.enabled': False}
        counts = states.counters()
        return {**reuse, 'state.enabled': True, 'state.half_life_s': states.options.half_life_s,
                **{f'state.{k}': v for k, v in sorted(counts.items())}}

    # -- diagnostics --------------------------------------------------------------------------
    def diagnostics(self) -> tuple[int, str, dict]:
        """(level, message, key values) of the node now; what ``/diagnostics`` carries."""
        counts = self.stats.snapshot()
        pct = self.stats.percentiles()
        det_rate = self.stats.rate('detections_in')
        img_rate = self.stats.rate('images_in')
        now = time.monotonic()
        busy_since = self._busy_since
        with self._cond:
            depth, cached_images = len(self._pending), len(self._images)
            body_frames_waiting = len(self._waiting)
            image_mb = (self._image_bytes + self._waiting_bytes) / 2**20
            oldest = self._pending[0].received if self._pending else None
        busy_s = now - busy_since if busy_since is not None else 0.0
        waiting_s = now - oldest if oldest is not None else 0.0
        stall = self.params['stall_timeout_s']
        recent_errors = sum(self.stats.rate(k) for k in counts if k.startswith('errors.')
                            and k.count('.') == 1)
        level, message = OK, 'ok'
        if busy_s > stall:
            level, message = ERROR, (f'stalled: the model has been processing one frame for '
                                     f'{busy_s:.1f} s (stall_timeout_s={stall})')
        elif waiting_s > stall + self.params['pair_timeout_s']:
            level, message = ERROR, (f'stalled: detections have waited {waiting_s:.1f} s '
                                     'without an answer')
        elif pct[90] == pct[90] and pct[90] > self.params['slow_latency_ms']:
            level, message = WARN, f'slow: p90 latency {pct[90]:.0f} ms'
        elif counts.get('qos_incompatible', 0):
            level, message = WARN, ('QoS mismatch: an image publisher is incompatible with '
                                    'image_reliability (no images from it)')
        elif img_rate > 0 and det_rate == 0:
            level, message = WARN, 'images arrive but no detections (is the detector running?)'
        elif recent_errors > 0:
            level, message = WARN, 'some persons could not be evaluated (see errors.*)'
        backend = self.pipeline.backend if self.pipeline else None
        values = {
            'images_in_hz': f'{self.stats.rate("images_in"):.2f}',
            'detections_in_hz': f'{det_rate:.2f}',
            'emotions_out_hz': f'{self.stats.rate("emotions_out"):.2f}',
            'latency_ms_p50': f'{pct[50]:.1f}', 'latency_ms_p90': f'{pct[90]:.1f}',
            'latency_ms_p99': f'{pct[99]:.1f}', 'queue_depth': depth,
            'image_cache': cached_images, 'body_frames_waiting': body_frames_waiting,
            'images_held_mb': f'{image_mb:.1f}',
            'backend': backend.name if backend else '', 'model': backend.model_id if backend else '',
            'device': getattr(backend, 'device', '') if backend else '',
            'model_loaded': bool(backend and backend.loaded),
            'oom_retries': getattr(backend, 'oom_retries', 0) if backend else 0,
            'tracks_cached': len(self.pipeline.cache) if self.pipeline else 0,
            'busy_s': f'{busy_s:.2f}',
        }
        if backend is not None:
            try:  # e.g. backend.prefix_sharing (False: questions re-encoded), backend.vad
                values.update({f'backend.{k}': v for k, v in backend.diagnostics().items()})
            except Exception as exc:  # noqa: BLE001 - diagnostics must never fail
                values['backend.diagnostics_error'] = f'{type(exc).__name__}: {exc}'
        values.update(self._state_diagnostics())
        values.update({k: v for k, v in sorted(counts.items())})
        return level, message, values


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run emotion_perception emotion_node``."""
    return run_node_process(EmotionNode, args)


if __name__ == '__main__':
    sys.exit(main())
