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


def test_a_corrupt_frame_in_a_video_is_counted_and_skipped(tmp_path, astronaut_bgr, unloads):
    path = tmp_path / 'clip.avi'
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), 10.0,
                             (astronaut_bgr.shape[1], astronaut_bgr.shape[0]))
    for _ in range(6):
        writer.write(astronaut_bgr)
    writer.release()
    data = bytearray(path.read_bytes())
    sois = [i for i in range(len(data) - 2) if data[i:i + 3] == b'\xff\xd8\xff']
    assert len(sois) == 6
    noise = np.random.default_rng(0).integers(0, 256, 2000, np.uint8).tobytes()
    data[sois[2]:sois[2] + 2000] = noise
    path.write_bytes(bytes(data))  # the third frame's JPEG header is garbage
    summary = run_process(path, tmp_path / 'out', overrides=FAKE, save_images=False,
                          progress=False)
    assert summary['frames'] == 6 and summary['bad_frames'] == 1, summary
    assert summary['bad_frame_examples'][0]['frame'] == 2
    rows = read_jsonl(tmp_path / 'out' / 'emotions.jsonl')
    assert {r['frame'] for r in rows} == {0, 1, 3, 4, 5}
    assert len(unloads[0]) == 1 and unloads[1] == [True]


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
