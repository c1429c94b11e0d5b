"""rosbag2 (MCAP) tools on the pure-Python ``rosbags`` library: make-bag, replay, record.

Sub-commands (registered by :func:`register`):

* ``make-bag INPUT... --output BAG``: image files, folders of images or videos into a bag of
  ``sensor_msgs/msg/Image`` with header stamps ``start + i / rate``.
* ``replay BAG``: publish a bag's raw CDR messages with their original timing (log-time
  deltas), or as fast as possible.
* ``record BAG --topics ...``: subscribe with ``raw=True`` and write what arrives.

The same functionality is reusable from Python: :func:`write_image_bag`, :func:`make_bag`,
:func:`iter_bag_images`, :func:`iter_bag_messages`, :class:`BagPlayer`, :class:`BagRecorder` and
:func:`typestore_with_our_msgs` (rosbags typestore that knows our ``emotion_perception/msg``
types). Bag reading/writing and ``make-bag`` never import rclpy; only the player and the
recorder need DDS (rclpy is imported here, it is cheap: 0.1-0.2 s).
"""
from __future__ import annotations

import argparse
import functools
import importlib
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.task import Future

if TYPE_CHECKING:
    from rosbags.typesys.store import Typestore

LOG = logging.getLogger(__name__)

PACKAGE = 'emotion_perception'
DEFAULT_TOPIC = '/camera/image_raw'
DEFAULT_FRAME_ID = 'camera'
#: frame rate of make-bag for still images when --rate is not given (videos use their own fps)
DEFAULT_RATE_HZ = 10.0
IMAGE_MSGTYPE = 'sensor_msgs/msg/Image'
COMPRESSED_MSGTYPE = 'sensor_msgs/msg/CompressedImage'
IMAGE_EXTENSIONS = frozenset({'.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp', '.ppm',
                              '.pgm', '.pnm'})
VIDEO_EXTENSIONS = frozenset({'.mp4', '.avi', '.mkv', '.mov', '.webm', '.mpg', '.mpeg', '.m4v',
                              '.wmv'})
#: make-bag shows a progress bar from this many frames on
PROGRESS_MIN_FRAMES = 100
#: history depth of the player's publishers: a fast replay may run this far ahead of a subscriber
PLAYER_QOS_DEPTH = 100
#: history depth of the recorder's subscriptions: messages waiting for the executor
RECORDER_QOS_DEPTH = 1000
#: how often the recorder looks on the graph for topics it does not subscribe to yet
RECORDER_DISCOVERY_PERIOD_S = 0.1


class BagError(RuntimeError):
    """A bag, an input or a topic that the bag tools cannot use; the message says why."""


# --- message types ---------------------------------------------------------------------------

def msg_dirs() -> list[Path]:
    """Folders that may hold our ``.msg`` files, most authoritative first.

    The source tree's ``msg/`` (a checkout or an editable install), the ament index share dir
    (colcon/apt installs), then ``<sys.prefix>/share/emotion_perception/msg`` (pip install).
    """
    dirs = [Path(__file__).resolve().parents[2] / 'msg']
    try:
        from ament_index_python.packages import get_package_share_directory
        dirs.append(Path(get_package_share_directory(PACKAGE)) / 'msg')
    except Exception:  # noqa: BLE001 - not on the ament index (or no ament_index_python)
        pass
    dirs.append(Path(sys.prefix) / 'share' / PACKAGE / 'msg')
    return dirs


def our_msg_files() -> list[Path]:
    """Our ``.msg`` files, from the first folder of :func:`msg_dirs` that has them.

    Raises:
        BagError: no folder holds them.
    """
    for folder in msg_dirs():
        files = sorted(folder.glob('*.msg'))
        if any(f.name == 'PersonEmotionArray.msg' for f in files):
            return files
    raise BagError(f'cannot find the {PACKAGE} .msg files in any of '
                   f'{[str(d) for d in msg_dirs()]}; install the package or run from its '
                   'source tree')


def typestore_with_our_msgs(distro: str = 'ROS2_JAZZY') -> Typestore:
    """A new rosbags typestore with the standard types of ``distro`` plus ours.

    Our types are registered from the ``.msg`` text (``emotion_perception/msg/PersonEmotionArray``
    etc.), so their hashes (RIHS01) equal rosidl's.

    Args:
        distro: a member name of ``rosbags.typesys.Stores`` (``ROS2_JAZZY``, ``ROS2_HUMBLE``...).
    """
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores[distro])
    types: dict = {}
    for path in our_msg_files():
        types.update(get_types_from_msg(path.read_text(encoding='utf-8'),
                                        f'{PACKAGE}/msg/{path.stem}'))
    store.register(types)
    return store


def message_class(msgtype: str) -> type:
    """The rclpy class of a type: ``'sensor_msgs/msg/Image'`` -> ``sensor_msgs.msg.Image``.

    Raises:
        BagError: the Python package of the type is not installed (or our msgs are not built).
    """
    parts = msgtype.split('/')
    if len(parts) == 2:
        parts = [parts[0], 'msg', parts[1]]
    if len(parts) != 3:
        raise BagError(f'malformed message type {msgtype!r}; expected pkg/msg/Name')
    pkg, kind, name = parts
    try:
        return getattr(importlib.import_module(f'{pkg}.{kind}'), name)
    except (ImportError, AttributeError) as err:
        hint = (' (run `make build` to generate emotion_perception.msg)' if pkg == PACKAGE
                else f' (install the ROS package {pkg})')
        raise BagError(f'no Python class for message type {msgtype!r}{hint}: {err}') from err


# --- inputs for make-bag ---------------------------------------------------------------------

def parse_size(text: str) -> tuple[int, int]:
    """``'640x480'`` -> (640, 480) (width, height); for argparse ``type=``."""
    try:
        w, h = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'expected WIDTHxHEIGHT, e.g. 640x480, got {text!r}') from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f'width and height must be positive, got {text!r}')
    return w, h


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files, videos and folders (their images and videos, sorted by name) as a file list.

    Raises:
        BagError: a path that does not exist, an unsupported file type or an empty folder.
    """
    files: list[Path] = []
    supported = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir()
                           if p.is_file() and p.suffix.lower() in supported)
            if not found:
                raise BagError(f'folder {item} holds no images or videos '
                               f'({", ".join(sorted(supported))})')
            files.extend(found)
        elif item.is_file():
            if item.suffix.lower() not in supported:
                raise BagError(f'{item}: unsupported file type; images: '
                               f'{", ".join(sorted(IMAGE_EXTENSIONS))}; videos: '
                               f'{", ".join(sorted(VIDEO_EXTENSIONS))}')
            files.append(item)
        else:
            raise BagError(f'input {item} does not exist')
    return files


def _video_info(path: Path) -> tuple[int, float]:
    """(frame count as reported by the container, fps) of a video; 0 where unknown."""
    import cv2
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise BagError(f'OpenCV cannot open the video {path}')
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        return max(count, 0), (fps if math.isfinite(fps) and fps > 0 else 0.0)
    finally:
        cap.release()


#: a video read stops after this many failed reads in a row (the end, or a broken stream);
#: fewer, followed by a good frame, are corrupt frames in the middle, skipped and reported
MAX_CONSECUTIVE_BAD_READS = 16


class CorruptFrame(ValueError):
    """A frame of a video or bag that cannot be read or decoded (yielded, not raised, by the
    readers that skip such frames)."""


class VideoCutShort(CorruptFrame):
    """Reading a video stopped (``MAX_CONSECUTIVE_BAD_READS`` failed reads in a row) before the
    last frame its container announces: ``unread`` frames were never read. Yielded last by
    :func:`iter_video_frames`; not a frame itself."""

    def __init__(self, message: str, unread: int) -> None:
        super().__init__(message)
        self.unread = unread


def iter_video_frames(path: str | Path) -> Iterator[np.ndarray | CorruptFrame]:
    """The frames of a video as BGR arrays, in order; a frame that cannot be decoded is
    yielded as a :class:`CorruptFrame` instead of ending the video there (OpenCV's ``read``
    fails once per corrupt frame and goes on with the next one).

    Failed reads at the end are the end of the file or corrupt frames: those within the frame
    count the container announces are yielded as corrupt frames. After
    ``MAX_CONSECUTIVE_BAD_READS`` failed reads in a row reading stops; when the container
    announces more frames than that, a :class:`VideoCutShort` saying how many were not read
    comes last. (A container that announces no count: failed reads at the end are taken as
    its end.)

    Raises:
        BagError: OpenCV cannot open the video.
    """
    import cv2
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise BagError(f'OpenCV cannot open the video {path}')
    announced = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0)
    name = Path(path).name
    delivered = failed = 0  # frames yielded (good or corrupt); failed reads since the last
    try:
        while failed < MAX_CONSECUTIVE_BAD_READS:
            ok, bgr = cap.read()
            if not ok or bgr is None:
                failed += 1
                continue
            for _ in range(failed):  # they were in the middle: report them
                yield CorruptFrame(f'{name}: a frame could not be decoded (corrupt or '
                                   'truncated data)')
            delivered += failed + 1
            failed = 0
            yield bgr
    finally:
        cap.release()
    yield from _video_end(name, announced, delivered, failed)


def _video_end(name: str, announced: int, delivered: int, failed: int
               ) -> Iterator[CorruptFrame]:
    """What the ``failed`` reads that ended a video were (see :func:`iter_video_frames`):
    corrupt frames as far as the container's ``announced`` count reaches, then the frames
    announced beyond them, unread."""
    missing = announced - delivered
    bad = min(failed, max(missing, 0))
    for _ in range(bad):
        yield CorruptFrame(f'{name}: a frame at the end could not be decoded (corrupt or '
                           'truncated data)')
    unread = missing - bad
    if unread > 0:
        yield VideoCutShort(
            f'{name}: reading stopped after {failed} failed reads in a row at frame '
            f'{delivered}: the container announces {announced} frames, {unread} of them were '
            'not read', unread)


def count_frames(files: Sequence[Path]) -> int:
    """Number of frames :func:`iter_frames` yields for ``files`` (videos: the container's count)."""
    return sum(_video_info(f)[0] if f.suffix.lower() in VIDEO_EXTENSIONS else 1 for f in files)


def iter_frames(files: Sequence[Path],
                resize: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """The frames of image files and videos, in order, as (H, W, 3) uint8 RGB.

    Args:
        files: from :func:`expand_inputs`.
        resize: (width, height) to resize every frame to (``cv2.INTER_AREA``), or None.

    A corrupt frame in the middle of a video is skipped with a warning (see
    :func:`iter_video_frames`).

    Raises:
        BagError: an image or video that OpenCV cannot read.
    """
    import cv2

    def finish(bgr: np.ndarray) -> np.ndarray:
        if resize is not None and (bgr.shape[1], bgr.shape[0]) != resize:
            bgr = cv2.resize(bgr, resize, interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(bgr[..., ::-1])

    for path in files:
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            for bgr in iter_video_frames(path):
                if isinstance(bgr, CorruptFrame):
                    LOG.warning('skipped: %s', bgr)
                    continue
                yield finish(bgr)
        else:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise BagError(f'OpenCV cannot read the image {path} (corrupt or unsupported)')
            yield finish(bgr)


# --- writing ---------------------------------------------------------------------------------

def _check_new_bag_path(path: Path) -> None:
    if path.exists():
        raise BagError(f'{path} exists already; choose a new bag path (bags are never '
                       'overwritten)')


def open_bag_writer(path: str | Path) -> Any:
    """An opened rosbags rosbag2 writer (MCAP, latest rosbag2 version); call ``close()``.

    Raises:
        BagError: ``path`` exists already (rosbags never overwrites).
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    path = Path(path)
    _check_new_bag_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = Writer(path, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    return writer


class BagWriteResult(NamedTuple):
    """What :func:`write_image_bag` wrote: frame count and first/last header stamps (ns)."""

    path: Path
    frames: int
    first_stamp_ns: int
    last_stamp_ns: int
    seconds: float


def write_image_bag(frames: Iterable[np.ndarray], path: str | Path, topic: str = DEFAULT_TOPIC,
                    rate_hz: float = DEFAULT_RATE_HZ, frame_id: str = DEFAULT_FRAME_ID,
                    encoding: str = 'rgb8', start_ns: int | None = None,
                    progress_total: int | None = None) -> BagWriteResult:
    """Write RGB frames into a new MCAP bag as ``sensor_msgs/msg/Image`` on ``topic``.

    Frame ``i`` gets header stamp and log time ``start_ns + round(i * 1e9 / rate_hz)`` and
    ``header.frame_id = frame_id``; frames may differ in size.

    Args:
        frames: (H, W, 3) uint8 RGB arrays.
        path: the bag folder to create (must not exist).
        encoding: 'rgb8' or 'bgr8' (pixels are reordered for bgr8) or 'mono8' ((H, W) frames).
        start_ns: stamp of the first frame; default: now (``time.time_ns()``).
        progress_total: show a tqdm bar with this total when it is >= PROGRESS_MIN_FRAMES.

    Raises:
        BagError: the path exists, a frame has the wrong shape/dtype, no frames, bad rate.
    """
    if not (rate_hz > 0 and math.isfinite(rate_hz)):
        raise BagError(f'rate must be a positive number of Hz, got {rate_hz}')
    if encoding not in ('rgb8', 'bgr8', 'mono8'):
        raise BagError(f"encoding must be 'rgb8', 'bgr8' or 'mono8', got {encoding!r}")
    store = typestore_with_our_msgs()
    image_t = store.types[IMAGE_MSGTYPE]
    header_t = store.types['std_msgs/msg/Header']
    time_t = store.types['builtin_interfaces/msg/Time']
    start = time.time_ns() if start_ns is None else int(start_ns)
    period_ns = 1e9 / rate_hz
    want_ndim = 2 if encoding == 'mono8' else 3
    path = Path(path)
    t0 = time.perf_counter()
    writer = open_bag_writer(path)
    bar = None
    if progress_total is not None and progress_total >= PROGRESS_MIN_FRAMES:
        from tqdm import tqdm
        bar = tqdm(total=progress_total, unit='frame', desc=f'writing {path.name}')
    written, stamp = 0, start
    try:
        # offered QoS in the metadata: what the player uses (reliable, volatile)
        conn = writer.add_connection(topic, IMAGE_MSGTYPE, typestore=store,
                                     offered_qos_profiles=[_to_rosbags_qos(player_qos())])
        for frame in frames:
            arr = np.asarray(frame)
            if arr.dtype != np.uint8 or arr.ndim != want_ndim or (
                    want_ndim == 3 and arr.shape[2] != 3):
                want = '(H, W)' if want_ndim == 2 else '(H, W, 3)'
                raise BagError(f'frame {written}: expected {want} uint8, got shape {arr.shape} '
                               f'dtype {arr.dtype}')
            if encoding == 'bgr8':
                arr = arr[..., ::-1]
            arr = np.ascontiguousarray(arr)
            height, width = arr.shape[:2]
            stamp = start + round(written * period_ns)
            msg = image_t(
                header=header_t(stamp=time_t(sec=stamp // 1_000_000_000,
                                             nanosec=stamp % 1_000_000_000),
                                frame_id=frame_id),
                height=height, width=width, encoding=encoding, is_bigendian=0,
                step=width * (1 if encoding == 'mono8' else 3), data=arr.reshape(-1))
            writer.write(conn, stamp, store.serialize_cdr(msg, IMAGE_MSGTYPE))
            written += 1
            if bar is not None:
                bar.update(1)
        if written == 0:
            raise BagError('no frames to write (empty input)')
    except BaseException:
        writer.close()
        _remove_bag(path)
        raise
    finally:
        if bar is not None:
            bar.close()
    writer.close()
    return BagWriteResult(path, written, start, stamp, time.perf_counter() - t0)


def _remove_bag(path: Path) -> None:
    """Delete a half-written bag folder we created (only bag files, then the folder)."""
    for f in path.glob('*'):
        if f.is_file() and (f.suffix in ('.mcap', '.db3') or f.name == 'metadata.yaml'):
            f.unlink()
    try:
        path.rmdir()
    except OSError:
        pass


def make_bag(inputs: Sequence[str | Path], output: str | Path, *, topic: str = DEFAULT_TOPIC,
             rate_hz: float | None = None, frame_id: str = DEFAULT_FRAME_ID, encoding: str = 'rgb8',
             repeat: int = 1, resize: tuple[int, int] | None = None, start_ns: int | None = None,
             progress: bool = True) -> BagWriteResult:
    """Images, folders of images and videos into a bag of ``sensor_msgs/msg/Image``.

    Args:
        inputs: image files, folders (images and videos inside, sorted by name), video files.
        rate_hz: stamps are spaced 1/rate_hz apart; default: the first video's fps, else 10 Hz.
        repeat: write the whole input sequence this many times (stamps keep increasing).
        resize: (width, height) for every frame, or None to keep each frame's size.
        progress: show a tqdm bar for inputs of PROGRESS_MIN_FRAMES frames or more.
    """
    if repeat < 1:
        raise BagError(f'repeat must be >= 1, got {repeat}')
    files = expand_inputs(inputs)
    if rate_hz is None:
        fps = next((_video_info(f)[1] for f in files if f.suffix.lower() in VIDEO_EXTENSIONS), 0.0)
        rate_hz = fps or DEFAULT_RATE_HZ
    total = count_frames(files) * repeat if progress else None

    def frames() -> Iterator[np.ndarray]:
        for _ in range(repeat):
            yield from iter_frames(files, resize)

    return write_image_bag(frames(), output, topic=topic, rate_hz=rate_hz, frame_id=frame_id,
                           encoding=encoding, start_ns=start_ns, progress_total=total)


# --- reading ---------------------------------------------------------------------------------

class BagImage(NamedTuple):
    """One image of a bag: running index, header stamp (ns), frame_id, (H, W, 3) uint8 RGB
    (or, from ``iter_bag_images(corrupt='yield')``, the :class:`CorruptFrame` saying why the
    message could not be used)."""

    index: int
    stamp_ns: int
    frame_id: str
    rgb: np.ndarray


class BagMessage(NamedTuple):
    """One message of a bag, deserialized by rosbags (a dataclass; arrays are numpy)."""

    topic: str
    msgtype: str
    log_time_ns: int
    msg: Any


class RawBagMessage(NamedTuple):
    """One message of a bag as stored: serialized CDR bytes."""

    topic: str
    msgtype: str
    log_time_ns: int
    raw: bytes


def _open_any_reader(path: str | Path) -> Any:
    from rosbags.highlevel import AnyReader
    path = Path(path)
    if not path.exists():
        raise BagError(f'bag {path} does not exist')
    return AnyReader([path], default_typestore=typestore_with_our_msgs())


def bag_topics(path: str | Path) -> dict[str, tuple[str, int]]:
    """``{topic: (msgtype, message count)}`` of a bag."""
    with _open_any_reader(path) as reader:
        return {name: (info.msgtype or '', info.msgcount) for name, info in reader.topics.items()}


def iter_raw_messages(path: str | Path,
                      topics: Iterable[str] | None = None) -> Iterator[RawBagMessage]:
    """The serialized messages of a bag in log-time order, optionally only on ``topics``."""
    from rosbags.rosbag2 import Reader
    path = Path(path)
    if not path.exists():
        raise BagError(f'bag {path} does not exist')
    wanted = set(topics) if topics is not None else None
    with Reader(path) as reader:
        conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
        if wanted is not None:
            missing = wanted - {c.topic for c in conns}
            if missing:
                raise BagError(f'topics {sorted(missing)} are not in {path}; it has '
                               f'{sorted({c.topic for c in reader.connections})}')
        if not conns:
            return
        for conn, log_time, raw in reader.messages(connections=conns):
            yield RawBagMessage(conn.topic, conn.msgtype, log_time,
                                raw if isinstance(raw, bytes) else bytes(raw))


def iter_bag_messages(path: str | Path,
                      topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
    """The messages of a bag in log-time order, deserialized with rosbags.

    Types come from the definitions stored in the bag, else from :func:`typestore_with_our_msgs`.

    Raises:
        BagError: missing bag or a topic not in it.
    """
    wanted = set(topics) if topics is not None else None
    with _open_any_reader(path) as reader:
        conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
        if wanted is not None and (missing := wanted - {c.topic for c in conns}):
            raise BagError(f'topics {sorted(missing)} are not in {path}; it has '
                           f'{sorted(reader.topics)}')
        if not conns:
            return
        for conn, log_time, raw in reader.messages(connections=conns):
            yield BagMessage(conn.topic, conn.msgtype, log_time,
                             reader.deserialize(raw, conn.msgtype))


def iter_bag_images(path: str | Path, topic: str | None = None,
                    max_pixels: int | None = None,
                    corrupt: str = 'raise') -> Iterator[BagImage]:
    """The images of one topic (``sensor_msgs/Image`` or ``CompressedImage``) as RGB arrays.

    Args:
        path: the bag folder.
        topic: the image topic; default: the bag's only image topic.
        max_pixels: refuse larger images (default: image_conversion.DEFAULT_MAX_PIXELS).
        corrupt: 'raise' (default): a message that cannot be deserialized or converted raises;
            'yield': it is yielded with a :class:`CorruptFrame` in place of ``rgb`` (and the
            bag read on); a bag that cannot be read further (a corrupt chunk) yields one
            last :class:`CorruptFrame` with the reason.

    Yields:
        :class:`BagImage` ``(index, stamp_ns, frame_id, rgb)``, rgb (H, W, 3) uint8 RGB.

    Raises:
        BagError: no image topic, several and none chosen, or ``topic`` is not an image topic.
        ImageConversionError: an image that cannot be converted (``corrupt='raise'``).
    """
    from emotion_perception.ros.image_conversion import (DEFAULT_MAX_PIXELS, compressed_to_rgb,
                                                         image_msg_to_rgb)
    from emotion_perception.ros.messages import stamp_ns
    if corrupt not in ('raise', 'yield'):
        raise ValueError(f"corrupt must be 'raise' or 'yield', got {corrupt!r}")
    cap = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    image_types = (IMAGE_MSGTYPE, COMPRESSED_MSGTYPE)
    with _open_any_reader(path) as reader:
        candidates = {c.topic: c.msgtype for c in reader.connections if c.msgtype in image_types}
        if topic is None:
            if len(candidates) != 1:
                raise BagError(f'{path} has {len(candidates)} image topics {sorted(candidates)}; '
                               'choose one with topic=')
            topic = next(iter(candidates))
        elif topic not in candidates:
            raise BagError(f'{topic!r} is not an image topic of {path}; image topics: '
                           f'{sorted(candidates)}, all topics: {sorted(reader.topics)}')
        conns = [c for c in reader.connections if c.topic == topic]
        messages = reader.messages(connections=conns)
        index = 0
        while True:
            try:
                conn, log_time, raw = next(messages)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - a corrupt chunk / record
                if corrupt == 'raise':
                    raise
                yield BagImage(index, 0, '', CorruptFrame(
                    f'the bag cannot be read after message {index}: {type(exc).__name__}: '
                    f'{exc}'))
                return
            stamp, frame_id = int(log_time), ''
            try:
                msg = reader.deserialize(raw, conn.msgtype)
                stamp = stamp_ns(msg.header)
                frame_id = msg.header.frame_id
                if conn.msgtype == IMAGE_MSGTYPE:
                    rgb = image_msg_to_rgb(msg, max_pixels=cap)
                else:
                    rgb = compressed_to_rgb(msg, max_pixels=cap)
            except Exception as exc:  # noqa: BLE001 - corrupt CDR, bad image, ...
                if corrupt == 'raise':
                    raise
                rgb = CorruptFrame(f'message {index} on {topic}: {type(exc).__name__}: {exc}')
            yield BagImage(index, stamp, frame_id, rgb)
            index += 1


# --- ROS: player and recorder ----------------------------------------------------------------

def parse_remap(items: Iterable[str]) -> dict[str, str]:
    """``['/a:=/b', ...]`` -> ``{'/a': '/b'}``.

    Raises:
        BagError: an item without ``:=``.
    """
    out: dict[str, str] = {}
    for item in items:
        src, sep, dst = item.partition(':=')
        if not sep or not src or not dst:
            raise BagError(f'remap must look like FROM:=TO, got {item!r}')
        out[src] = dst
    return out


def player_qos(depth: int = PLAYER_QOS_DEPTH, sensor_data: bool = False) -> QoSProfile:
    """Publisher QoS of the player: reliable (or best effort) + volatile, keep last ``depth``."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=(ReliabilityPolicy.BEST_EFFORT if sensor_data
                                   else ReliabilityPolicy.RELIABLE),
                      durability=DurabilityPolicy.VOLATILE)


class BagPlayer:
    """Publishes a bag's raw CDR messages on rclpy publishers from a background thread.

    Publishers are created in ``__init__`` (so subscribers can match before :meth:`start`); the
    thread waits for subscribers if asked, then publishes with the original log-time deltas
    divided by ``rate_scale`` (or back to back with ``fast``), optionally looping. Publishing needs
    no executor, so the player's node does not have to be spun (it may be).

    Attributes:
        published: messages published so far per output topic (after remapping).
        node: the rclpy node owning the publishers.
        error: the exception that ended the publishing thread, if any.
    """

    def __init__(self, bag: str | Path, *, node: Node | None = None, context: Context | None = None,
                 topics: Iterable[str] | None = None, remap: Mapping[str, str] | None = None,
                 rate_scale: float = 1.0, fast: bool = False, loop: bool = False,
                 qos: QoSProfile | None = None, wait_subscribers: int = 0,
                 wait_timeout_s: float = 10.0, node_name: str = 'bag_player') -> None:
        """Open the bag's topic list and create one publisher per (remapped) topic.

        Args:
            bag: the bag folder.
            node: a node to create the publishers on; default: a new node in ``context``.
            context: rclpy context for the new node (default context if None); must be initialised.
            topics: bag topics to publish (default: all).
            remap: bag topic -> published topic.
            rate_scale: 2.0 plays twice as fast; ignored with ``fast``.
            fast: publish back to back, ignoring the timing.
            loop: start again at the end until :meth:`stop`.
            qos: publisher QoS; default :func:`player_qos` (reliable, depth PLAYER_QOS_DEPTH).
            wait_subscribers: before publishing, wait until every publisher has this many
                subscribers (0: do not wait), at most ``wait_timeout_s`` (then warn and go on).

        Raises:
            BagError: missing bag, unknown topics, bad rate, a type without a Python class.
        """
        if not fast and not (rate_scale > 0 and math.isfinite(rate_scale)):
            raise BagError(f'rate_scale must be positive, got {rate_scale}')
        self.bag = Path(bag)
        self.rate_scale = float(rate_scale)
        self.fast = fast
        self.loop = loop
        self.wait_subscribers = int(wait_subscribers)
        self.wait_timeout_s = float(wait_timeout_s)
        self.remap = dict(remap or {})
        summary = bag_topics(self.bag)
        self.topics = list(summary) if topics is None else list(topics)
        if missing := [t for t in self.topics if t not in summary]:
            raise BagError(f'topics {missing} are not in {self.bag}; it has {sorted(summary)}')
        self._own_node = node is None
        self.node = node if node is not None else rclpy.create_node(node_name, context=context)
        profile = qos if qos is not None else player_qos()
        self._publishers: dict[str, Any] = {}
        self.published: dict[str, int] = {}
        for topic in self.topics:
            out = self.remap.get(topic, topic)
            self._publishers[topic] = self.node.create_publisher(
                message_class(summary[topic][0]), out, profile)
            self.published[out] = 0
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @property
    def total_published(self) -> int:
        return sum(self.published.values())

    @property
    def done(self) -> bool:
        """True once the thread finished (end of bag, stop() or error)."""
        return self._done.is_set()

    def wait_for_subscribers(self, count: int, timeout_s: float) -> bool:
        """Wait until every publisher has ``count`` subscribers; False on timeout or stop()."""
        deadline = time.monotonic() + timeout_s
        while not self._stop.is_set():
            if all(p.get_subscription_count() >= count for p in self._publishers.values()):
                return True
            if time.monotonic() >= deadline:
                return False
            self._stop.wait(0.02)
        return False

    def start(self) -> None:
        """Start publishing in a background thread (returns at once)."""
        if self._thread is not None:
            raise BagError('BagPlayer.start() was called twice')
        self._thread = threading.Thread(target=self._run_guarded, name='bag_player', daemon=True)
        self._thread.start()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the player is done; False on timeout."""
        return self._done.wait(timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop publishing and join the thread (idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def close(self) -> None:
        """stop(), then destroy the node if the player created it."""
        self.stop()
        if self._own_node:
            self.node.destroy_node()

    def run(self) -> int:
        """Publish in the calling thread until the end (or stop()); returns messages published.

        Raises:
            BagError or rclpy errors that ended publishing.
        """
        self._run_guarded()
        if self.error is not None:
            raise self.error
        return self.total_published

    def _run_guarded(self) -> None:
        try:
            self._play()
        except BaseException as err:  # noqa: BLE001 - reported through .error / run()
            self.error = err
            LOG.error('bag player stopped: %s', err)
        finally:
            self._done.set()

    def _play(self) -> None:
        if self.wait_subscribers > 0 and not self.wait_for_subscribers(
                self.wait_subscribers, self.wait_timeout_s):
            if self._stop.is_set():
                return
            counts = {self.remap.get(t, t): p.get_subscription_count()
                      for t, p in self._publishers.items()}
            LOG.warning('waited %.1f s for %d subscriber(s) per topic, have %s; publishing anyway',
                        self.wait_timeout_s, self.wait_subscribers, counts)
        while not self._stop.is_set():
            first_log: int | None = None
            t_start = 0.0
            for item in iter_raw_messages(self.bag, self.topics):
                if self._stop.is_set():
                    return
                if not self.fast:
                    if first_log is None:  # the clock starts at the first message, not at open
                        first_log, t_start = item.log_time_ns, time.monotonic()
                    delay = t_start + (item.log_time_ns - first_log) / 1e9 / self.rate_scale \
                        - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        return
                self._publishers[item.topic].publish(item.raw)
                out = self.remap.get(item.topic, item.topic)
                self.published[out] += 1
            if not self.loop:
                return


def _to_rosbags_qos(profile: QoSProfile) -> Any:
    """rclpy QoSProfile -> rosbags Qos (for the offered_qos_profiles in the bag metadata)."""
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                    QosReliability, QosTime)
    zero = QosTime(sec=0, nsec=0)
    keep_all = profile.history == HistoryPolicy.KEEP_ALL
    best_effort = profile.reliability == ReliabilityPolicy.BEST_EFFORT
    transient = profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
    return Qos(
        history=QosHistory.KEEP_ALL if keep_all else QosHistory.KEEP_LAST,
        depth=int(profile.depth),
        reliability=QosReliability.BEST_EFFORT if best_effort else QosReliability.RELIABLE,
        durability=QosDurability.TRANSIENT_LOCAL if transient else QosDurability.VOLATILE,
        deadline=zero, lifespan=zero, liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=zero, avoid_ros_namespace_conventions=False)


class BagRecorder(Node):
    """rclpy node writing the raw messages of ``topics`` into a new MCAP bag.

    Each topic is subscribed (``raw=True``) once its type is known (from ``types`` or the
    graph) and a publisher exists; unless ``qos`` is given the subscription adapts to the
    publishers like rosbag2: reliable when all of them are reliable, else best effort;
    transient-local when all are. Log time is the node clock at reception. Callbacks and
    stop() share a lock, so any executor (single or multi-threaded) may spin the node.

    Attributes:
        counts: messages written per topic.
        done_future: completed when ``max_count`` messages were written (spin on it).
        path: the bag folder.
    """

    def __init__(self, path: str | Path, topics: Sequence[str], *,
                 types: Mapping[str, str] | None = None, context: Context | None = None,
                 qos: QoSProfile | None = None, max_count: int | None = None,
                 node_name: str = 'bag_recorder', typestore: Typestore | None = None) -> None:
        """Create the bag (it must not exist) and start looking for the topics.

        Args:
            path: the bag folder to create.
            topics: fully qualified topic names to record.
            types: topic -> 'pkg/msg/Name' for topics not (yet) on the graph.
            context: rclpy context (default context if None).
            qos: subscription QoS for every topic; default: adapted to the publishers
                (depth RECORDER_QOS_DEPTH).
            max_count: stop writing after this many messages in total (all topics).
            typestore: rosbags typestore for the message definitions written into the
                bag; default :func:`typestore_with_our_msgs`.

        Raises:
            BagError: the bag exists, no topics, or a type unknown to the typestore.
        """
        if not topics:
            raise BagError('no topics to record')
        _check_new_bag_path(Path(path))
        store = typestore if typestore is not None else typestore_with_our_msgs()
        for topic, msgtype in (types or {}).items():
            if msgtype not in store.types:
                raise BagError(f'type {msgtype!r} of {topic} is unknown to the rosbags typestore; '
                               'pass a typestore that has it')
        super().__init__(node_name, context=context)
        self.path = Path(path)
        self._store = store
        self._types = dict(types or {})
        self._qos = qos
        self.max_count = max_count
        self.counts: dict[str, int] = {t: 0 for t in topics}
        self._pending = list(dict.fromkeys(topics))
        self._subs: dict[str, Any] = {}
        self._conns: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.done_future = Future()
        self._writer = open_bag_writer(self.path)
        self._timer = self.create_timer(RECORDER_DISCOVERY_PERIOD_S, self._discover)
        self._discover()

    @property
    def total(self) -> int:
        """Messages written so far, all topics."""
        return sum(self.counts.values())

    def _adapted_qos(self, topic: str) -> QoSProfile | None:
        infos = self.get_publishers_info_by_topic(topic)
        if not infos:
            return None
        reliable = all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)
        transient = all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos)
        return QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=RECORDER_QOS_DEPTH,
            reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
            durability=(DurabilityPolicy.TRANSIENT_LOCAL if transient
                        else DurabilityPolicy.VOLATILE))

    def _discover(self) -> None:
        """Timer: subscribe to pending topics whose type and QoS are known now."""
        if not self._pending:
            self._timer.cancel()
            return
        graph = dict(self.get_topic_names_and_types())
        for topic in list(self._pending):
            msgtype = self._types.get(topic)
            if msgtype is None and graph.get(topic):
                msgtype = graph[topic][0]
                if len(graph[topic]) > 1:
                    self.get_logger().warn(f'{topic} has several types {graph[topic]}; '
                                           f'recording {msgtype}')
            if msgtype is None:
                continue
            profile = self._qos if self._qos is not None else self._adapted_qos(topic)
            if profile is None:
                continue  # no publisher yet: its QoS decides ours
            try:
                if msgtype not in self._store.types:
                    raise BagError(f'type {msgtype!r} is unknown to the rosbags typestore')
                cls = message_class(msgtype)
            except BagError as err:
                self.get_logger().error(f'not recording {topic}: {err}')
                self._pending.remove(topic)
                continue
            with self._lock:
                if self._closed:
                    return
                self._conns[topic] = self._writer.add_connection(
                    topic, msgtype, typestore=self._store,
                    offered_qos_profiles=[_to_rosbags_qos(profile)])
            self._subs[topic] = self.create_subscription(
                cls, topic, lambda raw, t=topic: self._on_message(t, raw), profile, raw=True)
            self._pending.remove(topic)
            self.get_logger().info(f'recording {topic} ({msgtype})')

    def _on_message(self, topic: str, raw: bytes) -> None:
        stamp = self.get_clock().now().nanoseconds
        with self._lock:
            if self._closed or (self.max_count is not None and self.total >= self.max_count):
                return
            self._writer.write(self._conns[topic], stamp, raw)
            self.counts[topic] += 1
            if self.max_count is not None and self.total >= self.max_count \
                    and not self.done_future.done():
                self.done_future.set_result(self.total)

    def stop(self) -> Path:
        """Stop recording and close the bag (idempotent); returns the bag path."""
        with self._lock:
            if self._closed:
                return self.path
            self._closed = True
            self._timer.cancel()
            self._writer.close()
        if not self.done_future.done():
            self.done_future.set_result(self.total)
        return self.path

    def destroy_node(self) -> None:
        self.stop()
        super().destroy_node()


# --- command line ----------------------------------------------------------------------------

def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f'must be a positive number, got {text!r}')
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be >= 1, got {text!r}')
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``make-bag``, ``replay`` and ``record`` sub-commands."""
    p = subparsers.add_parser('make-bag', help='write images or a video into a rosbag2 (MCAP) '
                              'of sensor_msgs/Image', description=cmd_make_bag.__doc__)
    p.add_argument('inputs', nargs='+', metavar='INPUT', help='image files, folders, video files')
    p.add_argument('--output', '-o', required=True, metavar='BAG', help='bag folder to create')
    p.add_argument('--rate', type=_positive_float, default=None, metavar='HZ',
                   help='frames per second of the stamps (default: the video fps, else '
                   f'{DEFAULT_RATE_HZ:g})')
    p.add_argument('--topic', default=DEFAULT_TOPIC)
    p.add_argument('--frame-id', default=DEFAULT_FRAME_ID)
    p.add_argument('--encoding', choices=('rgb8', 'bgr8'), default='rgb8')
    p.add_argument('--repeat', type=_positive_int, default=1, metavar='N',
                   help='write the inputs N times')
    p.add_argument('--resize', type=parse_size, default=None, metavar='WxH')
    p.add_argument('--start-time', type=float, default=None, metavar='SEC',
                   help='stamp of the first frame in seconds since the epoch (default: now)')
    p.set_defaults(func=cmd_make_bag)

    p = subparsers.add_parser('replay', help="publish a bag's messages with their original timing",
                              description=cmd_replay.__doc__)
    p.add_argument('bag', metavar='BAG', help='bag folder (rosbag2, MCAP or sqlite3)')
    p.add_argument('--rate-scale', type=_positive_float, default=1.0, metavar='F',
                   help='speed factor (2 = twice as fast)')
    p.add_argument('--fast', action='store_true', help='publish as fast as possible')
    p.add_argument('--loop', action='store_true', help='start again at the end (Ctrl-C stops)')
    p.add_argument('--remap', nargs='+', default=[], metavar='FROM:=TO')
    p.add_argument('--topics', nargs='+', default=None, metavar='TOPIC', help='default: all')
    p.add_argument('--sensor-qos', action='store_true',
                   help='best-effort publishers (default: reliable)')
    p.add_argument('--qos-depth', type=_positive_int, default=PLAYER_QOS_DEPTH, metavar='N')
    p.add_argument('--wait-subscribers', type=int, default=0, metavar='N',
                   help='wait until each topic has N subscribers before publishing')
    p.add_argument('--wait-timeout', type=_positive_float, default=10.0, metavar='SEC')
    p.set_defaults(func=cmd_replay)

    p = subparsers.add_parser('record', help='record topics into a rosbag2 (MCAP)',
                              description=cmd_record.__doc__)
    p.add_argument('bag', metavar='BAG', help='bag folder to create')
    p.add_argument('--topics', nargs='+', required=True, metavar='TOPIC')
    p.add_argument('--types', nargs='+', default=None, metavar='TYPE',
                   help='pkg/msg/Name for each of --topics, in the same order '
                   '(default: from the graph)')
    p.add_argument('--duration', type=_positive_float, default=None, metavar='SEC',
                   help='stop after this many seconds')
    p.add_argument('--count', type=_positive_int, default=None, metavar='N',
                   help='stop after N messages (all topics together)')
    p.add_argument('--sensor-qos', action='store_true',
                   help='best-effort subscriptions (default: adapt to the publishers)')
    p.set_defaults(func=cmd_record)


def _report_errors(func: Callable[[argparse.Namespace], int]
                   ) -> Callable[[argparse.Namespace], int]:
    """Turn the errors a user can fix (bad inputs, paths, topics) into one log line and exit 1."""
    from emotion_perception.ros.image_conversion import ImageConversionError

    @functools.wraps(func)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (BagError, ImageConversionError) as err:
            LOG.error('%s', err)
            return 1
    return wrapper


@_report_errors
def cmd_make_bag(args: argparse.Namespace) -> int:
    """Write image files, folders of images or videos into a bag of sensor_msgs/Image."""
    start_ns = None if args.start_time is None else round(args.start_time * 1e9)
    t0 = time.perf_counter()
    result = make_bag(args.inputs, args.output, topic=args.topic, rate_hz=args.rate,
                      frame_id=args.frame_id, encoding=args.encoding, repeat=args.repeat,
                      resize=args.resize, start_ns=start_ns, progress=sys.stderr.isatty())
    dt = time.perf_counter() - t0
    LOG.info('wrote %d frames to %s (%s) in %.2f s (%.0f frames/s)', result.frames, result.path,
             args.topic, dt, result.frames / dt if dt > 0 else float('inf'))
    return 0


def _spin_ros(body: Callable[[Any], int]) -> int:
    """rclpy.init(); body(executor); shutdown; Ctrl-C / external shutdown return 130."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    rclpy.init()
    try:
        executor = SingleThreadedExecutor()
        try:
            return body(executor)
        finally:
            executor.shutdown()
    except (KeyboardInterrupt, ExternalShutdownException):
        return 130
    finally:
        rclpy.try_shutdown()


@_report_errors
def cmd_replay(args: argparse.Namespace) -> int:
    """Publish a bag's messages (raw CDR) with their original timing, or as fast as possible."""
    def body(executor: Any) -> int:
        player = BagPlayer(args.bag, topics=args.topics, remap=parse_remap(args.remap),
                           rate_scale=args.rate_scale, fast=args.fast, loop=args.loop,
                           qos=player_qos(args.qos_depth, args.sensor_qos),
                           wait_subscribers=args.wait_subscribers,
                           wait_timeout_s=args.wait_timeout)
        try:
            t0 = time.perf_counter()
            count = player.run()
            dt = time.perf_counter() - t0
            LOG.info('published %d messages in %.2f s: %s', count, dt, player.published)
            return 0
        finally:
            player.close()
    return _spin_ros(body)


@_report_errors
def cmd_record(args: argparse.Namespace) -> int:
    """Record topics (raw CDR, types from the graph or --types) into a new MCAP bag."""
    from rclpy.qos import qos_profile_sensor_data

    types = None
    if args.types is not None:
        if len(args.types) != len(args.topics):
            raise BagError(f'--types has {len(args.types)} entries for {len(args.topics)} topics')
        types = dict(zip(args.topics, args.types))

    def body(executor: Any) -> int:
        recorder = BagRecorder(args.bag, args.topics, types=types, max_count=args.count,
                                qos=qos_profile_sensor_data if args.sensor_qos else None)
        executor.add_node(recorder)
        try:
            executor.spin_until_future_complete(recorder.done_future, timeout_sec=args.duration)
        finally:
            recorder.stop()
            LOG.info('recorded %d messages into %s: %s', recorder.total, recorder.path,
                     recorder.counts)
            executor.remove_node(recorder)
            recorder.destroy_node()
        return 0
    return _spin_ros(body)
