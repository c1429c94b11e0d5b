"""Exact conversions between ``sensor_msgs/Image`` / ``sensor_msgs/CompressedImage`` and numpy.

PyPI's ``cv_bridge`` is broken with numpy 2 and ignores the row ``step``; these functions do the
conversion with numpy only (plus OpenCV for compressed images) and honour ``step`` (row
padding) and ``is_bigendian``.

Supported raw encodings (``sensor_msgs/image_encodings``):

============  ======  ========  ==============================================
encoding      dtype   channels  numpy shape returned by ``image_msg_to_numpy``
============  ======  ========  ==============================================
rgb8, bgr8    uint8   3         (H, W, 3)
rgba8, bgra8  uint8   4         (H, W, 4)
mono8, 8UC1   uint8   1         (H, W)
mono16, 16UC1 uint16  1         (H, W)
8UC3          uint8   3         (H, W, 3), channel order taken as BGR (OpenCV's)
8UC4          uint8   4         (H, W, 4), channel order taken as BGRA
yuv422, uyvy  uint8   2         (H, W, 2): U Y0 V Y1 per pixel pair (UYVY)
yuv422_yuy2,  uint8   2         (H, W, 2): Y0 U Y1 V per pixel pair (YUYV)
yuyv
bayer_rggb8,  uint8   1         (H, W): the raw colour filter mosaic
bayer_bggr8,
bayer_gbrg8,
bayer_grbg8
bayer_*16     uint16  1         (H, W): 16-bit mosaic (same four patterns)
============  ======  ========  ==============================================

``image_msg_to_rgb`` converts the camera formats with OpenCV, as cv_bridge does: YUV 4:2:2 with
BT.601 limited-range coefficients (``COLOR_YUV2RGB_UYVY`` / ``_YUY2``; the width must be
even), Bayer mosaics by bilinear demosaicing (16-bit ones demosaiced at 16 bits, then >> 8).

The input message may be an rclpy message (``data`` is an ``array.array('B')``), a rosbags
message (``data`` is a numpy uint8 array) or anything with the same fields whose ``data``
supports the buffer protocol (``bytes``, ``bytearray``, ``memoryview``).
"""
from __future__ import annotations

import array
import struct
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Default cap on width * height accepted from a message (64 Mpx, e.g. 8192 x 8192). A larger
#: image is refused before anything is allocated for it.
DEFAULT_MAX_PIXELS = 1 << 26

_NATIVE_BIG_ENDIAN = sys.byteorder == 'big'


class ImageConversionError(ValueError):
    """An image message or array that cannot be converted; the message says why.

    ``kind`` names the problem for counters and throttled logs: 'unknown_encoding',
    'zero_size', 'too_large', 'step_too_small', 'data_too_short', 'no_data', 'corrupt',
    'odd_width' (YUV 4:2:2), 'shape_mismatch' or 'encode_failed'.
    """

    def __init__(self, message: str, kind: str = 'invalid') -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class EncodingInfo:
    """Layout of one raw encoding: numpy dtype of one channel and the number of channels."""

    dtype: np.dtype
    channels: int


_U8 = np.dtype(np.uint8)
_U16 = np.dtype(np.uint16)

#: Raw encodings this module converts, by their ``sensor_msgs/image_encodings`` name.
ENCODINGS: dict[str, EncodingInfo] = {
    'rgb8': EncodingInfo(_U8, 3),
    'bgr8': EncodingInfo(_U8, 3),
    'rgba8': EncodingInfo(_U8, 4),
    'bgra8': EncodingInfo(_U8, 4),
    'mono8': EncodingInfo(_U8, 1),
    'mono16': EncodingInfo(_U16, 1),
    '8UC1': EncodingInfo(_U8, 1),
    '8UC3': EncodingInfo(_U8, 3),
    '8UC4': EncodingInfo(_U8, 4),
    '16UC1': EncodingInfo(_U16, 1),
    # YUV 4:2:2, two bytes per pixel (sensor_msgs image_encodings: YUV422 is UYVY order)
    'yuv422': EncodingInfo(_U8, 2),
    'uyvy': EncodingInfo(_U8, 2),
    'yuv422_yuy2': EncodingInfo(_U8, 2),
    'yuyv': EncodingInfo(_U8, 2),
    # Bayer colour filter mosaics, one sample per pixel
    **{f'bayer_{pattern}{bits}': EncodingInfo(_U8 if bits == 8 else _U16, 1)
       for pattern in ('rggb', 'bggr', 'gbrg', 'grbg') for bits in (8, 16)},
}

#: OpenCV conversion to RGB of the camera encodings (OpenCV names a Bayer pattern after the
#: second row's second and third pixels, hence RGGB -> BayerBG, as in cv_bridge).
_CV_TO_RGB = {
    'yuv422': 'COLOR_YUV2RGB_UYVY', 'uyvy': 'COLOR_YUV2RGB_UYVY',
    'yuv422_yuy2': 'COLOR_YUV2RGB_YUY2', 'yuyv': 'COLOR_YUV2RGB_YUY2',
    **{f'bayer_{pattern}{bits}': f'COLOR_Bayer{cv}2RGB'
       for pattern, cv in (('rggb', 'BG'), ('bggr', 'RG'), ('gbrg', 'GR'), ('grbg', 'GB'))
       for bits in (8, 16)},
}
#: the camera encodings (converted to RGB through OpenCV; tests: test/test_camera_encodings.py)
CAMERA_ENCODINGS = frozenset(_CV_TO_RGB)


def encoding_info(encoding: str) -> EncodingInfo:
    """The dtype and channel count of ``encoding``.

    Raises:
        ImageConversionError: the encoding is not one of :data:`ENCODINGS`.
    """
    try:
        return ENCODINGS[encoding]
    except KeyError:
        raise ImageConversionError(
            f'unknown or unsupported image encoding {encoding!r}; supported: '
            f'{", ".join(ENCODINGS)}', 'unknown_encoding') from None


def _check_size(width: int, height: int, max_pixels: int | None) -> None:
    if width <= 0 or height <= 0:
        raise ImageConversionError(f'image has zero width or height ({width}x{height})',
                                   'zero_size')
    if max_pixels is not None and width * height > max_pixels:
        raise ImageConversionError(
            f'image of {width}x{height} = {width * height} pixels exceeds max_pixels='
            f'{max_pixels}; refusing to convert it (raise max_pixels if this size is intended)',
            'too_large')


def _as_byte_array(data: Any) -> np.ndarray:
    """A flat uint8 view of ``data`` (no copy for buffers and contiguous arrays)."""
    if isinstance(data, np.ndarray):
        flat = data.reshape(-1)
        return flat if flat.dtype == _U8 else flat.view(_U8)
    try:
        return np.frombuffer(data, dtype=_U8)
    except TypeError:  # a plain list of ints
        return np.asarray(data, dtype=_U8)


def image_msg_to_numpy(msg: Any, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The pixels of a ``sensor_msgs/Image`` as a numpy array in the message's own encoding.

    Row padding (``step`` larger than a row) is skipped and ``is_bigendian`` is honoured. The
    result is a view of ``msg.data`` (no copy) except for 16-bit data in non-native byte order,
    which is converted to native order (a copy). A padded view is not C-contiguous.

    Args:
        msg: a ``sensor_msgs/Image`` (rclpy, rosbags or duck-typed).
        max_pixels: refuse images with more than this many pixels (``None``: no cap).

    Returns:
        (H, W) for single-channel encodings, else (H, W, C); dtype uint8 or uint16 (native
        byte order), channels in the order of the encoding (see the module table).

    Raises:
        ImageConversionError: unknown encoding, zero or too large size, ``step`` smaller than a
            row, or ``data`` shorter than ``step * height``.
    """
    info = encoding_info(msg.encoding)
    width, height, step = int(msg.width), int(msg.height), int(msg.step)
    _check_size(width, height, max_pixels)
    itemsize = info.dtype.itemsize
    row_bytes = width * info.channels * itemsize
    if step < row_bytes:
        raise ImageConversionError(
            f'step {step} is smaller than one row of {width} px x {info.channels} ch x '
            f'{itemsize} B = {row_bytes} bytes ({msg.encoding})', 'step_too_small')
    buf = _as_byte_array(msg.data)
    if buf.size < step * height:
        raise ImageConversionError(
            f'image data has {buf.size} bytes, shorter than step * height = {step} * {height} = '
            f'{step * height}', 'data_too_short')
    dtype = info.dtype
    if itemsize > 1:
        dtype = dtype.newbyteorder('>' if msg.is_bigendian else '<')
    shape: tuple[int, ...] = (height, width, info.channels)
    strides: tuple[int, ...] = (step, info.channels * itemsize, itemsize)
    if info.channels == 1:
        shape, strides = shape[:2], strides[:2]
    out = np.ndarray(shape=shape, dtype=dtype, buffer=buf, offset=0, strides=strides)
    if itemsize > 1 and bool(msg.is_bigendian) != _NATIVE_BIG_ENDIAN:
        out = out.astype(info.dtype)  # native byte order (copy)
    return out


def image_msg_to_rgb(msg: Any, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A ``sensor_msgs/Image`` as the core's image format: (H, W, 3) uint8 RGB, C-contiguous.

    rgb8 without padding is returned as a view (no copy); other encodings are converted:
    BGR(A) reordered, alpha dropped, mono replicated to 3 channels, 16-bit scaled by ``>> 8``.
    8UC3/8UC4 are taken as BGR/BGRA (OpenCV's order). YUV 4:2:2 and Bayer through OpenCV (see
    the module docstring).

    Raises:
        ImageConversionError: as :func:`image_msg_to_numpy`.
    """
    pixels = image_msg_to_numpy(msg, max_pixels=max_pixels)
    enc = msg.encoding
    if enc in _CV_TO_RGB:
        return _camera_to_rgb(pixels, enc)
    if enc == 'rgb8':
        rgb = pixels
    elif enc == 'rgba8':
        rgb = pixels[..., :3]
    elif enc in ('bgr8', 'bgra8', '8UC3', '8UC4'):
        rgb = pixels[..., 2::-1]
    else:  # single channel
        if pixels.dtype == _U16:
            pixels = (pixels >> 8).astype(_U8)
        rgb = np.repeat(pixels[..., None], 3, axis=2)
    return np.ascontiguousarray(rgb)


def _camera_to_rgb(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """YUV 4:2:2 or Bayer pixels (as ``image_msg_to_numpy`` returns them) -> (H, W, 3) uint8
    RGB through OpenCV."""
    import cv2

    height, width = pixels.shape[:2]
    if encoding.startswith('bayer_'):
        if width < 2 or height < 2:
            raise ImageConversionError(f'a Bayer image needs at least 2x2 pixels, got '
                                       f'{width}x{height} ({encoding})', 'zero_size')
    elif width % 2:
        raise ImageConversionError(f'a YUV 4:2:2 image needs an even width (two pixels share '
                                   f'their chroma), got {width} ({encoding})', 'odd_width')
    rgb = cv2.cvtColor(np.ascontiguousarray(pixels), getattr(cv2, _CV_TO_RGB[encoding]))
    if rgb.dtype == _U16:
        rgb = (rgb >> 8).astype(_U8)
    return np.ascontiguousarray(rgb)


def numpy_to_image_msg(array_: np.ndarray, encoding: str, header: Any = None,
                       step: int | None = None, is_bigendian: bool = False) -> Any:
    """Build a ``sensor_msgs.msg.Image`` (rclpy) from a numpy array.

    Args:
        array_: (H, W) or (H, W, 1) for single-channel encodings, (H, W, C) otherwise; dtype
            uint8 for 8-bit encodings and uint16 for mono16/16UC1 (any byte order).
        encoding: one of :data:`ENCODINGS`.
        header: a ``std_msgs.msg.Header`` copied into the message (default: empty header).
        step: bytes per row, at least ``W * C * itemsize``; larger values pad every row with
            zeros (useful in tests). Default: no padding.
        is_bigendian: byte order to write 16-bit data in (ignored for 8-bit encodings).

    Raises:
        ImageConversionError: unknown encoding, shape or dtype not matching the encoding, zero
            size, or ``step`` smaller than a row.
    """
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    info = encoding_info(encoding)
    arr = np.asarray(array_)
    if info.channels == 1 and arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    expected_ndim = 2 if info.channels == 1 else 3
    if arr.ndim != expected_ndim or (expected_ndim == 3 and arr.shape[2] != info.channels):
        want = '(H, W)' if info.channels == 1 else f'(H, W, {info.channels})'
        raise ImageConversionError(
            f'array of shape {arr.shape} does not match encoding {encoding!r}: expected {want}')
    if arr.dtype.kind != info.dtype.kind or arr.dtype.itemsize != info.dtype.itemsize:
        raise ImageConversionError(
            f'array dtype {arr.dtype} does not match encoding {encoding!r}: expected {info.dtype}')
    height, width = int(arr.shape[0]), int(arr.shape[1])
    _check_size(width, height, None)
    itemsize = info.dtype.itemsize
    row_bytes = width * info.channels * itemsize
    if step is None:
        step = row_bytes
    if step < row_bytes:
        raise ImageConversionError(
            f'step {step} is smaller than one row of {row_bytes} bytes ({encoding}, width {width})')
    big = bool(is_bigendian) if itemsize > 1 else False
    if itemsize > 1:
        arr = arr.astype(info.dtype.newbyteorder('>' if big else '<'), copy=False)
    rows = np.ascontiguousarray(arr).reshape(height, row_bytes // itemsize).view(_U8)
    if step > row_bytes:
        padded = np.zeros((height, step), dtype=_U8)
        padded[:, :row_bytes] = rows
        rows = padded
    data = array.array('B')
    data.frombytes(rows.tobytes())

    msg = Image()
    msg.header = header if header is not None else Header()
    msg.height, msg.width = height, width
    msg.encoding = encoding
    msg.is_bigendian = 1 if big else 0
    msg.step = int(step)
    msg.data = data
    return msg


# --- compressed images -----------------------------------------------------------------------

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
#: JPEG start-of-frame markers (SOF0..SOF15 except DHT 0xC4, JPG 0xC8, DAC 0xCC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def compressed_image_size(data: bytes | memoryview | np.ndarray) -> tuple[int, int] | None:
    """(width, height) read from a PNG or JPEG header without decoding; ``None`` if unknown.

    Raises:
        ImageConversionError: a PNG/JPEG header that is truncated or malformed.
    """
    buf = _as_byte_array(data)
    head = buf[:32].tobytes()
    if head.startswith(_PNG_SIGNATURE):
        if len(head) < 24 or head[12:16] != b'IHDR':
            raise ImageConversionError('corrupt PNG: missing or truncated IHDR header', 'corrupt')
        width, height = struct.unpack('>II', head[16:24])
        return int(width), int(height)
    if head.startswith(b'\xff\xd8'):
        raw = buf.tobytes() if buf.size < (1 << 16) else bytes(buf[: 1 << 20])
        pos = 2
        while pos + 4 <= len(raw):
            if raw[pos] != 0xFF:
                raise ImageConversionError(f'corrupt JPEG: no marker at byte {pos}', 'corrupt')
            marker = raw[pos + 1]
            if marker == 0xFF:  # fill byte
                pos += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without length
                pos += 2
                continue
            (length,) = struct.unpack('>H', raw[pos + 2:pos + 4])
            if marker in _JPEG_SOF:
                if pos + 9 > len(raw):
                    break
                height, width = struct.unpack('>HH', raw[pos + 5:pos + 9])
                return int(width), int(height)
            if marker == 0xDA or length < 2:  # start of scan before any frame header
                break
            pos += 2 + length
        raise ImageConversionError('corrupt JPEG: no frame header (SOF) found', 'corrupt')
    return None


def compressed_to_rgb(msg: Any, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG, PNG or anything OpenCV reads).

    The size is read from the PNG/JPEG header and checked against ``max_pixels`` before the
    image is decoded; for other formats it is checked right after decoding.

    Returns:
        (H, W, 3) uint8 RGB, C-contiguous (16-bit PNGs are reduced to 8 bits, alpha dropped).

    Raises:
        ImageConversionError: empty or corrupt data, zero or too large size.
    """
    import cv2

    buf = _as_byte_array(msg.data)
    if buf.size == 0:
        raise ImageConversionError('compressed image has no data', 'no_data')
    size = compressed_image_size(buf)
    if size is not None:
        _check_size(size[0], size[1], max_pixels)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        fmt = getattr(msg, 'format', '')
        raise ImageConversionError(
            f'corrupt or unsupported compressed image ({buf.size} bytes, format {fmt!r}): '
            'OpenCV could not decode it', 'corrupt')
    if size is None:
        _check_size(int(bgr.shape[1]), int(bgr.shape[0]), max_pixels)
    return np.ascontiguousarray(bgr[..., ::-1])


def rgb_to_compressed(rgb: np.ndarray, fmt: str = 'jpeg', quality: int = 90,
                      header: Any = None) -> Any:
    """Encode an (H, W, 3) uint8 RGB image into a ``sensor_msgs.msg.CompressedImage``.

    Args:
        rgb: (H, W, 3) uint8, RGB order.
        fmt: 'jpeg' or 'png'. ``format`` is written as image_transport does
            (``'rgb8; jpeg compressed bgr8'``).
        quality: JPEG quality 1-100 (PNG: ignored).
        header: ``std_msgs.msg.Header`` copied into the message (default: empty header).

    Raises:
        ImageConversionError: wrong shape/dtype, unknown format, or the encoder failed.
    """
    import cv2
    from sensor_msgs.msg import CompressedImage
    from std_msgs.msg import Header

    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != _U8:
        raise ImageConversionError(
            f'expected an (H, W, 3) uint8 RGB array, got shape {arr.shape} dtype {arr.dtype}')
    _check_size(int(arr.shape[1]), int(arr.shape[0]), None)
    if fmt == 'jpeg':
        ok, enc = cv2.imencode('.jpg', arr[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    elif fmt == 'png':
        ok, enc = cv2.imencode('.png', arr[..., ::-1])
    else:
        raise ImageConversionError(f"unknown compressed format {fmt!r}; use 'jpeg' or 'png'")
    if not ok:
        raise ImageConversionError(f'OpenCV failed to encode a {arr.shape} image as {fmt}')
    data = array.array('B')
    data.frombytes(enc.tobytes())
    msg = CompressedImage()
    msg.header = header if header is not None else Header()
    msg.format = f'rgb8; {fmt} compressed bgr8'
    msg.data = data
    return msg
