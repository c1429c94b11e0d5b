"""Round trips and error cases of emotion_perception.ros.image_conversion (no DDS traffic)."""
from __future__ import annotations

import os
import random
import struct
from types import SimpleNamespace

os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_DOMAIN_ID', str(random.randint(10, 200)))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from emotion_perception.ros.image_conversion import (  # noqa: E402
    CAMERA_ENCODINGS, ENCODINGS, ImageConversionError, compressed_image_size, compressed_to_rgb,
    encoding_info, image_msg_to_numpy, image_msg_to_rgb, numpy_to_image_msg, rgb_to_compressed)

ALL_ENCODINGS = sorted(ENCODINGS)


def random_image(rng: np.random.Generator, encoding: str, height: int, width: int) -> np.ndarray:
    """A random array with the shape and dtype of ``encoding``."""
    info = encoding_info(encoding)
    shape = (height, width) if info.channels == 1 else (height, width, info.channels)
    high = np.iinfo(info.dtype).max
    return rng.integers(0, high, size=shape, endpoint=True, dtype=info.dtype)


def duck_message(msg, data) -> SimpleNamespace:
    """The same image with ``data`` replaced (e.g. by bytes or a numpy array, as rosbags gives)."""
    return SimpleNamespace(height=msg.height, width=msg.width, encoding=msg.encoding,
                           is_bigendian=msg.is_bigendian, step=msg.step, data=data)


def expected_rgb(arr: np.ndarray, encoding: str) -> np.ndarray:
    """Reference RGB conversion written with OpenCV, independent of the module under test."""
    if encoding in ('mono16', '16UC1'):
        arr = (arr // 256).astype(np.uint8)
    conversions = {
        'rgb8': None, 'bgr8': cv2.COLOR_BGR2RGB, '8UC3': cv2.COLOR_BGR2RGB,
        'rgba8': cv2.COLOR_RGBA2RGB, 'bgra8': cv2.COLOR_BGRA2RGB, '8UC4': cv2.COLOR_BGRA2RGB,
        'mono8': cv2.COLOR_GRAY2RGB, '8UC1': cv2.COLOR_GRAY2RGB,
        'mono16': cv2.COLOR_GRAY2RGB, '16UC1': cv2.COLOR_GRAY2RGB,
    }
    code = conversions[encoding]
    return arr.copy() if code is None else cv2.cvtColor(np.ascontiguousarray(arr), code)


@pytest.mark.parametrize('encoding', ALL_ENCODINGS)
@settings(max_examples=25, deadline=None)
@given(height=st.integers(1, 17), width=st.integers(1, 23), pad=st.integers(0, 9),
       bigendian=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_round_trip_every_encoding(encoding, height, width, pad, bigendian, seed):
    rng = np.random.default_rng(seed)
    arr = random_image(rng, encoding, height, width)
    info = encoding_info(encoding)
    row_bytes = width * info.channels * info.dtype.itemsize
    msg = numpy_to_image_msg(arr, encoding, step=row_bytes + pad, is_bigendian=bigendian)

    assert (msg.height, msg.width, msg.step) == (height, width, row_bytes + pad)
    assert len(msg.data) == msg.step * height
    assert msg.is_bigendian == (bigendian and info.dtype.itemsize > 1)
    # rclpy array.array, bytes (DDS raw), numpy (rosbags): same pixels
    for variant in (msg, duck_message(msg, bytes(msg.data)),
                    duck_message(msg, np.frombuffer(msg.data, np.uint8).copy())):
        out = image_msg_to_numpy(variant)
        assert out.dtype == info.dtype and out.dtype.isnative
        np.testing.assert_array_equal(out, arr)
        if encoding in CAMERA_ENCODINGS:
            continue  # YUV/Bayer to RGB: against their own reference, test_camera_encodings.py
        rgb = image_msg_to_rgb(variant)
        assert rgb.shape == (height, width, 3) and rgb.dtype == np.uint8
        assert rgb.flags.c_contiguous
        np.testing.assert_array_equal(rgb, expected_rgb(arr, encoding))


@settings(max_examples=30, deadline=None)
@given(height=st.integers(1, 9), width=st.integers(1, 9), pad=st.integers(0, 5),
       seed=st.integers(0, 2**32 - 1))
def test_mono16_byte_order_on_the_wire(height, width, pad, seed):
    """The bytes of mono16 follow is_bigendian, and a hand-built big-endian message decodes."""
    arr = np.random.default_rng(seed).integers(0, 65535, (height, width), np.uint16, True)
    for big, fmt in ((False, '<u2'), (True, '>u2')):
        msg = numpy_to_image_msg(arr, 'mono16', step=2 * width + pad, is_bigendian=big)
        raw = np.frombuffer(msg.data, np.uint8).reshape(height, 2 * width + pad)
        np.testing.assert_array_equal(raw[:, :2 * width].copy().view(fmt), arr)
        assert not raw[:, 2 * width:].any()  # padding is zeros
    hand = SimpleNamespace(height=height, width=width, encoding='mono16', is_bigendian=1,
                           step=2 * width, data=arr.astype('>u2').tobytes())
    np.testing.assert_array_equal(image_msg_to_numpy(hand), arr)


def test_unpadded_rgb8_is_a_view_without_copy():
    arr = np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)
    msg = numpy_to_image_msg(arr, 'rgb8')
    backing = np.frombuffer(msg.data, np.uint8)
    assert np.shares_memory(image_msg_to_numpy(msg), backing)
    assert np.shares_memory(image_msg_to_rgb(msg), backing)
    padded = numpy_to_image_msg(arr, 'rgb8', step=64 * 3 + 4)
    view = image_msg_to_numpy(padded)
    assert np.shares_memory(view, np.frombuffer(padded.data, np.uint8))
    assert view.strides == (64 * 3 + 4, 3, 1)


def test_header_is_copied():
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header
    header = Header(stamp=Time(sec=12, nanosec=345), frame_id='camera')
    msg = numpy_to_image_msg(np.zeros((2, 3), np.uint8), 'mono8', header=header)
    assert msg.header.frame_id == 'camera' and msg.header.stamp.nanosec == 345


def test_single_channel_accepts_trailing_axis():
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3, 1)
    np.testing.assert_array_equal(image_msg_to_numpy(numpy_to_image_msg(arr, 'mono8')), arr[..., 0])


# --- errors ----------------------------------------------------------------------------------

def make_msg(**overrides) -> SimpleNamespace:
    fields = dict(height=4, width=5, encoding='rgb8', is_bigendian=0, step=15, data=bytes(60))
    fields.update(overrides)
    return SimpleNamespace(**fields)


def test_valid_handmade_message_converts():
    assert image_msg_to_numpy(make_msg()).shape == (4, 5, 3)


def test_unknown_encoding():
    with pytest.raises(ImageConversionError,
                       match=r"unknown or unsupported image encoding 'nv21'"):
        image_msg_to_numpy(make_msg(encoding='nv21'))
    with pytest.raises(ImageConversionError, match='unknown or unsupported image encoding'):
        numpy_to_image_msg(np.zeros((2, 2, 3), np.uint8), '32FC1')


def test_step_smaller_than_row():
    with pytest.raises(ImageConversionError,
                       match=r'step 14 is smaller than one row of .* = 15 bytes'):
        image_msg_to_numpy(make_msg(step=14))
    with pytest.raises(ImageConversionError, match=r'step 9 is smaller than one row of 10 bytes'):
        numpy_to_image_msg(np.zeros((2, 5), np.uint16), 'mono16', step=9)


def test_data_shorter_than_step_times_height():
    with pytest.raises(ImageConversionError, match=r'59 bytes, shorter than step \* height'):
        image_msg_to_numpy(make_msg(data=bytes(59)))
    with pytest.raises(ImageConversionError, match='shorter than step'):
        image_msg_to_numpy(make_msg(step=16, data=bytes(60)))


@pytest.mark.parametrize('height,width', [(0, 5), (4, 0), (0, 0)])
def test_zero_width_or_height(height, width):
    with pytest.raises(ImageConversionError, match='zero width or height'):
        image_msg_to_numpy(make_msg(height=height, width=width, step=3 * width))
    with pytest.raises(ImageConversionError, match='zero width or height'):
        numpy_to_image_msg(np.zeros((height, width, 3), np.uint8), 'rgb8')


def test_absurd_size_refused_before_allocating():
    # 10^10 pixels claimed with no data: must fail on the cap, not on the data or in numpy
    with pytest.raises(ImageConversionError, match=r'exceeds max_pixels=40000000'):
        image_msg_to_numpy(make_msg(height=100_000, width=100_000, step=300_000, data=b''))
    with pytest.raises(ImageConversionError, match='exceeds max_pixels=19'):
        image_msg_to_rgb(make_msg(), max_pixels=19)
    assert image_msg_to_rgb(make_msg(), max_pixels=20).shape == (4, 5, 3)
    assert image_msg_to_numpy(make_msg(), max_pixels=None).shape == (4, 5, 3)


def test_numpy_shape_and_dtype_must_match_encoding():
    with pytest.raises(ImageConversionError,
                       match=r'does not match encoding .rgb8.: expected \(H, W, 3\)'):
        numpy_to_image_msg(np.zeros((2, 2, 4), np.uint8), 'rgb8')
    with pytest.raises(ImageConversionError, match=r'expected \(H, W\)'):
        numpy_to_image_msg(np.zeros((2, 2, 3), np.uint8), 'mono8')
    with pytest.raises(ImageConversionError, match='dtype uint8 does not match encoding .mono16.'):
        numpy_to_image_msg(np.zeros((2, 2), np.uint8), 'mono16')
    with pytest.raises(ImageConversionError, match='dtype float32 does not match'):
        numpy_to_image_msg(np.zeros((2, 2, 3), np.float32), 'rgb8')


# --- compressed ------------------------------------------------------------------------------

@settings(max_examples=15, deadline=None)
@given(height=st.integers(1, 40), width=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_png_round_trip_is_exact(height, width, seed):
    rgb = np.random.default_rng(seed).integers(0, 255, (height, width, 3), np.uint8, True)
    msg = rgb_to_compressed(rgb, 'png')
    assert msg.format == 'rgb8; png compressed bgr8'
    assert compressed_image_size(bytes(msg.data)) == (width, height)
    np.testing.assert_array_equal(compressed_to_rgb(msg), rgb)


def test_jpeg_round_trip_is_close_and_size_read_from_header():
    yy, xx = np.mgrid[0:60, 0:80]
    rgb = np.stack([xx * 3, yy * 4, (xx + yy) * 2], axis=2).astype(np.uint8)
    msg = rgb_to_compressed(rgb, 'jpeg', quality=95)
    assert compressed_image_size(bytes(msg.data)) == (80, 60)
    out = compressed_to_rgb(SimpleNamespace(format='jpeg', data=np.frombuffer(msg.data, np.uint8)))
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).mean() < 3.0


def test_other_formats_decode_and_are_checked_before_decoding():
    rgb = np.random.default_rng(1).integers(0, 255, (6, 7, 3), np.uint8)
    ok, bmp = cv2.imencode('.bmp', rgb[..., ::-1])
    assert ok and compressed_image_size(bmp.tobytes()) == (7, 6)
    assert compressed_image_size(b'not an image' * 4) is None
    bmp_msg = SimpleNamespace(format='bmp', data=bmp.tobytes())
    np.testing.assert_array_equal(compressed_to_rgb(bmp_msg), rgb)
    with pytest.raises(ImageConversionError, match='exceeds max_pixels=41'):
        compressed_to_rgb(bmp_msg, max_pixels=41)


def test_corrupt_compressed_bytes():
    with pytest.raises(ImageConversionError, match='starts like none of the formats'):
        compressed_to_rgb(SimpleNamespace(format='jpeg', data=b'not an image at all' * 10))
    with pytest.raises(ImageConversionError, match='compressed image has no data'):
        compressed_to_rgb(SimpleNamespace(format='jpeg', data=b''))
    with pytest.raises(ImageConversionError, match='corrupt PNG'):
        compressed_to_rgb(SimpleNamespace(format='png', data=b'\x89PNG\r\n\x1a\n\x00\x00'))
    good = bytes(rgb_to_compressed(np.zeros((8, 8, 3), np.uint8), 'png').data)
    with pytest.raises(ImageConversionError, match='OpenCV could not decode it'):
        compressed_to_rgb(SimpleNamespace(format='png', data=good[:40]))
    with pytest.raises(ImageConversionError, match='corrupt JPEG'):
        compressed_to_rgb(SimpleNamespace(format='jpeg', data=b'\xff\xd8\x00\x00garbage'))


def test_absurd_compressed_size_refused_before_decoding():
    png = bytearray(rgb_to_compressed(np.zeros((4, 4, 3), np.uint8), 'png').data)
    png[16:24] = struct.pack('>II', 200_000, 300_000)  # claimed size in IHDR
    with pytest.raises(ImageConversionError, match=r'200000x300000 .* exceeds max_pixels'):
        compressed_to_rgb(SimpleNamespace(format='png', data=bytes(png)))
    jpg = bytes(rgb_to_compressed(np.zeros((16, 16, 3), np.uint8), 'jpeg').data)
    sof = next(i for i in range(2, len(jpg) - 1) if jpg[i] == 0xFF and jpg[i + 1] == 0xC0)
    forged = jpg[:sof + 5] + struct.pack('>HH', 60_000, 60_000) + jpg[sof + 9:]
    assert compressed_image_size(forged) == (60_000, 60_000)
    with pytest.raises(ImageConversionError, match='60000x60000 .* exceeds max_pixels=1000'):
        compressed_to_rgb(SimpleNamespace(format='jpeg', data=forged), max_pixels=1000)


def test_rgb_to_compressed_errors():
    with pytest.raises(ImageConversionError, match=r'expected an \(H, W, 3\) uint8 RGB array'):
        rgb_to_compressed(np.zeros((4, 4), np.uint8))
    with pytest.raises(ImageConversionError, match="unknown compressed format 'webm'"):
        rgb_to_compressed(np.zeros((4, 4, 3), np.uint8), 'webm')
