"""Reading the nodes' YAML parameter files for the offline tools (same files as on a robot)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from ..core.backends import backend_class
from ..core.detector import DetectorOptions, TrackerOptions
from ..core.pipeline import ReuseOptions
from ..core.state import StateOptions


def config_dir() -> Path:
    """The package's config/ folder: installed share dir, else the source tree."""
    for candidate in (Path(sys.prefix) / 'share' / 'emotion_perception' / 'config',
                      Path(__file__).resolve().parents[2] / 'config'):
        if (candidate / 'emotion_node.yaml').is_file():
            return candidate
    raise FileNotFoundError('config/emotion_node.yaml not found (is emotion_perception installed?)')


def _flatten(d: dict, prefix: str = '') -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            out.update(_flatten(value, f'{name}.'))
        else:
            out[name] = value
    return out


def node_params(path: Path, node: str) -> dict[str, Any]:
    """Flattened ``ros__parameters`` of ``node`` in a ROS 2 parameter file ({} if absent).

    Keys match the node name exactly, with a namespace (``/ns/node``) or with wildcards
    (``/**/node``, ``/**``).
    """
    data = yaml.safe_load(Path(path).read_text()) or {}
    out: dict[str, Any] = {}
    for key, section in data.items():
        name = str(key).rstrip('/').split('/')[-1]
        if name in (node, '**', '*') and isinstance(section, dict):
            out.update(_flatten(section.get('ros__parameters', {}) or {}))
    return out


def refuse_foreign_options(backend: str, fields: set[str], overrides: dict[str, Any]) -> None:
    """Raise ValueError for an option given explicitly (``overrides``, e.g. a command-line
    flag) that backend ``backend`` does not take: it would otherwise be dropped silently (a
    ``--quantization nf4`` that does not happen can run an 8 GB robot out of memory). The YAML
    files' ``backend.*`` keys are for all backends and are not checked."""
    foreign = sorted(k for k, v in overrides.items() if v is not None and k.startswith(
        'backend.') and k != 'backend.name' and k.split('.', 1)[1] not in fields)
    if foreign:
        names = [k.split('.', 1)[1] for k in foreign]
        flags = ', '.join('--' + n.replace('_', '-') for n in names)
        raise ValueError(f'backend {backend!r} has no {", ".join(map(repr, names))} option '
                         f'(drop {flags}); its options: {", ".join(sorted(fields))}')


@dataclasses.dataclass
class PipelineConfig:
    detector: DetectorOptions
    backend_name: str
    backend_options: dict[str, Any]
    reuse: ReuseOptions
    state: StateOptions = dataclasses.field(default_factory=StateOptions)


#: ``--tracker`` choices -> the person_detector's ``tracker`` parameter.
TRACKER_CHOICES = {'bytetrack': 'bytetrack.yaml', 'botsort': 'botsort.yaml', 'none': ''}


def add_tracker_arguments(p: argparse.ArgumentParser) -> None:
    """The tracker flags of ``process`` and ``demo`` (the person_detector's ``tracker`` and
    ``tracking.*`` parameters; the other ``tracking.*`` thresholds via ``--config``). Not given
    = config/person_detector.yaml's value."""
    p.add_argument('--tracker', choices=sorted(TRACKER_CHOICES),
                   help='person tracker (botsort: BoT-SORT, with --reid its re-identification)')
    p.add_argument('--track-buffer', type=int, metavar='FRAMES',
                   help='frames a lost track is kept to be re-found (30 = 1 s at 30 fps)')
    p.add_argument('--reid', action=argparse.BooleanOptionalAction, default=None,
                   help="BoT-SORT: match on appearance from the detector's own features")


def tracker_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The tracker flags given -> person_detector parameter names and values."""
    out = {'tracker': TRACKER_CHOICES.get(getattr(args, 'tracker', None)),
           'tracking.track_buffer': getattr(args, 'track_buffer', None),
           'tracking.with_reid': getattr(args, 'reid', None)}
    return {k: v for k, v in out.items() if v is not None}


def ros_param_arg(name: str, value: Any) -> str:
    """``name:=value`` for a node's ``--ros-args -p``, the value written as YAML (JSON is YAML),
    so '' stays an empty string and True a bool."""
    return f'{name}:={json.dumps(value)}'


def load_pipeline_config(path: str | Path | None = None,
                         overrides: dict[str, Any] | None = None,
                         detector_overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Detector, backend, reuse and state settings from the default YAML files, then ``path``
    (a file with ``person_detector`` and/or ``emotion_node`` sections), then ``overrides``
    (emotion node parameter names, e.g. {'backend.name': 'vlm', 'backend.model': '...'}) and
    ``detector_overrides`` (person_detector parameter names, e.g. {'runtime': 'torch',
    'tracking.with_reid': True}); None values are ignored."""
    cdir = config_dir()
    det = node_params(cdir / 'person_detector.yaml', 'person_detector')
    emo = node_params(cdir / 'emotion_node.yaml', 'emotion_node')
    if path is not None:
        det.update(node_params(Path(path), 'person_detector'))
        emo.update(node_params(Path(path), 'emotion_node'))
    emo.update({k: v for k, v in (overrides or {}).items() if v is not None})
    det.update({k: v for k, v in (detector_overrides or {}).items() if v is not None})
    det_fields = {f.name for f in dataclasses.fields(DetectorOptions)} - {'tracking'}
    detector = DetectorOptions(**{k: (tuple(v) if isinstance(v, list) else v)
                                  for k, v in det.items() if k in det_fields},
                               tracking=TrackerOptions.from_params(det))
    name = emo.get('backend.name', 'face_baseline')
    fields = {f.name for f in dataclasses.fields(backend_class(name).Options)}
    refuse_foreign_options(name, fields, overrides or {})
    options = {}
    for key, value in emo.items():
        if key.startswith('backend.') and key != 'backend.name':
            short = key.split('.', 1)[1]
            if short in fields and value != '':
                options[short] = value
    reuse = ReuseOptions(**{k.split('.', 1)[1]: v for k, v in emo.items()
                            if k.startswith('reuse.')})
    state = StateOptions(**{k.split('.', 1)[1]: v for k, v in emo.items()
                            if k.startswith('state.')})
    state.validate()
    return PipelineConfig(detector, name, options, reuse, state)
