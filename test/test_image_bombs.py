"""Image bombs (issue 18, item 2): tiny compressed files whose headers declare huge sizes.

The size of every compressed format OpenCV decodes is read from its header before decoding
(``compressed_image_info``), so ``max_image_pixels`` holds for all of them, and sizes OpenCV
itself refuses are ``bad image`` too. The node is run as a process under an address-space
limit a little above its working size: every bomb is answered ``bad image (too_large)``
refused on the header, nothing fails to allocate, and the node keeps answering.
"""
import array
import io
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from emotion_perception.ros.image_conversion import (COMPRESSED_FORMATS, ImageConversionError,
                                                     compressed_image_info, compressed_to_rgb)
from emotion_perception.testing import image_bombs

SIDE = 30000  # 900 Mpx: 2.7 GB of BGR pixels, under OpenCV's own 2^30 pixel limit
FORMAT_OF = {'jp2': 'jpeg2000'}


@pytest.mark.parametrize('name', sorted(image_bombs.BUILDERS))
def test_every_bomb_declares_its_size_in_a_few_bytes_and_is_refused_on_the_header(name):
    data = image_bombs.BUILDERS[name](SIDE, SIDE + 1)
    assert len(data) <= 256
    assert compressed_image_info(data) == (FORMAT_OF.get(name, name), SIDE, SIDE + 1)
    with pytest.raises(ImageConversionError, match='exceeds max_pixels') as err:
        compressed_to_rgb(SimpleNamespace(data=data, format=name))
    assert err.value.kind == 'too_large'


def _bomb_allocates(data, limit_bytes):
    """Reference: OpenCV itself, in a child process under the address-space limit."""
    code = ('import sys, resource, numpy as np, cv2\n'
            f'resource.setrlimit(resource.RLIMIT_AS, ({limit_bytes}, {limit_bytes}))\n'
            'data = sys.stdin.buffer.read()\n'
            'try:\n'
            '    cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)\n'
            'except cv2.error as e:\n'
            '    print("Insufficient memory" in str(e))\n')
    out = subprocess.run([sys.executable, '-c', code], input=data, capture_output=True,
                         timeout=60)
    return out.stdout.strip() == b'True'


def _encodings():
    """Small real images of each format, encoded by OpenCV or Pillow (independent of the
    header readers), as (name, bytes)."""
    rgb = np.random.default_rng(0).integers(0, 255, (30, 41, 3), np.uint8)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    out = []
    for ext in ('.png', '.jpg', '.webp', '.avif', '.tiff', '.bmp', '.ppm', '.pam', '.ras',
                '.gif'):
        ok, enc = cv2.imencode(ext, bgr)
        assert ok, ext
        out.append((ext, enc.tobytes()))
    for ext in ('.pgm', '.pbm'):
        ok, enc = cv2.imencode(ext, bgr[..., 0])
        out.append((ext, enc.tobytes()))
    for ext in ('.pfm', '.hdr'):
        ok, enc = cv2.imencode(ext, bgr.astype(np.float32) / 255)
        out.append((ext, enc.tobytes()))
    for fmt, kwargs in (('JPEG2000', {}), ('JPEG2000', {'no_jp2': True}),
                        ('WEBP', {'lossless': True}), ('TIFF', {'compression': 'tiff_lzw'})):
        bio = io.BytesIO()
        Image.fromarray(rgb).save(bio, fmt, **kwargs)
        out.append((f'pil {fmt} {kwargs}', bio.getvalue()))
    return out


@pytest.mark.parametrize('name,data', _encodings(), ids=[n for n, _ in _encodings()])
def test_real_images_of_every_format_header_size_is_the_decoded_size(name, data):
    fmt, width, height = compressed_image_info(data)
    assert fmt in COMPRESSED_FORMATS
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # the reference
    assert (width, height) == (decoded.shape[1], decoded.shape[0]) == (41, 30)
    assert compressed_to_rgb(SimpleNamespace(data=data, format=name)).shape == (30, 41, 3)
    with pytest.raises(ImageConversionError, match='41x30 = 1230 pixels exceeds'):
        compressed_to_rgb(SimpleNamespace(data=data, format=name), max_pixels=1229)


def test_sizes_opencv_refuses_are_bad_images_too(monkeypatch):
    big = image_bombs.bmp(40000, 40000)  # 1.6 Gpx: above OpenCV's 2^30
    with pytest.raises(ImageConversionError, match='exceeds what OpenCV decodes') as err:
        compressed_to_rgb(SimpleNamespace(data=big, format='bmp'), max_pixels=2**31 - 1)
    assert err.value.kind == 'too_large'
    wide = image_bombs.pnm(1 << 21, 1)  # one row wider than OpenCV's 2^20 per side
    with pytest.raises(ImageConversionError, match='exceeds what OpenCV decodes'):
        compressed_to_rgb(SimpleNamespace(data=wide, format='pnm'), max_pixels=2**31 - 1)

    def refusing(buf, flags):
        raise cv2.error('OpenCV(4.14.0) loadsave.cpp:79: error: (-215:Assertion failed) '
                        'pixels <= CV_IO_MAX_IMAGE_PIXELS in function validateInputImageSize')
    monkeypatch.setattr(cv2, 'imdecode', refusing)
    small = image_bombs.bmp(4, 4)
    with pytest.raises(ImageConversionError, match='OpenCV refused the bmp image') as err:
        compressed_to_rgb(SimpleNamespace(data=small, format='bmp'))
    assert err.value.kind == 'too_large'


def test_openexr_and_unknown_bytes_are_refused_with_the_reason():
    with pytest.raises(ImageConversionError, match='OpenEXR images are refused') as err:
        compressed_to_rgb(SimpleNamespace(data=b'\x76\x2f\x31\x01' + bytes(60), format='exr'))
    assert err.value.kind == 'unsupported_format'
    with pytest.raises(ImageConversionError, match='starts like none of the formats') as err:
        compressed_to_rgb(SimpleNamespace(data=b'not an image' * 10, format='jpeg'))
    assert err.value.kind == 'corrupt'


def test_pillow_readers_do_not_allocate_the_declared_pixels():
    """The header readers taken from Pillow, and every reader here, in a child process under
    an address-space limit 300 MB above its start: 13000 x 13000 (under Pillow's own bomb
    limit; 507 MB of RGB) is read without allocating it."""
    code = ('import resource\n'
            'from emotion_perception.ros.image_conversion import compressed_image_info\n'
            'from emotion_perception.testing import image_bombs\n'
            'vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024\n'
            'resource.setrlimit(resource.RLIMIT_AS, (vm + 300 << 20, vm + 300 << 20))\n'
            'for name, build in sorted(image_bombs.BUILDERS.items()):\n'
            '    print(name, compressed_image_info(build(13000, 13000)))\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert len(lines) == len(image_bombs.BUILDERS)
    assert all(line.endswith(', 13000, 13000)') for line in lines), lines


SIGNATURES = [b'RIFF\x00\x00\x00\x00WEBPVP8X', b'RIFF\x00\x00\x00\x00WEBPVP8L',
              b'RIFF\x00\x00\x00\x00WEBPVP8 ', b'II*\x00', b'MM\x00*', b'BM', b'GIF89a',
              b'P6', b'P7\n', b'PF\n', b'\x59\xa6\x6a\x95', b'\xff\x4f\xff\x51',
              b'\x00\x00\x00\x0cjP  \r\n\x87\n', b'#?RADIANCE\n',
              b'\x00\x00\x00\x1cftypavif']


@given(st.sampled_from(SIGNATURES), st.binary(max_size=300))
@settings(max_examples=400, deadline=None)
def test_any_bytes_after_a_signature_are_an_image_or_a_specific_error(prefix, data):
    """The header readers never fail otherwise (no struct.error, IndexError, ...)."""
    try:
        rgb = compressed_to_rgb(SimpleNamespace(data=prefix + data, format=''),
                                max_pixels=10_000)
    except ImageConversionError as exc:
        assert exc.kind in ('corrupt', 'too_large', 'zero_size', 'unsupported_format'), exc
        return
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.shape[0] * rgb.shape[1] <= 10_000


# -- the node process under an address-space limit ----------------------------------------------
@pytest.mark.ros
def test_the_node_answers_every_bomb_bad_image_under_an_address_space_limit():
    from sensor_msgs.msg import CompressedImage

    from emotion_perception.msg import PersonDetectionArray, PersonEmotion, PersonEmotionArray
    from emotion_perception.ros.image_conversion import rgb_to_compressed
    from emotion_perception.ros.qos import RESULTS_QOS, image_qos
    from emotion_perception.testing.fake_backends import FakeBackend, spec
    from emotion_perception.testing.node_rig import det_array, header
    from emotion_perception.testing.ros_harness import RosHarness

    ns = f'/bombs_{os.getpid()}'
    cmd = [sys.executable, '-m', 'emotion_perception.nodes.emotion_node', '--ros-args',
           '-r', '__node:=bomb_emotion_node', '-r', f'image:={ns}/image',
           '-r', f'detections:={ns}/detections', '-r', f'emotions:={ns}/emotions',
           '-p', f'backend.name:={spec(FakeBackend)}', '-p', 'image_transport:=compressed',
           '-p', 'image_reliability:=reliable', '-p', 'reuse.enabled:=false',
           '-p', 'autostart:=true']
    proc = subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        with RosHarness('bomb_sender') as harness:
            out: list = []
            harness.node.create_subscription(PersonEmotionArray, f'{ns}/emotions', out.append,
                                             RESULTS_QOS)
            img_pub = harness.publisher(CompressedImage, f'{ns}/image/compressed',
                                        image_qos('reliable', 10))
            det_pub = harness.publisher(PersonDetectionArray, f'{ns}/detections', RESULTS_QOS)
            assert harness.wait_for(lambda: any(line.rstrip().endswith('active')
                                                for line in log), 120), ''.join(log)
            assert harness.wait_matched(img_pub) and harness.wait_matched(det_pub)
            # the limit: its address space now plus 1 GiB (a bomb wants 2.7 GB)
            vm = int(open(f'/proc/{proc.pid}/status').read().split('VmSize:')[1].split()[0])
            limit = (vm << 10) + (1 << 30)
            resource.prlimit(proc.pid, resource.RLIMIT_AS, (limit, limit))
            assert _bomb_allocates(image_bombs.bmp(SIDE, SIDE), limit - (vm << 10) + (200 << 20))
            persons = [('1', (0, 0, 32, 48))]

            def send(stamp, data):
                msg = CompressedImage(header=header(stamp), format='bomb')
                msg.data = array.array('B', data)
                img_pub.publish(msg)
                time.sleep(0.05)
                det_pub.publish(det_array(header(stamp), persons))
                assert harness.wait_for(lambda: any(m.header.stamp.sec == stamp
                                                    for m in list(out)), 30), (stamp, ''.join(log))
                return next(m for m in out if m.header.stamp.sec == stamp).persons[0]

            good = bytes(rgb_to_compressed(np.zeros((48, 64, 3), np.uint8), 'png').data)
            for i, (name, build) in enumerate(sorted(image_bombs.BUILDERS.items())):
                person = send(i + 1, build(SIDE, SIDE))
                assert person.status == PersonEmotion.STATUS_ERROR
                assert person.status_reason.startswith('bad image (too_large)'), (
                    name, person.status_reason)
                assert 'exceeds max_pixels=40000000' in person.status_reason, name
                assert send(100 + i, good).status == PersonEmotion.STATUS_OK, name
            assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        reader.join(5)
        text = ''.join(log)
        for bad in ('Failed to allocate', 'Insufficient memory', 'MemoryError', 'Traceback',
                    'internal error'):
            assert bad not in text, text[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
