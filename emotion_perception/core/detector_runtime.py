"""Which inference runtime runs the person detector: torch, or its weights exported (and cached).

``runtime`` (the person_detector parameter, ``DetectorOptions.runtime``):

* ``torch``: the ultralytics PyTorch model as loaded from the weights (CPU or CUDA).
* ``openvino`` / ``onnxruntime``: the same weights exported by ultralytics' own exporter (offline,
  seconds) to OpenVINO IR or ONNX and run on the CPU by that runtime.
* ``auto``: the fastest one installed for the device, as measured with
  ``bench/bench_runtimes.py`` (section 0 of ``bench_pipeline.py``; README "The person
  detector's runtime"): on a CUDA device torch
  (the runtimes installed here run on the CPU only); on an x86-64 CPU OpenVINO, else ONNX Runtime,
  else torch; on other CPUs (aarch64: Jetson, Raspberry Pi) torch, as nothing else was measured
  there. A tracker whose ReID reads the detector's own features (``with_reid`` with
  ``model: auto``, BoT-SORT) needs the PyTorch model: ultralytics attaches a hook to its Detect
  layer, and with an exported model it would load a separate ReID classifier from the hub
  instead (a download, refused offline). ``auto`` then picks torch, and an explicit exported
  runtime is refused with that reason.

Same input geometry and precision as torch, so the boxes agree: the models are exported with
dynamic input shapes, so ultralytics letterboxes each frame to the same stride-aligned rectangle
as for the PyTorch model (a fixed square input shifts the boxes: min IoU 0.68 against torch on
bus.jpg), and OpenVINO is held to float32 (``pin_openvino_float32``) unless the detector's
``half`` option allows reduced precision: on CPUs with AVX512-BF16 or AMX it computes in bf16
by default, faster but with scores about 0.005 off, which changes which of two overlapping
boxes survives NMS (bus.jpg: 4 persons instead of torch's 3 at the project's confidence 0.4).

The export cache: one folder per (weights' SHA-256, input size, runtime and its version,
ultralytics version), made at configure when missing and never re-made while valid: beside the
weights file when its folder is writable (``<stem>.exports/``, with a ``.gitignore`` so git never
picks it up), else (and for weights shipped in an installed package, ``pkg://``: pip owns those
folders) in the user cache, ``$XDG_CACHE_HOME/emotion_perception/detector_exports`` (default
``~/.cache``). ``cache_dir`` overrides both. A folder is written under a temporary name and
renamed when complete, under a file lock, so concurrent processes never see half an export.

Offline: the exporters and runtimes ultralytics needs are checked here against its own version
requirements before it is called, so its ``check_requirements`` never tries to pip-install them;
a missing or failing one makes the detector fall back to torch, with the reason logged once and
shown in the node's diagnostics (``runtime_reason``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

LOG = logging.getLogger(__name__)

RUNTIMES = ('auto', 'torch', 'openvino', 'onnxruntime')
#: exported runtimes, in the order ``auto`` prefers them on an x86-64 CPU (measured, see above)
EXPORTED = ('openvino', 'onnxruntime')
#: ultralytics export format of each exported runtime
FORMATS = {'openvino': 'openvino', 'onnxruntime': 'onnx'}
#: distributions each runtime needs to export and to run, with ultralytics' own version ranges
#: (its exporter and AutoBackend would try to pip-install anything missing or outside them)
REQUIREMENTS = {
    'openvino': {'openvino': '>=2024.0.0'},
    'onnxruntime': {'onnx': '>=1.12.0,<2.0.0', 'onnxslim': '>=0.1.82', 'onnxruntime': ''},
}
#: the pins of requirements/perception.txt, for the error messages
PINS = {'openvino': 'openvino==2026.4.1', 'onnx': 'onnx==1.23.2', 'onnxslim': 'onnxslim==0.1.98',
        'onnxruntime': 'onnxruntime==1.32.0'}
#: bump when the way exports are made changes (old cache folders are then not reused)
CACHE_FORMAT = 1
#: name of the key file in a cache folder (written last: its presence marks a complete export)
KEY_FILE = 'export.json'
#: ReID trackers whose ``model: auto`` reads the detector's features (ultralytics trackers)
REID_TRACKERS = ('botsort', 'tracktrack', 'deepocsort')

_LOGGED: set[str] = set()


class RuntimeExportError(RuntimeError):
    """The exported model could not be made or found (the message says why)."""


@dataclasses.dataclass(frozen=True)
class RuntimeChoice:
    """What runs the detector.

    Attributes:
        runtime: 'torch' | 'openvino' | 'onnxruntime' (what actually runs).
        requested: the configured ``runtime`` ('auto' included).
        model_path: what ultralytics loads: the weights, or the exported model (file/folder).
        reason: why this runtime (auto's rule, or why it fell back to torch).
        exported: True when the export was made by this call (False: cache hit, or torch).
    """

    runtime: str
    requested: str
    model_path: str
    reason: str
    exported: bool = False


def log_once(level: int, message: str) -> None:
    """Log ``message`` once per process (configure may run many times)."""
    if message not in _LOGGED:
        _LOGGED.add(message)
        LOG.log(level, message)


def installed_version(distribution: str) -> str:
    """Installed version of ``distribution`` ('' when missing), its module never imported."""
    module = {'onnxruntime': 'onnxruntime'}.get(distribution, distribution)
    try:
        if importlib.util.find_spec(module) is None:
            return ''
        return importlib.metadata.version(distribution)
    except (ValueError, ImportError, importlib.metadata.PackageNotFoundError):
        return ''


def missing_requirements(runtime: str) -> list[str]:
    """What ``runtime`` lacks to export and run: '<requirement> (installed: <version>)'."""
    from packaging.specifiers import SpecifierSet
    missing = []
    for dist, spec in REQUIREMENTS.get(runtime, {}).items():
        version = installed_version(dist)
        if not version:
            missing.append(f'{dist} is not installed (pip install {PINS[dist]})')
        elif spec and version not in SpecifierSet(spec):
            missing.append(f'{dist} {version} is outside {spec} (pip install {PINS[dist]})')
    return missing


def tracker_config(tracker: str | Mapping[str, Any]) -> dict[str, Any]:
    """The tracker configuration: a mapping as is, else the YAML file ultralytics would read
    (a path, or the name of one it ships such as 'botsort.yaml'); {} for '' (no tracker)."""
    if isinstance(tracker, Mapping):
        return dict(tracker)
    if not tracker:
        return {}
    import yaml
    path = Path(tracker)
    if not path.is_file():
        from ultralytics.utils.checks import check_yaml
        path = Path(check_yaml(tracker))
    return yaml.safe_load(path.read_text()) or {}


def reid_needs_torch(tracker: str | Mapping[str, Any]) -> str:
    """Why the tracker needs the PyTorch model ('' when it does not): a ReID tracker whose
    ``model: auto`` reads the detector's own features."""
    cfg = tracker_config(tracker)
    if (cfg.get('tracker_type') in REID_TRACKERS and cfg.get('with_reid')
            and str(cfg.get('model', 'auto')) == 'auto'):
        return (f"the {cfg['tracker_type']} tracker's ReID (with_reid, model: auto) reads the "
                "detector's own features, which only the PyTorch model exposes (with an "
                'exported model ultralytics would load a separate ReID model from the hub)')
    return ''


def auto_runtime(device: str, reid_reason: str = '', machine: str = '') -> tuple[str, str]:
    """(runtime, reason) that ``auto`` picks for ``device`` ('cpu' or 'cuda...')."""
    if reid_reason:
        return 'torch', f'auto: torch, because {reid_reason}'
    if str(device).startswith('cuda'):
        return 'torch', 'auto: torch on CUDA (the exported runtimes installed run on the CPU)'
    machine = machine or platform.machine()
    if machine.lower() not in ('x86_64', 'amd64'):
        return 'torch', (f'auto: torch on this {machine} CPU (OpenVINO and ONNX Runtime were '
                         'measured faster on x86-64 only; set runtime to try them)')
    for runtime in EXPORTED:
        if not missing_requirements(runtime):
            return runtime, f'auto: {runtime}, the fastest runtime installed for an x86-64 CPU'
    return 'torch', ('auto: torch (neither OpenVINO nor ONNX Runtime is installed: pip install '
                     f'{PINS["openvino"]})')


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def export_key(weights: Path, runtime: str, image_size: int) -> dict[str, Any]:
    """What an export depends on: the weights' bytes, input size, runtime version, exporter."""
    import ultralytics
    dist = 'openvino' if runtime == 'openvino' else 'onnxruntime'
    return {'weights_sha256': file_sha256(weights), 'image_size': int(image_size),
            'runtime': runtime, 'runtime_version': installed_version(dist),
            'onnx_version': installed_version('onnx') if runtime == 'onnxruntime' else '',
            'ultralytics': ultralytics.__version__, 'dynamic': True, 'format': CACHE_FORMAT}


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/emotion_perception/detector_exports`` (default ``~/.cache``)."""
    base = os.environ.get('XDG_CACHE_HOME') or str(Path.home() / '.cache')
    return Path(base) / 'emotion_perception' / 'detector_exports'


def cache_root(weights: Path, configured: str = '', from_package: bool = False) -> Path:
    """Where exports of ``weights`` are kept (see the module docstring)."""
    if configured:
        return Path(configured).expanduser()
    if not from_package and os.access(weights.parent, os.W_OK):
        return weights.parent / f'{weights.stem}.exports'
    return user_cache_dir()


def runtime_of(model: Path) -> str:
    """The runtime ultralytics uses for a model file or folder (exported ones by their name)."""
    if model.suffix == '.onnx':
        return 'onnxruntime'
    if model.name.endswith('_openvino_model') or model.suffix == '.xml':
        return 'openvino'
    return 'torch'


def exported_file(folder: Path, runtime: str) -> Path:
    """The model ultralytics loads inside a cache folder (OpenVINO: a folder, ONNX: a file)."""
    return folder / ('model_openvino_model' if runtime == 'openvino' else 'model.onnx')


def _valid(folder: Path, runtime: str, key: dict[str, Any]) -> bool:
    try:
        if json.loads((folder / KEY_FILE).read_text()) != key:
            return False
    except (OSError, ValueError):
        return False
    model = exported_file(folder, runtime)
    if runtime == 'openvino':
        return (model / 'model.xml').is_file() and (model / 'model.bin').is_file()
    return model.is_file() and model.stat().st_size > 0


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive file lock (other processes exporting the same model wait)."""
    with open(path, 'a') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run_export(weights: Path, runtime: str, image_size: int) -> None:
    """ultralytics' exporter, writing beside ``weights`` (CPU, float32, dynamic input shape)."""
    from ultralytics import YOLO
    from ultralytics.utils import LOGGER as ULTRA_LOG
    from .threads import keep_torch_threads
    level = ULTRA_LOG.level
    ULTRA_LOG.setLevel(logging.WARNING)  # its export banner is dozens of lines per model
    try:
        with keep_torch_threads():
            YOLO(str(weights), task='detect').export(
                format=FORMATS[runtime], dynamic=True, imgsz=int(image_size), device='cpu',
                simplify=True, verbose=False)
    finally:
        ULTRA_LOG.setLevel(level)


def exported_model(weights: Path, runtime: str, image_size: int, root: Path
                   ) -> tuple[Path, bool]:
    """The exported model of ``weights`` for ``runtime``: from the cache, else exported now.

    Returns:
        (path ultralytics loads, True when it was exported by this call).

    Raises:
        RuntimeExportError: a requirement is missing, or the export or the cache failed.
    """
    missing = missing_requirements(runtime)
    if missing:
        raise RuntimeExportError('; '.join(missing))
    key = export_key(weights, runtime, image_size)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = root / f'{weights.stem}-{runtime}-{digest}'
    try:
        root.mkdir(parents=True, exist_ok=True)
        if root.name.endswith('.exports') and not (root / '.gitignore').exists():
            (root / '.gitignore').write_text('# exported detector models (a cache)\n*\n')
        with _locked(root / f'.{folder.name}.lock'):
            if _valid(folder, runtime, key):
                return exported_file(folder, runtime), False
            _export_into(folder, weights, runtime, image_size, key)
    except RuntimeExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - OSError, exporter errors of every kind
        raise RuntimeExportError(f'{type(exc).__name__}: {exc}') from exc
    return exported_file(folder, runtime), True


def _export_into(folder: Path, weights: Path, runtime: str, image_size: int,
                 key: dict[str, Any]) -> None:
    """Export into a temporary sibling of ``folder``, then rename it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f'.{folder.name}.', dir=folder.parent))
    tmp.chmod(0o755)  # readable by every user of the cache, as the folder it replaces
    try:
        shutil.copyfile(weights, tmp / 'model.pt')
        _run_export(tmp / 'model.pt', runtime, image_size)
        (tmp / 'model.pt').unlink()
        if not exported_file(tmp, runtime).exists():
            raise RuntimeExportError(f'the {runtime} exporter wrote no model')
        (tmp / KEY_FILE).write_text(json.dumps(key, indent=1))
        if folder.exists():  # an invalid leftover (interrupted, other versions)
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def pin_openvino_float32(model: Any, xml: Path) -> None:
    """Make an ultralytics ``YOLO`` of an OpenVINO model compute in float32.

    ultralytics compiles the model with ``PERFORMANCE_HINT: LATENCY`` only, so the CPU plugin
    picks bf16 where the CPU has it. A callback at each prediction's start recompiles the model
    once per predictor with ``INFERENCE_PRECISION_HINT: f32`` added (ultralytics' OpenVINO
    backend keeps its compile function and compiled model as ``compile_model`` and
    ``ov_compiled_model``); when that layout is not found it says so once and leaves it.
    """
    from functools import partial

    def on_predict_start(predictor: Any) -> None:
        backend = getattr(getattr(predictor, 'model', None), 'backend', None)
        if backend is None or getattr(backend, 'pinned_float32', False):
            return
        compile_fn = getattr(backend, 'compile_model', None)
        if not isinstance(compile_fn, partial) or not hasattr(backend, 'ov_compiled_model'):
            log_once(logging.WARNING, 'person detector: cannot hold OpenVINO to float32 in this '
                     'ultralytics version; boxes may differ slightly from torch')
            backend.pinned_float32 = True
            return
        config = dict(compile_fn.keywords.get('config') or {}, INFERENCE_PRECISION_HINT='f32')
        backend.compile_model = partial(compile_fn, config=config)
        backend.ov_compiled_model = backend.compile_model(str(xml))
        backend.pinned_float32 = True
    model.add_callback('on_predict_start', on_predict_start)


def choose_runtime(requested: str, device: str, weights: Path, image_size: int,
                   tracker: str | Mapping[str, Any] = '', cache_dir: str = '',
                   from_package: bool = False) -> RuntimeChoice:
    """Decide what runs the detector and make the exported model when needed.

    Args:
        requested: one of ``RUNTIMES``.
        device: the resolved torch device ('cpu', 'cuda', 'cuda:1').
        weights: the .pt weights file.
        image_size: inference size in pixels (the export's trace size).
        tracker: the tracker (YAML name/path or mapping; '' none): ReID may need torch.
        cache_dir: '' = the default place (``cache_root``).
        from_package: the weights ship inside an installed package (``pkg://``).

    Raises:
        ValueError: an unknown runtime, or an exported runtime the configuration cannot use (a
            CUDA device, a tracker that reads the detector's features): the reason says which.
    """
    if requested not in RUNTIMES:
        raise ValueError(f'runtime must be one of {RUNTIMES}, got {requested!r}')
    reid = reid_needs_torch(tracker)
    if requested == 'auto':
        runtime, reason = auto_runtime(device, reid)
    else:
        runtime, reason = requested, f'runtime {requested} (configured)'
        if runtime != 'torch' and reid:
            raise ValueError(f'runtime {runtime} cannot run this tracker: {reid}; use runtime '
                             'torch or auto, or a ReID model file (model: <path>)')
        if runtime != 'torch' and str(device).startswith('cuda'):
            raise ValueError(f'runtime {runtime} runs on the CPU, but device is {device}: set '
                             'device cpu, or runtime torch / auto')
    if runtime == 'torch':
        return RuntimeChoice('torch', requested, str(weights), reason)
    root = cache_root(weights, cache_dir, from_package)
    try:
        path, made = exported_model(weights, runtime, image_size, root)
    except RuntimeExportError as exc:
        why = f'{runtime} unavailable ({exc}); running torch instead'
        log_once(logging.WARNING, f'person detector: {why}')
        return RuntimeChoice('torch', requested, str(weights), why)
    if made:
        LOG.info('person detector: exported %s to %s', weights, path)
    return RuntimeChoice(runtime, requested, str(path), reason, exported=made)


__all__ = ['EXPORTED', 'RUNTIMES', 'RuntimeChoice', 'RuntimeExportError', 'auto_runtime',
           'cache_root', 'choose_runtime', 'export_key', 'exported_model', 'installed_version',
           'missing_requirements', 'pin_openvino_float32', 'reid_needs_torch', 'runtime_of',
           'tracker_config', 'user_cache_dir']
