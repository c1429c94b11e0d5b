"""Camera encodings robots' drivers publish (issue 10): YUV 4:2:2 (UYVY / YUYV) and Bayer mosaics
(8 and 16 bit, four patterns) to RGB, against an independent numpy reference.

The reference goes the other way: it builds the camera bytes from a known RGB image with the
textbook formulas (BT.601 limited range for YUV; sampling R, G or B at each mosaic position for
Bayer), and the decoded image must give that RGB image back:

* Bayer: the image is made of linear ramps, which bilinear demosaicing (OpenCV's, cv_bridge's)
  reconstructs exactly away from the 2-pixel border, so the tolerance is 0 there. A wrong
  pattern mapping puts R where B is and is off by tens of levels.
* YUV: pixel pairs share their colour (4:2:2 stores one chroma pair for two pixels), so nothing
  is lost to subsampling; what remains is rounding Y, Cb, Cr to integers (<= 0.5 each), which
  the inverse transform amplifies to at most 0.58 + 1.01 = 1.6 levels (B: 1.164 dY + 2.017
  dCb), plus OpenCV's fixed-point rounding: tolerance 2 levels.
"""
import numpy as np
import pytest

from emotion_perception.msg import PersonEmotion
from emotion_perception.ros.image_conversion import (ENCODINGS, ImageConversionError,
                                                     image_msg_to_rgb, numpy_to_image_msg)
from emotion_perception.ros.node_utils import decode_image

H, W = 48, 64
PATTERNS = ('rggb', 'bggr', 'gbrg', 'grbg')


def ramp_rgb() -> np.ndarray:
    """(H, W, 3) float: three different linear ramps inside [0, 255]."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    return np.stack([40 + 3 * x, 30 + 2 * y + x, 220 - 2 * x - y], -1)


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """The Bayer mosaic of ``rgb``: ``pattern`` names the colours of the 2x2 cell, row by row."""
    out = np.zeros(rgb.shape[:2])
    channel = {'r': 0, 'g': 1, 'b': 2}
    for colour, (dy, dx) in zip(pattern, [(0, 0), (0, 1), (1, 0), (1, 1)]):
        out[dy::2, dx::2] = rgb[dy::2, dx::2, channel[colour]]
    return out


def bt601_limited(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB (0-255) -> Y (16-235), Cb, Cr (16-240): ITU-R BT.601, studio range."""
    r, g, b = (rgb[..., i] / 255.0 for i in range(3))
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    cb = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    cr = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    return y, cb, cr


def pair_rgb(seed: int = 0) -> np.ndarray:
    """Random colours, each shared by a horizontal pixel pair."""
    pairs = np.random.default_rng(seed).integers(0, 256, (H, W // 2, 3)).astype(np.float64)
    return np.repeat(pairs, 2, axis=1)


def yuv422(rgb: np.ndarray, order: str) -> np.ndarray:
    """(H, W, 2) uint8 bytes of ``rgb`` in 'uyvy' (U Y0 V Y1) or 'yuyv' (Y0 U Y1 V) order."""
    y, cb, cr = (np.round(c).astype(np.uint8) for c in bt601_limited(rgb))
    out = np.zeros((rgb.shape[0], rgb.shape[1], 2), np.uint8)
    luma, chroma = (1, 0) if order == 'uyvy' else (0, 1)
    out[:, :, luma] = y
    out[:, 0::2, chroma] = cb[:, 0::2]
    out[:, 1::2, chroma] = cr[:, 0::2]
    return out


@pytest.mark.parametrize('pattern', PATTERNS)
def test_bayer8_matches_the_reference(pattern):
    rgb = ramp_rgb()
    raw = np.round(mosaic(rgb, pattern)).astype(np.uint8)
    out = image_msg_to_rgb(numpy_to_image_msg(raw, f'bayer_{pattern}8'))
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    err = np.abs(out.astype(float) - np.round(rgb))[2:-2, 2:-2]
    assert err.max() == 0, (pattern, err.max())
    # the reference is sensitive: decoding with the wrong pattern is far off
    wrong = next(p for p in PATTERNS if p != pattern)
    bad = image_msg_to_rgb(numpy_to_image_msg(raw, f'bayer_{wrong}8')).astype(float)
    assert np.abs(bad - np.round(rgb))[2:-2, 2:-2].max() > 20


@pytest.mark.parametrize('pattern', PATTERNS)
@pytest.mark.parametrize('bigendian', [False, True])
def test_bayer16_matches_the_reference(pattern, bigendian):
    rgb16 = ramp_rgb() * 257  # full 16-bit range
    raw = np.round(mosaic(rgb16, pattern)).astype(np.uint16)
    msg = numpy_to_image_msg(raw, f'bayer_{pattern}16', is_bigendian=bigendian)
    out = image_msg_to_rgb(msg)
    assert out.dtype == np.uint8
    expected = np.floor(np.round(rgb16) / 256)  # the module's >> 8
    assert np.abs(out.astype(float) - expected)[2:-2, 2:-2].max() == 0


@pytest.mark.parametrize('encoding,order', [('yuv422', 'uyvy'), ('uyvy', 'uyvy'),
                                            ('yuv422_yuy2', 'yuyv'), ('yuyv', 'yuyv')])
def test_yuv422_matches_the_reference(encoding, order):
    rgb = pair_rgb()
    out = image_msg_to_rgb(numpy_to_image_msg(yuv422(rgb, order), encoding))
    assert out.shape == (H, W, 3)
    assert np.abs(out.astype(float) - rgb).max() <= 2
    other = 'yuyv' if order == 'uyvy' else 'uyvy'  # byte order swapped: far off
    bad = image_msg_to_rgb(numpy_to_image_msg(yuv422(rgb, other), encoding)).astype(float)
    assert np.abs(bad - rgb).mean() > 20


def test_row_padding_is_skipped_for_camera_encodings():
    rgb = pair_rgb(1)
    msg = numpy_to_image_msg(yuv422(rgb, 'uyvy'), 'yuv422', step=W * 2 + 12)
    assert np.abs(image_msg_to_rgb(msg).astype(float) - rgb).max() <= 2
    raw = np.round(mosaic(ramp_rgb(), 'grbg')).astype(np.uint8)
    msg = numpy_to_image_msg(raw, 'bayer_grbg8', step=W + 7)
    out = image_msg_to_rgb(msg).astype(float)
    assert np.abs(out - np.round(ramp_rgb()))[2:-2, 2:-2].max() == 0


def test_odd_width_yuv_and_short_data_are_refused_with_the_kind():
    msg = numpy_to_image_msg(np.zeros((4, 5, 2), np.uint8), 'yuv422')
    with pytest.raises(ImageConversionError) as err:
        decode_image(msg)
    assert err.value.kind == 'odd_width' and 'even width' in str(err.value)
    msg = numpy_to_image_msg(np.zeros((8, 8), np.uint8), 'bayer_rggb8')
    msg.data = msg.data[:20]
    with pytest.raises(ImageConversionError) as err:
        decode_image(msg)
    assert err.value.kind == 'data_too_short'


def test_all_camera_encodings_are_listed():
    expected = {'yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv'} | {
        f'bayer_{p}{b}' for p in PATTERNS for b in (8, 16)}
    assert expected <= set(ENCODINGS)


@pytest.mark.ros
def test_emotion_node_evaluates_persons_on_a_bayer_and_a_yuv_image():
    """The node decodes the camera formats itself: persons are evaluated (fake backend)."""
    from emotion_perception.testing.node_rig import EmotionRig, det_array, header
    from emotion_perception.testing.ros_harness import RosHarness

    persons = [('1', (0, 0, 32, 48)), ('2', (32, 0, 32, 48))]
    with RosHarness() as harness:
        rig = EmotionRig(harness)
        bayer = numpy_to_image_msg(np.round(mosaic(ramp_rgb(), 'rggb')).astype(np.uint8),
                                   'bayer_rggb8', header=header(1))
        yuv = numpy_to_image_msg(yuv422(pair_rgb(), 'yuyv'), 'yuv422_yuy2', header=header(2))
        for stamp, msg in ((1, bayer), (2, yuv)):
            ans = rig.send(det_array(header(stamp), persons, W, H), msg)
            assert [p.status for p in ans.persons] == [PersonEmotion.STATUS_OK] * 2, \
                [p.status_reason for p in ans.persons]
        assert 'errors.bad_image' not in rig.counts()
