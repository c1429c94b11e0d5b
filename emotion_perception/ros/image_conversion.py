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

#: The cap on width * height of an image, everywhere: the nodes' ``max_image_pixels`` default,
#: ``process`` and the bag readers (40 Mpx; 8K UHD is 33 Mpx). A larger image is refused on its
#: header, before anything is allocated for it.
DEFAULT_MAX_PIXELS = 40_000_000

_NATIVE_BIG_ENDIAN = sys.byteorder == 'big'


class ImageConversionError(ValueError):
    """An image message or array that cannot be converted; the message says why.

    ``kind`` names the problem for counters and throttled logs: 'unknown_encoding',
    'zero_size', 'too_large', 'step_too_small', 'data_too_short', 'no_data', 'corrupt',
    'unsupported_format', 'odd_width' (YUV 4:2:2), 'shape_mismatch' or 'encode_failed'.
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
#: OpenCV's own limits (imgcodecs CV_IO_MAX_IMAGE_WIDTH/HEIGHT/PIXELS): it refuses larger ones
_CV_MAX_SIDE = 1 << 20
_CV_MAX_PIXELS = 1 << 30
#: the compressed formats whose size is read from the header before decoding: every format
#: OpenCV 4.14's imdecode reads (except OpenEXR, refused: see :func:`compressed_image_info`)
COMPRESSED_FORMATS = ('png', 'jpeg', 'webp', 'avif', 'tiff', 'bmp', 'gif', 'pnm', 'pam', 'pfm',
                      'sun_raster', 'jpeg2000', 'hdr')


def _corrupt(fmt: str, why: str) -> ImageConversionError:
    return ImageConversionError(f'corrupt {fmt} header: {why}', 'corrupt')


def _jpeg_size(buf: np.ndarray) -> tuple[int, int]:
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


def _webp_size(raw: bytes) -> tuple[int, int]:
    """WebP: the largest size any of the VP8X canvas and the first bitstream (VP8 / VP8L)
    declares. Handwritten: Pillow's WebP plugin creates libwebp's animation decoder when it
    opens a file, which allocates the whole canvas (measured: 557 MB for 12000 x 12000)."""
    sizes = []
    pos = 12
    while pos + 8 <= len(raw) and len(sizes) < 2:
        kind = raw[pos:pos + 4]
        (length,) = struct.unpack('<I', raw[pos + 4:pos + 8])
        body = raw[pos + 8:pos + 8 + min(length, 32)]
        if kind == b'VP8X':
            if len(body) < 10:
                raise _corrupt('WebP', 'truncated VP8X chunk')
            sizes.append((int.from_bytes(body[4:7], 'little') + 1,
                          int.from_bytes(body[7:10], 'little') + 1))
        elif kind == b'VP8L':
            if len(body) < 5 or body[0] != 0x2F:
                raise _corrupt('WebP', 'bad VP8L signature')
            (bits,) = struct.unpack('<I', body[1:5])
            sizes.append(((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1))
        elif kind == b'VP8 ':
            if len(body) < 10 or body[3:6] != b'\x9d\x01\x2a':
                raise _corrupt('WebP', 'bad VP8 key frame header')
            width, height = struct.unpack('<HH', body[6:10])
            sizes.append((width & 0x3FFF, height & 0x3FFF))
        pos += 8 + length + (length & 1)
    if not sizes:
        raise _corrupt('WebP', 'no VP8X, VP8 or VP8L chunk')
    return max(w for w, _ in sizes), max(h for _, h in sizes)


def _netpbm_tokens(raw: bytes, count: int, start: int = 2) -> list[bytes]:
    """The first ``count`` whitespace-separated header tokens after the magic (comments
    skipped), as PNM / PFM headers have them."""
    tokens: list[bytes] = []
    pos = start
    while len(tokens) < count and pos < len(raw):
        c = raw[pos:pos + 1]
        if c.isspace():
            pos += 1
        elif c == b'#':
            end = raw.find(b'\n', pos)
            pos = len(raw) if end < 0 else end + 1
        else:
            end = pos
            while end < len(raw) and not raw[end:end + 1].isspace() and raw[end:end + 1] != b'#':
                end += 1
            tokens.append(raw[pos:end])
            pos = end
    return tokens


def _int_token(fmt: str, token: bytes) -> int:
    if not token.isdigit() or len(token) > 10:
        raise _corrupt(fmt, f'size field {token[:12]!r} is not a number')
    return int(token)


def _pam_size(raw: bytes) -> tuple[int, int]:
    """PAM (P7): WIDTH and HEIGHT lines before ENDHDR. Handwritten: Pillow reads no PAM."""
    fields = {}
    for line in raw[:4096].split(b'\n')[1:]:
        parts = line.split(b'#', 1)[0].split()
        if parts[:1] == [b'ENDHDR']:
            break
        if len(parts) >= 2:
            fields[parts[0]] = parts[1]
    if b'WIDTH' not in fields or b'HEIGHT' not in fields:
        raise _corrupt('PAM', 'no WIDTH or HEIGHT before ENDHDR')
    return _int_token('PAM', fields[b'WIDTH']), _int_token('PAM', fields[b'HEIGHT'])


def _hdr_size(raw: bytes) -> tuple[int, int]:
    """Radiance RGBE: the resolution line after the blank line ending the header, e.g.
    '-Y 480 +X 640'. Handwritten: Pillow reads no Radiance files."""
    end = raw.find(b'\n\n', 0, 1 << 16)
    if end < 0:
        raise _corrupt('HDR', 'no end of header')
    line = raw[end + 2:end + 2 + 64].split(b'\n', 1)[0].split()
    if (len(line) != 4 or line[0][1:] not in (b'X', b'Y') or line[2][1:] not in (b'X', b'Y')
            or line[0][1:] == line[2][1:]):
        raise _corrupt('HDR', f'bad resolution line {b" ".join(line)[:40]!r}')
    sizes = {line[0][1:]: _int_token('HDR', line[1]), line[2][1:]: _int_token('HDR', line[3])}
    return sizes[b'X'], sizes[b'Y']


def _j2k_size(raw: bytes, pos: int = 0) -> tuple[int, int]:
    """JPEG 2000 codestream: the image area of the SIZ segment (Xsiz - XOsiz, Ysiz - YOsiz)."""
    if raw[pos:pos + 4] != b'\xff\x4f\xff\x51' or len(raw) < pos + 24:
        raise _corrupt('JPEG 2000', 'no SIZ segment after SOC')
    xsiz, ysiz, xo, yo = struct.unpack('>IIII', raw[pos + 8:pos + 24])
    return max(int(xsiz) - int(xo), 0), max(int(ysiz) - int(yo), 0)


def _jp2_size(raw: bytes) -> tuple[int, int]:
    """JP2 file: the larger of the ihdr box's size and the codestream's SIZ (OpenCV decodes the
    codestream). Handwritten: Pillow reads the ihdr box only."""
    sizes = []
    pos, end = 0, len(raw)
    while pos + 8 <= end:
        length, kind = struct.unpack('>I4s', raw[pos:pos + 8])
        header = 8
        if length == 1 and pos + 16 <= end:
            (length,) = struct.unpack('>Q', raw[pos + 8:pos + 16])
            header = 16
        elif length == 0:
            length = end - pos
        if length < header:
            raise _corrupt('JP2', f'box {kind!r} of length {length}')
        if kind == b'jp2h':  # a super box: look inside
            end, pos = min(end, pos + length), pos + header
            continue
        if kind == b'ihdr' and pos + 16 <= len(raw):
            height, width = struct.unpack('>II', raw[pos + 8:pos + 16])
            sizes.append((int(width), int(height)))
            end = len(raw)
        if kind == b'jp2c':
            sizes.append(_j2k_size(raw, pos + header))
            break
        pos += length
        if pos >= end:
            end = len(raw)
    if not sizes:
        raise _corrupt('JP2', 'no ihdr or jp2c box')
    return max(w for w, _ in sizes), max(h for _, h in sizes)


#: formats whose headers Pillow reads without decoding or allocating the pixels (checked per
#: format: test/test_image_bombs.py): format -> (PIL module, ImageFile class)
_PILLOW_READERS = {'bmp': ('BmpImagePlugin', 'BmpImageFile'),
                   'gif': ('GifImagePlugin', 'GifImageFile'),
                   'tiff': ('TiffImagePlugin', 'TiffImageFile'),
                   'pnm': ('PpmImagePlugin', 'PpmImageFile'),
                   'sun_raster': ('SunImagePlugin', 'SunImageFile'),
                   'avif': ('AvifImagePlugin', 'AvifImageFile')}


def _pillow_size(fmt: str, raw: bytes) -> tuple[int, int]:
    """The size Pillow's plugin for ``fmt`` reads from the header (it does not decode: the
    pixels are only read by ``load()``). The plugin class is used directly: no guessing of the
    format, and Pillow's own decompression-bomb limit, which ``Image.open`` applies, is ours
    (``max_pixels``), except where a plugin checks it itself (a GIF frame larger than its
    screen)."""
    import importlib
    import io

    from PIL import Image
    module, cls = _PILLOW_READERS[fmt]
    try:
        reader = getattr(importlib.import_module(f'PIL.{module}'), cls)
    except (ImportError, AttributeError) as exc:
        raise ImageConversionError(
            f'{fmt} images are refused: this Pillow cannot read their header ({exc}), so their '
            'size cannot be checked before decoding', 'unsupported_format') from None
    try:
        with reader(io.BytesIO(raw)) as im:
            return int(im.size[0]), int(im.size[1])
    except Image.DecompressionBombError as exc:
        raise ImageConversionError(f'{fmt} image too large: {exc}', 'too_large') from None
    except Exception as exc:  # noqa: BLE001 - SyntaxError, OSError, struct.error, ...
        raise _corrupt(fmt, f'{type(exc).__name__}: {exc}') from None


def compressed_image_info(data: bytes | memoryview | np.ndarray) -> tuple[str, int, int]:
    """(format, width, height) from the header of a compressed image, without decoding it.

    The format is recognised by the signatures OpenCV's ``imdecode`` recognises it by, so
    the size read is the size OpenCV would allocate: every format it decodes is covered (see
    :data:`COMPRESSED_FORMATS`). PNG, JPEG, WebP, PAM, PFM, JPEG 2000 and Radiance HDR
    headers are parsed here; BMP, GIF, TIFF, PNM, Sun raster and AVIF by Pillow's readers,
    which stop at the header.

    Raises:
        ImageConversionError: 'corrupt' for a header that is malformed or truncated, or bytes
            that start like no format OpenCV decodes; 'unsupported_format' for OpenEXR (OpenCV
            disables it unless OPENCV_IO_ENABLE_OPENEXR is set; its size is not checked here);
            'too_large' when Pillow's reader itself refuses the size.
    """
    buf = _as_byte_array(data)
    head = buf[:64].tobytes()
    if head.startswith(_PNG_SIGNATURE):
        if len(head) < 24 or head[12:16] != b'IHDR':
            raise ImageConversionError('corrupt PNG: missing or truncated IHDR header', 'corrupt')
        width, height = struct.unpack('>II', head[16:24])
        return 'png', int(width), int(height)
    if head.startswith(b'\xff\xd8'):
        return ('jpeg', *_jpeg_size(buf))
    raw = buf.tobytes() if buf.size <= (1 << 16) else bytes(buf[: 1 << 16])
    if head[:4] == b'RIFF' and head[8:12] == b'WEBP':
        return ('webp', *_webp_size(raw))
    if head[4:8] == b'ftyp' and head[8:12] in (b'avif', b'avis', b'mif1', b'msf1'):
        return ('avif', *_pillow_size('avif', bytes(buf)))
    if head[:4] in (b'II*\x00', b'MM\x00*', b'II+\x00', b'MM\x00+'):
        return ('tiff', *_pillow_size('tiff', bytes(buf)))
    if head[:2] == b'BM':
        return ('bmp', *_pillow_size('bmp', raw))
    if head[:6] in (b'GIF87a', b'GIF89a'):
        return ('gif', *_pillow_size('gif', bytes(buf)))
    if head[:1] == b'P' and head[1:2] in b'123456' and len(head) > 2:
        return ('pnm', *_pillow_size('pnm', raw))
    if head[:2] == b'P7':
        return ('pam', *_pam_size(raw))
    if head[:2] in (b'PF', b'Pf'):
        tokens = _netpbm_tokens(raw, 2)
        if len(tokens) < 2:
            raise _corrupt('PFM', 'truncated size')
        return 'pfm', _int_token('PFM', tokens[0]), _int_token('PFM', tokens[1])
    if head[:4] == b'\x59\xa6\x6a\x95':
        return ('sun_raster', *_pillow_size('sun_raster', raw))
    if head[:4] == b'\xff\x4f\xff\x51':
        return ('jpeg2000', *_j2k_size(raw))
    if head[:12] == b'\x00\x00\x00\x0cjP  \r\n\x87\n':
        return ('jpeg2000', *_jp2_size(raw))
    if head.startswith((b'#?RGBE', b'#?RADIANCE')):
        return ('hdr', *_hdr_size(raw))
    if head[:4] == b'\x76\x2f\x31\x01':
        raise ImageConversionError(
            'OpenEXR images are refused: their size is not checked before decoding (and OpenCV '
            'disables EXR decoding unless OPENCV_IO_ENABLE_OPENEXR is set)', 'unsupported_format')
    raise ImageConversionError(
        f'corrupt or unsupported compressed image ({buf.size} bytes): the data starts like none '
        'of the formats whose size can be checked before decoding '
        f'({", ".join(COMPRESSED_FORMATS)})', 'corrupt')


def compressed_image_size(data: bytes | memoryview | np.ndarray) -> tuple[int, int] | None:
    """(width, height) read from the header without decoding (see
    :func:`compressed_image_info`); ``None`` when the format is not recognised.

    Raises:
        ImageConversionError: a recognised header that is truncated or malformed.
    """
    try:
        _, width, height = compressed_image_info(data)
    except ImageConversionError as exc:
        if exc.kind == 'corrupt' and str(exc).startswith('corrupt or unsupported'):
            return None
        raise
    return width, height


def compressed_to_rgb(msg: Any, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` (any format OpenCV reads, but OpenEXR).

    The size is read from the header (:func:`compressed_image_info`) and checked against
    ``max_pixels`` and OpenCV's own limits before the image is decoded; a format whose size
    cannot be read is refused without decoding.

    Returns:
        (H, W, 3) uint8 RGB, C-contiguous (16-bit PNGs are reduced to 8 bits, alpha dropped).

    Raises:
        ImageConversionError: empty, corrupt or unsupported data, zero or too large size.
    """
    import cv2

    buf = _as_byte_array(msg.data)
    if buf.size == 0:
        raise ImageConversionError('compressed image has no data', 'no_data')
    fmt, width, height = compressed_image_info(buf)
    _check_size(width, height, max_pixels)
    if width > _CV_MAX_SIDE or height > _CV_MAX_SIDE or width * height > _CV_MAX_PIXELS:
        raise ImageConversionError(
            f'{fmt} image of {width}x{height} pixels exceeds what OpenCV decodes (at most '
            f'{_CV_MAX_SIDE} per side and {_CV_MAX_PIXELS} pixels)', 'too_large')
    try:
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        text = ' '.join(str(exc).split())
        kind = 'too_large' if 'CV_IO_MAX_IMAGE' in text or 'Insufficient memory' in text \
            else 'corrupt'
        raise ImageConversionError(f'OpenCV refused the {fmt} image ({width}x{height}): '
                                   f'{text[-200:]}', kind) from None
    if bgr is None or bgr.size == 0:
        fmt_field = getattr(msg, 'format', '')
        raise ImageConversionError(
            f'corrupt or unsupported compressed image ({buf.size} bytes, {fmt} header, format '
            f'{fmt_field!r}): OpenCV could not decode it', 'corrupt')
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
