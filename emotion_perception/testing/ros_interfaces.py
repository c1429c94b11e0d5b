"""The interface packages of other stacks (vision_msgs, hri_msgs, yolo_msgs) for tests/benches.

None of them is on PyPI. On a robot they come from apt (``ros-jazzy-vision-msgs``,
``ros-jazzy-hri-msgs``; yolo_msgs with yolo_ros). Elsewhere :func:`ensure` builds them once from
the upstream sources in ``../shared/ros2_interfaces`` (its ``build.sh``, about a minute) into
``.venv/ros2-interfaces`` (or ``$EP_ROS2_INTERFACES``) and makes them importable in this
process (what ``source install/setup.bash`` does: ``sys.path``, ``PYTHONPATH``,
``LD_LIBRARY_PATH`` and ``AMENT_PREFIX_PATH`` for subprocesses, and the already started process
preloads the packages' libraries, since its loader read ``LD_LIBRARY_PATH`` at start-up).
``make test`` runs the build before pytest, so CI runs these tests instead of skipping them.
"""
from __future__ import annotations

import ctypes
import fcntl
import glob
import importlib
import os
import pathlib
import subprocess
import sys

from . import shared

PACKAGES = ('vision_msgs', 'hri_msgs', 'yolo_msgs')
REPO = pathlib.Path(__file__).resolve().parents[2]
_done: dict[tuple[str, ...], str | None] = {}


def prefix_dir() -> pathlib.Path:
    """Where the colcon workspace of the interface packages is (built or to be built)."""
    return pathlib.Path(os.environ.get('EP_ROS2_INTERFACES',
                                       REPO / '.venv' / 'ros2-interfaces')).absolute()


def sources_dir() -> pathlib.Path:
    """The upstream sources and build.sh (``$EP_ROS2_INTERFACES_SRC`` or ../shared/...)."""
    return pathlib.Path(os.environ.get('EP_ROS2_INTERFACES_SRC',
                                       REPO.parent / 'shared' / 'ros2_interfaces'))


def _importable(packages: tuple[str, ...]) -> bool:
    try:
        for p in packages:
            importlib.import_module(f'{p}.msg')
        return True
    except ImportError:
        return False


def _prepend(var: str, paths: list[str]) -> None:
    old = [p for p in os.environ.get(var, '').split(os.pathsep) if p]
    os.environ[var] = os.pathsep.join([*[p for p in paths if p not in old], *old])


def activate(prefix: pathlib.Path, packages: tuple[str, ...] = PACKAGES) -> None:
    """Make the packages built in ``prefix`` importable here and in subprocesses."""
    install = prefix / 'install'
    sites = sorted(glob.glob(str(install / '*' / 'lib' / 'python3*' / 'site-packages')))
    libs = sorted(str(install / p / 'lib') for p in packages if (install / p / 'lib').is_dir())
    _prepend('PYTHONPATH', sites)
    _prepend('LD_LIBRARY_PATH', libs)
    _prepend('AMENT_PREFIX_PATH', [str(install / p) for p in packages
                                   if (install / p).is_dir()])
    for site in sites:
        if site not in sys.path:
            sys.path.insert(0, site)
    for lib in libs:  # the loader of this process read LD_LIBRARY_PATH at start-up
        for so in sorted(glob.glob(os.path.join(lib, '*.so'))):
            if 'rosidl_generator_c' in so:  # the others link against it
                ctypes.CDLL(so, mode=ctypes.RTLD_GLOBAL)
        for so in sorted(glob.glob(os.path.join(lib, '*.so'))):
            ctypes.CDLL(so, mode=ctypes.RTLD_GLOBAL)
    importlib.invalidate_caches()


def build(prefix: pathlib.Path) -> str | None:
    """Build all packages into ``prefix`` with build.sh (once; locked against parallel runs).
    Returns None, or why it could not."""
    script = sources_dir() / 'build.sh'
    if not script.is_file():
        return f'no {script} to build them from'
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix.parent / (prefix.name + '.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.run(['bash', str(script), sys.prefix, str(prefix)],
                              capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        return f'build.sh failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}'
    return None


def ensure(packages: tuple[str, ...] = PACKAGES) -> str | None:
    """Make ``packages`` importable (installed, built before, or built now). Returns None when
    they are, else the reason they are not (for ``pytest.skip``; a ``shared.skip_reason``)."""
    packages = tuple(packages)
    if packages in _done:
        return _done[packages]
    reason = None
    if not _importable(packages):
        prefix = prefix_dir()
        built = all((prefix / 'install' / p / 'share' / p / 'package.xml').is_file()
                    for p in packages)
        if not built:
            reason = build(prefix)
        if reason is None:
            activate(prefix, PACKAGES)
            if not _importable(packages):
                reason = f'{packages} not importable after building them in {prefix}'
    if reason is not None:
        reason = shared.skip_reason(
            f'interface packages {list(packages)} are missing ({reason}); on a robot: '
            'apt install ros-jazzy-vision-msgs ros-jazzy-hri-msgs (yolo_msgs: yolo_ros)')
    _done[packages] = reason
    return reason
