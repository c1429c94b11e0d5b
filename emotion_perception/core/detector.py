"""Person detection and tracking with ultralytics YOLO (ROS-free).

``PersonDetector`` wraps an ultralytics model restricted to person classes and, optionally,
ultralytics' own multi-object trackers (ByteTrack / BoT-SORT) for track ids that stay stable
while a person is tracked. Note ultralytics' trackers report a new person once the track is
confirmed (from its second frame, except on the very first frame of a stream). The model runs
in PyTorch or, exported from the same weights, in OpenVINO / ONNX Runtime (``runtime``; see
``detector_runtime``).

The tracker is configured by ``TrackerOptions`` (how long a lost track is kept, the association
thresholds, BoT-SORT's re-identification on the detector's own features): ``PersonDetector``
writes them into the tracker YAML file that ultralytics reads
(``TrackerOptions.ultralytics_config``: ultralytics' shipped ``bytetrack.yaml`` /
``botsort.yaml`` with these keys replaced, so every other key keeps ultralytics' default).
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .backends.base import ModelLoadError, resolve_device, validate_image
from .detector_runtime import (RUNTIMES, RuntimeChoice, choose_runtime, pin_openvino_float32,
                               runtime_of)
from .model_files import OFFLINE_PERSON_DETECTOR, PKG_SCHEME, ModelFileError, resolve_model_path
from .threads import keep_torch_threads
from .types import BBox, DetectionResult, PersonDetection, Timings

LOG = logging.getLogger(__name__)

#: Trackers ultralytics ships configurations for; '' disables tracking (ids stay empty).
TRACKERS = ('bytetrack.yaml', 'botsort.yaml', '')
#: BoT-SORT's global motion compensation methods ('none': a fixed camera, saves ~5-20 ms).
GMC_METHODS = ('sparseOptFlow', 'orb', 'sift', 'ecc', 'none')
#: Prefix of the tracker settings among the person_detector node's parameters.
TRACKING_PREFIX = 'tracking.'


@dataclasses.dataclass
class TrackerOptions:
    """The tracker settings that decide whether a person keeps their id (ultralytics' names; the
    person_detector node's ``tracking.*`` parameters). The defaults are this package's, chosen
    with bench/bench_tracking.py (README, "Identity through occlusion"); ``ULTRALYTICS_TRACKING``
    holds ultralytics' own.

    Attributes:
        track_buffer: frames a lost track is kept for re-finding (frames, not seconds:
            30 frames are 1 s at 30 fps, 3 s at 10 fps). Longer keeps ids through longer
            occlusions, and lets a different person who appears where one vanished take the id.
        match_thresh: association gate on the matching cost (1 - IoU x detection score, or
            BoT-SORT's appearance distance when lower); pairs costing more are not matched.
        new_track_thresh: a detection not matched to a track starts one from this score.
            Detections below the detector's ``confidence`` never reach the tracker.
        with_reid: BoT-SORT only (ignored by ByteTrack): also match on appearance, from the
            detector's own features (ultralytics' ``model: auto``: no extra weights, needs a
            PyTorch ``.pt`` detector with a Detect head; ``reid_auto_supported``).
        proximity_thresh: BoT-SORT + ReID: appearance is used only for track/detection pairs
            whose IoU is at least this (0: anywhere in the image, so a person who moved while
            hidden can be re-found; ultralytics' default 0.5 only re-finds them in place).
        appearance_thresh: BoT-SORT + ReID: minimum appearance similarity in [0, 1] (ultralytics'
            ``1 - cosine distance / 2``) for an appearance match.
        gmc_method: BoT-SORT's camera-motion compensation, one of ``GMC_METHODS``.
    """

    track_buffer: int = 90
    match_thresh: float = 0.8
    new_track_thresh: float = 0.25
    with_reid: bool = True
    proximity_thresh: float = 0.0
    appearance_thresh: float = 0.9
    gmc_method: str = 'sparseOptFlow'

    def validate(self) -> None:
        """Raise ValueError naming the offending setting."""
        if not 1 <= self.track_buffer <= 100_000:
            raise ValueError(f'tracking.track_buffer must be in [1, 100000] frames, '
                             f'got {self.track_buffer}')
        for name in ('match_thresh', 'new_track_thresh', 'proximity_thresh', 'appearance_thresh'):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f'tracking.{name} must be in [0, 1], got {value}')
        if self.gmc_method not in GMC_METHODS:
            raise ValueError(f'tracking.gmc_method must be one of {GMC_METHODS}, '
                             f'got {self.gmc_method!r}')

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> 'TrackerOptions':
        """From node parameters (``tracking.track_buffer``, ...); missing keys keep defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k[len(TRACKING_PREFIX):]: v for k, v in params.items()
                      if k.startswith(TRACKING_PREFIX) and k[len(TRACKING_PREFIX):] in names})

    def ultralytics_config(self, tracker: str) -> dict[str, Any]:
        """The tracker YAML for ultralytics: its shipped ``tracker`` file ('bytetrack.yaml' or
        'botsort.yaml') with these settings (BoT-SORT's own keys only for BoT-SORT)."""
        from ultralytics.utils import YAML
        from ultralytics.utils.checks import check_yaml
        config = dict(YAML.load(check_yaml(tracker)))
        config.update(track_buffer=int(self.track_buffer), match_thresh=float(self.match_thresh),
                      new_track_thresh=float(self.new_track_thresh))
        if config.get('tracker_type') == 'botsort':
            config.update(with_reid=bool(self.with_reid), model='auto',
                          proximity_thresh=float(self.proximity_thresh),
                          appearance_thresh=float(self.appearance_thresh),
                          gmc_method=None if self.gmc_method == 'none' else self.gmc_method)
        return config


#: ultralytics' defaults (its bytetrack.yaml / botsort.yaml), for comparison.
ULTRALYTICS_TRACKING = TrackerOptions(track_buffer=30, match_thresh=0.8, new_track_thresh=0.25,
                                      with_reid=False, proximity_thresh=0.5,
                                      appearance_thresh=0.8, gmc_method='sparseOptFlow')


def reid_auto_supported(model: Any) -> bool:
    """Whether ultralytics' BoT-SORT re-identification with ``model: auto`` can use the features
    of this ``YOLO`` model: a PyTorch detection model whose last layer is a Detect head that is
    not end-to-end (YOLOv8 / YOLO11 ``.pt``). The same test as ultralytics 8.4's
    ``trackers.track.on_predict_start``: for anything else (an ONNX, OpenVINO, TorchScript or
    TensorRT export, a YOLO26 on its end-to-end head) ultralytics silently switches to the
    classifier ``yolo26n-cls.pt``, which it downloads (impossible offline)."""
    import torch
    from ultralytics.nn.modules.head import Detect
    net = getattr(model, 'model', None)
    try:
        head = net.model[-1]
    except (AttributeError, IndexError, TypeError):
        return False
    return (isinstance(net, torch.nn.Module) and isinstance(head, Detect)
            and not getattr(head, 'end2end', False))


@dataclasses.dataclass
class DetectorOptions:
    """Options of ``PersonDetector`` (the person_detector node's parameters of the same names).

    Attributes:
        model: ultralytics weights: a path, a ``pkg://`` file (see ``model_files``) or a hub name
            such as ``yolo11n.pt`` (downloads on first use: robots with internet only).
        device: 'auto' (cuda:0 when available, else cpu), 'cpu', 'cuda:0', '0', ...
        confidence: minimum detection confidence in [0, 1].
        iou: IoU threshold of non-maximum suppression in [0, 1].
        image_size: inference size in pixels (long side, multiple of 32).
        half: reduced precision: FP16 inference on a GPU (torch); with runtime openvino, bf16
            on CPUs that have it (AVX512-BF16, AMX: about 1.9x float32 here, boxes no longer
            exactly torch's). Otherwise OpenVINO is held to float32.
        person_class_ids: class ids that are persons; empty = auto (the class named 'person',
            or every class when the model has none, as for the offline detector whose classes
            are 'Normal' and 'Fall').
        tracker: 'bytetrack.yaml', 'botsort.yaml' or '' (no tracking).
        max_detections: at most this many persons per image.
        tracking: the tracker's settings (``TrackerOptions``).
        runtime: 'auto' | 'torch' | 'openvino' | 'onnxruntime' (``detector_runtime``: auto
            picks OpenVINO on x86-64 CPUs, torch on CUDA).
        runtime_cache_dir: where exported models are cached; '' = beside the weights when
            writable, else the user cache (``detector_runtime.cache_root``).
    """

    model: str = OFFLINE_PERSON_DETECTOR
    device: str = 'auto'
    confidence: float = 0.25
    iou: float = 0.7
    image_size: int = 640
    half: bool = False
    person_class_ids: Sequence[int] = ()
    tracker: str = 'botsort.yaml'
    max_detections: int = 50
    tracking: TrackerOptions = dataclasses.field(default_factory=TrackerOptions)
    runtime: str = 'auto'
    runtime_cache_dir: str = ''

    def validate(self) -> None:
        """Raise ValueError with the offending option."""
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f'confidence must be in [0, 1], got {self.confidence}')
        if not 0.0 <= self.iou <= 1.0:
            raise ValueError(f'iou must be in [0, 1], got {self.iou}')
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(f'image_size must be a multiple of 32 >= 32, got {self.image_size}')
        if self.tracker not in TRACKERS:
            raise ValueError(f'tracker must be one of {TRACKERS}, got {self.tracker!r}')
        if self.max_detections < 1:
            raise ValueError(f'max_detections must be >= 1, got {self.max_detections}')
        self.tracking.validate()
        if self.runtime not in RUNTIMES:
            raise ValueError(f'runtime must be one of {RUNTIMES}, got {self.runtime!r}')


class PersonDetector:
    """YOLO person detector (+ tracker) on RGB images.

    Example:
        >>> det = PersonDetector(DetectorOptions()); det.load()
        >>> result = det.detect(rgb)          # rgb: (H, W, 3) uint8
        >>> [d.track_id for d in result.detections]
    """

    def __init__(self, options: DetectorOptions | None = None) -> None:
        self.options = options or DetectorOptions()
        self.options.validate()
        self.model: Any = None
        self.class_ids: list[int] = []
        self.device = ''
        self.tracker_file = ''  # the tracker YAML written at load() ('' without tracking)
        #: what runs the model and why (set by ``load``)
        self.runtime: RuntimeChoice | None = None

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def load(self) -> None:
        """Load the weights in the configured runtime (exporting them first when needed).

        Raises:
            ModelLoadError: with the reason (path, hub, format, a runtime this configuration
                cannot use).
        """
        if self.model is not None:
            return
        opts = self.options
        try:
            path = resolve_model_path(opts.model)
        except ModelFileError as exc:
            raise ModelLoadError(str(exc)) from exc
        dev = resolve_device(opts.device)
        self.tracker_file = self._write_tracker_file()
        try:
            model, choice = self._load_runtime(path, dev)
            self._check_reid(model, choice)
            self.class_ids = self._person_classes(dict(model.names))
        except ModelLoadError:
            self._remove_tracker_file()
            raise
        self.runtime = choice
        self.device = 'cpu' if choice.runtime != 'torch' else ('0' if dev == 'cuda' else dev)
        self.model = model
        LOG.info('person detector %s loaded: classes %s as persons, device %s, runtime %s (%s)',
                 path, {i: model.names[i] for i in self.class_ids}, self.device,
                 choice.runtime, choice.reason)

    def _load_runtime(self, path: str, device: str) -> tuple[Any, RuntimeChoice]:
        """The ultralytics model in the chosen runtime (an export that does not run: torch)."""
        choice = self._choose_runtime(path, device)
        model = self._load_yolo(choice.model_path)
        if choice.runtime == 'openvino' and not self.options.half:
            xml = Path(choice.model_path)  # an exported folder, or a user's .xml
            pin_openvino_float32(model, xml if xml.suffix == '.xml' else next(xml.glob('*.xml')))
        if choice.runtime != 'torch':
            model, choice = self._check_exported(model, choice, path)
        return model, choice

    def _check_reid(self, model: Any, choice: RuntimeChoice) -> None:
        """BoT-SORT's ReID on the detector's own features needs a PyTorch Detect model (else
        ultralytics would download a classifier): refused with the reason."""
        opts = self.options
        if (opts.tracker == 'botsort.yaml' and opts.tracking.with_reid
                and (choice.runtime != 'torch' or not reid_auto_supported(model))):
            raise ModelLoadError(
                f'tracking.with_reid needs a PyTorch .pt detector with a Detect head (its own '
                f'features are the appearance); {opts.model!r} in {choice.runtime} is not one, '
                'and ultralytics would download yolo26n-cls.pt instead. Set tracking.with_reid '
                'false.')

    def _choose_runtime(self, path: str, device: str) -> RuntimeChoice:
        """``detector_runtime.choose_runtime`` for these options; a model that is no .pt file
        (an exported one, a TensorRT engine) runs as given."""
        opts = self.options
        weights = Path(path)
        if weights.suffix != '.pt':
            return RuntimeChoice(runtime_of(weights), opts.runtime, path, 'model loaded as given')
        if not weights.is_file() and opts.runtime != 'torch':
            weights = Path(self._load_yolo(path).ckpt_path)  # a hub name: downloaded now
        try:
            import torch  # noqa: F401 - first, so ultralytics' OMP_NUM_THREADS=1 cannot reach it
            with keep_torch_threads():  # the tracker's YAML and the exporter import ultralytics
                return choose_runtime(opts.runtime, device, weights, opts.image_size,
                                      self.tracker_file, opts.runtime_cache_dir,
                                      opts.model.startswith(PKG_SCHEME))
        except ValueError as exc:
            raise ModelLoadError(f'person detector: {exc}') from exc

    def _check_exported(self, model: Any, choice: RuntimeChoice, weights: str
                        ) -> tuple[Any, RuntimeChoice]:
        """An exported model that does not run falls back to torch (the reason logged)."""
        try:
            self._warm_up(model, 'cpu')
            return model, choice
        except Exception as exc:  # noqa: BLE001 - any failure of the runtime or the file
            why = (f'{choice.runtime} model {choice.model_path} does not run '
                   f'({type(exc).__name__}: {exc}); running torch instead')
            LOG.warning('person detector: %s', why)
            return self._load_yolo(weights), dataclasses.replace(choice, runtime='torch',
                                                                 model_path=weights, reason=why)

    def warm_up(self) -> None:
        """One prediction on a blank frame, so the first camera frame does not pay the lazy
        set-up (imports, the runtime's compilation). The tracker sees nothing."""
        if self.model is None:
            raise ModelLoadError('person detector is not loaded; call load() first')
        self._warm_up(self.model, self.device)

    def _warm_up(self, model: Any, device: str) -> None:
        size = self.options.image_size
        # the tracker argument as ``detect`` passes it, so its first call reuses this predictor
        with keep_torch_threads():
            model.predict(np.zeros((size, size, 3), np.uint8), imgsz=size, device=device,
                          tracker=self.tracker_file or 'bytetrack.yaml', verbose=False)

    def _load_yolo(self, path: str) -> Any:
        try:
            import torch  # noqa: F401 - first, so ultralytics' OMP_NUM_THREADS=1 cannot reach it
            with keep_torch_threads():
                from ultralytics import YOLO
                return YOLO(path, task='detect')
        except Exception as exc:  # ultralytics raises many types (FileNotFound, Connection...)
            raise ModelLoadError(
                f'cannot load person detector {path!r}: {type(exc).__name__}: {exc}. '
                'Give a local .pt path, a pkg:// file, or a hub name on a machine with internet.'
            ) from exc

    def _person_classes(self, names: dict[int, str]) -> list[int]:
        """Class ids counted as persons (configured, or the 'person' class, or all)."""
        if self.options.person_class_ids:
            unknown = sorted(set(self.options.person_class_ids) - set(names))
            if unknown:
                raise ModelLoadError(f'person_class_ids {unknown} not in the model classes {names}')
            return sorted(int(c) for c in self.options.person_class_ids)
        persons = [i for i, n in names.items() if n.lower() == 'person']
        return persons or sorted(names)

    def _write_tracker_file(self) -> str:
        """Write the tracker YAML (ultralytics reads a file) into a private temporary folder
        that ``unload`` removes; '' without tracking."""
        self._remove_tracker_file()
        if not self.options.tracker:
            return ''
        import torch  # noqa: F401 - first, so ultralytics' OMP_NUM_THREADS=1 cannot reach it
        import yaml
        with keep_torch_threads():  # ultralytics_config imports ultralytics
            config = self.options.tracking.ultralytics_config(self.options.tracker)
        path = Path(tempfile.mkdtemp(prefix='emotion_perception_tracker_')) / self.options.tracker
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return str(path)

    def _remove_tracker_file(self) -> None:
        if self.tracker_file:
            shutil.rmtree(Path(self.tracker_file).parent, ignore_errors=True)
            self.tracker_file = ''

    def unload(self) -> None:
        """Drop the model (and its tracker state); frees GPU memory."""
        self.model = None
        self._remove_tracker_file()
        try:
            import torch
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass

    def reset_tracker(self) -> None:
        """Forget all tracks (e.g. after a camera restart or a jump back in time)."""
        if self.model is not None and getattr(self.model, 'predictor', None) is not None:
            for tracker in getattr(self.model.predictor, 'trackers', []) or []:
                tracker.reset()

    def detect(self, image: np.ndarray) -> DetectionResult:
        """Persons in ``image`` ((H, W, 3) uint8 RGB), boxes xyxy in pixels, clipped to the image.

        Raises:
            ImageError: unusable image.
            ModelLoadError: not loaded.
        """
        if self.model is None:
            raise ModelLoadError('person detector is not loaded; call load() first')
        validate_image(image)
        h, w = image.shape[:2]
        opts = self.options
        bgr = np.ascontiguousarray(image[..., ::-1])  # ultralytics expects BGR numpy arrays
        kwargs = dict(conf=opts.confidence, iou=opts.iou, imgsz=opts.image_size,
                      classes=self.class_ids, device=self.device, max_det=opts.max_detections,
                      verbose=False)
        # passed only when set (ultralytics warns about the argument itself); torch only
        if opts.half and self.runtime is not None and self.runtime.runtime == 'torch':
            kwargs['half'] = True
        with keep_torch_threads():  # ultralytics re-sets torch's threads at its first call
            if opts.tracker:
                result = self.model.track(bgr, persist=True, tracker=self.tracker_file,
                                          **kwargs)[0]
            else:
                result = self.model.predict(bgr, **kwargs)[0]
        boxes = result.boxes
        xyxy = boxes.xyxy.cpu().numpy() if len(boxes) else np.zeros((0, 4), np.float32)
        conf = boxes.conf.cpu().numpy() if len(boxes) else np.zeros(0, np.float32)
        cls = boxes.cls.cpu().numpy().astype(int) if len(boxes) else np.zeros(0, int)
        ids = boxes.id.cpu().numpy().astype(int) if boxes.id is not None else None
        detections = []
        for i in range(len(xyxy)):
            x1, y1, x2, y2 = (float(v) for v in xyxy[i])
            box = BBox(max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2))
            detections.append(PersonDetection(
                bbox=box, confidence=float(conf[i]),
                track_id=str(ids[i]) if ids is not None else '', class_id=int(cls[i])))
        speed = result.speed or {}
        timings = Timings(preprocess_ms=float(speed.get('preprocess') or 0.0),
                          inference_ms=float(speed.get('inference') or 0.0),
                          postprocess_ms=float(speed.get('postprocess') or 0.0))
        return DetectionResult(detections, w, h, timings)
