"""``emotion-perception process`` over damaged input (issue 18, item 5): corrupt frames of bags
and videos are counted and skipped like bad image files, and the models are unloaded on every
exit path (an exception, a failed load, Ctrl-C)."""
import json

import cv2
import numpy as np
import pytest

from emotion_perception.core.detector import PersonDetector
from emotion_perception.core.model_files import sample_image_paths
from emotion_perception.testing import fake_backends as fb
from emotion_perception.testing import image_bombs
from emotion_perception.tools import bags
from emotion_perception.tools.process import run_process

FAKE = {'backend.name': fb.spec(fb.FakeBackend)}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope='module')
def astronaut_bgr():
    return cv2.imread(str(sample_image_paths()['astronaut']))


@pytest.fixture
def unloads(monkeypatch):
    """Every model unload of the run: ('backend', in_call) and ('detector',)."""
    fb.FakeBackend.unloads.clear()
    fb.FakeBackend.loaded_now.clear()
    detector_unloads = []
    real = PersonDetector.unload

    def unload(self):
        detector_unloads.append(self.model is not None)
        return real(self)
    monkeypatch.setattr(PersonDetector, 'unload', unload)
    return fb.FakeBackend.unloads, detector_unloads


def corrupt_video(path, bgr, n: int, bad) -> None:
    """An MJPG .avi of ``n`` frames of ``bgr`` whose frames at the indices ``bad`` have a
    garbage JPEG header (OpenCV's read fails on each of them and goes on)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), 10.0,
                             (bgr.shape[1], bgr.shape[0]))
    for _ in range(n):
        writer.write(bgr)
    writer.release()
    data = bytearray(path.read_bytes())
    sois = [i for i in range(len(data) - 2) if data[i:i + 3] == b'\xff\xd8\xff']
    assert len(sois) == n
    rng = np.random.default_rng(0)
    for i in bad:
        data[sois[i]:sois[i] + 2000] = rng.integers(0, 256, 2000, np.uint8).tobytes()
    path.write_bytes(bytes(data))


def test_a_corrupt_frame_in_a_video_is_counted_and_skipped(tmp_path, astronaut_bgr, unloads):
    path = tmp_path / 'clip.avi'
    corrupt_video(path, astronaut_bgr, 6, [2])  # the third frame's JPEG header is garbage
    summary = run_process(path, tmp_path / 'out', overrides=FAKE, save_images=False,
                          progress=False)
    assert summary['frames'] == 6 and summary['bad_frames'] == 1, summary
    assert summary['bad_frame_examples'][0]['frame'] == 2
    rows = read_jsonl(tmp_path / 'out' / 'emotions.jsonl')
    assert {r['frame'] for r in rows} == {0, 1, 3, 4, 5}
    assert len(unloads[0]) == 1 and unloads[1] == [True]
    assert summary['unread_frames'] == 0 and summary['stopped_early'] is None


def test_corrupt_frames_at_the_end_of_a_video_are_counted(tmp_path, astronaut_bgr):
    """Failed reads at the end: within the container's frame count they are bad frames (the
    rest of the reads is the end of the file)."""
    path = tmp_path / 'tail.avi'
    corrupt_video(path, astronaut_bgr, 8, [6, 7])
    summary = run_process(path, tmp_path / 'out', overrides=FAKE, save_images=False,
                          progress=False)
    assert summary['frames'] == 8 and summary['bad_frames'] == 2, summary
    assert [e['frame'] for e in summary['bad_frame_examples']] == [6, 7]
    assert all('at the end' in e['reason'] for e in summary['bad_frame_examples'])
    assert summary['unread_frames'] == 0 and summary['stopped_early'] is None
    rows = read_jsonl(tmp_path / 'out' / 'emotions.jsonl')
    assert {r['frame'] for r in rows} == set(range(6))


def test_a_video_abandoned_after_a_run_of_bad_frames_says_so(tmp_path, astronaut_bgr):
    """More bad frames in a row than bags.MAX_CONSECUTIVE_BAD_READS: reading stops; those
    frames are counted bad and the frames announced after them reported unread."""
    run = bags.MAX_CONSECUTIVE_BAD_READS + 4
    path = tmp_path / 'run.avi'
    corrupt_video(path, astronaut_bgr, 30, range(3, 3 + run))
    summary = run_process(path, tmp_path / 'out', overrides=FAKE, save_images=False,
                          progress=False)
    limit = bags.MAX_CONSECUTIVE_BAD_READS
    assert summary['bad_frames'] == limit, summary
    assert summary['frames'] == 3 + limit
    assert summary['unread_frames'] == 30 - 3 - limit
    assert f'{limit} failed reads in a row' in summary['stopped_early']
    assert 'run.avi' in summary['stopped_early'] and '30 frames' in summary['stopped_early']
    saved = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    assert saved['unread_frames'] == summary['unread_frames']
    rows = read_jsonl(tmp_path / 'out' / 'emotions.jsonl')
    assert {r['frame'] for r in rows} == {0, 1, 2}


def _write_compressed_bag(path, payloads):
    """A bag of sensor_msgs/CompressedImage; a payload of type bytes is the message's data,
    one of type tuple ('raw', bytes) is written as the serialized message itself."""
    store = bags.typestore_with_our_msgs()
    msg_t = store.types[bags.COMPRESSED_MSGTYPE]
    header_t = store.types['std_msgs/msg/Header']
    time_t = store.types['builtin_interfaces/msg/Time']
    writer = bags.open_bag_writer(path)
    conn = writer.add_connection('/camera/image_raw/compressed', bags.COMPRESSED_MSGTYPE,
                                 typestore=store)
    for i, payload in enumerate(payloads):
        stamp = 1_000_000_000 + i * 100_000_000
        if isinstance(payload, tuple):
            raw = payload[1]
        else:
            msg = msg_t(header=header_t(stamp=time_t(sec=stamp // 10**9, nanosec=stamp % 10**9),
                                        frame_id='camera'),
                        format='jpeg', data=np.frombuffer(payload, np.uint8))
            raw = store.serialize_cdr(msg, bags.COMPRESSED_MSGTYPE)
        writer.write(conn, stamp, raw)
    writer.close()


def test_corrupt_messages_of_a_bag_are_counted_and_skipped(tmp_path, astronaut_bgr, unloads):
    good = cv2.imencode('.jpg', astronaut_bgr)[1].tobytes()
    payloads = [good, b'garbage, not an image' * 5, ('raw', b'\x00\x01\x00\x00\x07'), good,
                image_bombs.png(30000, 30000), good]
    _write_compressed_bag(tmp_path / 'bag', payloads)
    summary = run_process(tmp_path / 'bag', tmp_path / 'out', overrides=FAKE, save_images=False,
                          progress=False)
    assert summary['frames'] == 6 and summary['bad_frames'] == 3, summary
    reasons = {e['frame']: e['reason'] for e in summary['bad_frame_examples']}
    assert set(reasons) == {1, 2, 4}
    assert 'ImageConversionError' in reasons[1] and 'too_large' not in reasons[1]
    assert 'exceeds max_pixels' in reasons[4]
    rows = read_jsonl(tmp_path / 'out' / 'emotions.jsonl')
    assert {r['frame'] for r in rows} == {0, 3, 5}
    assert len(unloads[0]) == 1 and unloads[1] == [True]
    # the reader itself, without process: raises by default, as before
    with pytest.raises(Exception):
        list(bags.iter_bag_images(tmp_path / 'bag'))


def test_an_image_bomb_in_a_folder_is_skipped_without_decoding(tmp_path, astronaut_bgr):
    src = tmp_path / 'images'
    src.mkdir()
    cv2.imwrite(str(src / 'a.jpg'), astronaut_bgr)
    (src / 'bomb.bmp').write_bytes(image_bombs.bmp(40000, 40000))
    summary = run_process(src, tmp_path / 'out', overrides=FAKE, save_images=False,
                          progress=False)
    assert summary['frames'] == 2 and summary['bad_frames'] == 1
    assert 'exceeds max_pixels' in summary['bad_frame_examples'][0]['reason']


class _Interrupt(BaseException):
    pass


@pytest.mark.parametrize('failure', ['detector raises', 'ctrl-c', 'backend load fails'])
def test_models_are_unloaded_on_every_exit_path(tmp_path, astronaut_bgr, unloads, monkeypatch,
                                                failure):
    src = tmp_path / 'images'
    src.mkdir()
    for i in range(3):
        cv2.imwrite(str(src / f'{i}.jpg'), astronaut_bgr)
    calls = []
    real_detect = PersonDetector.detect

    def detect(self, rgb):
        calls.append(1)
        if len(calls) == 2:
            if failure == 'ctrl-c':
                raise _Interrupt()
            raise RuntimeError('detector failed on frame 2')
        return real_detect(self, rgb)
    monkeypatch.setattr(PersonDetector, 'detect', detect)
    overrides = dict(FAKE)
    if failure == 'backend load fails':
        overrides['backend.model'] = 'load_error=missing'
    with pytest.raises((RuntimeError, _Interrupt, Exception)) as err:
        run_process(src, tmp_path / 'out', overrides=overrides, save_images=False,
                    progress=False)
    backend_unloads, detector_unloads = unloads
    assert detector_unloads == [True], failure  # the loaded detector, unloaded once
    if failure == 'backend load fails':
        assert 'does not exist' in str(err.value) and backend_unloads == []
    else:
        assert backend_unloads == [{'backend': backend_unloads[0]['backend'], 'in_call': 0}]
        assert fb.FakeBackend.loaded_now == set()


def test_one_pixel_cap_for_process_bags_and_the_nodes(tmp_path, astronaut_bgr):
    """An image a little over the nodes' max_image_pixels default (8001 x 5000 = 40.005 Mpx)
    is refused on its header alike by process (image files, bag messages) and the nodes'
    decoder: one cap, not 40 M in the nodes and 64 M offline."""
    from emotion_perception.nodes.emotion_node import EmotionNode
    from emotion_perception.nodes.person_detector import PersonDetectorNode
    from emotion_perception.ros import image_conversion
    from emotion_perception.ros.image_conversion import ImageConversionError
    from emotion_perception.ros.node_utils import decode_image
    from emotion_perception.tools.process import read_rgb
    cap = image_conversion.DEFAULT_MAX_PIXELS
    defaults = {node.__name__: {p.name: p.default for p in node.PARAMS}['max_image_pixels']
                for node in (EmotionNode, PersonDetectorNode)}
    assert set(defaults.values()) == {cap}, defaults
    bomb = image_bombs.png(8001, 5000)
    assert 8001 * 5000 > cap
    (tmp_path / 'big.png').write_bytes(bomb)
    with pytest.raises(ValueError, match=f'exceeds max_pixels={cap}'):
        read_rgb(tmp_path / 'big.png')
    from sensor_msgs.msg import CompressedImage
    with pytest.raises(ImageConversionError, match=f'exceeds max_pixels={cap}'):
        decode_image(CompressedImage(format='png', data=bomb))
    good = cv2.imencode('.jpg', astronaut_bgr)[1].tobytes()
    _write_compressed_bag(tmp_path / 'bag', [good, bomb])
    summary = run_process(tmp_path / 'bag', tmp_path / 'out', overrides=FAKE, save_images=False,
                          progress=False)
    assert summary['bad_frames'] == 1, summary
    assert f'exceeds max_pixels={cap}' in summary['bad_frame_examples'][0]['reason']
