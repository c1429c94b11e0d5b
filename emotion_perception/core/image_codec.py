"""Encode RGB images as PNG or JPEG bytes: the one encoder of the package (the remote backend's
uploads, ``ros.image_conversion.rgb_to_compressed``'s CompressedImage messages). ROS-free.
"""
from __future__ import annotations

import numpy as np

FORMATS = ('png', 'jpeg')
#: JPEG chroma subsampling: '444' keeps full colour resolution (a thin red box keeps its colour
#: at its edges; 4:2:0 smears a 1-pixel red line into its surroundings: up to 106/255 seen),
#: '420' is OpenCV's and image_transport's default (smaller)
CHROMA = ('444', '420')
#: JPEG qualities tried, in order, when an image is over ``max_bytes`` (after the asked one)
_FALLBACK_QUALITIES = (75, 50)


def encode_rgb(image: np.ndarray, fmt: str = 'png', quality: int = 90,
               max_side: int | None = None, max_bytes: int | None = None,
               chroma: str = '444') -> bytes:
    """An (H, W, 3) uint8 RGB image as PNG or JPEG bytes.

    Args:
        image: (H, W, 3) uint8, RGB order.
        fmt: 'png' (lossless) or 'jpeg'.
        quality: JPEG quality 1-100 (PNG: ignored).
        max_side: the long side is brought down to this (pixels, area interpolation; aspect
            kept); None = the image's own size.
        max_bytes: the result is made smaller until it is at most this: JPEG quality 75, then
            50, then the size x0.7 (and again); None = no bound.
        chroma: JPEG chroma subsampling, one of ``CHROMA``.

    Raises:
        ValueError: not an (H, W, 3) uint8 array, an unknown format or chroma, or OpenCV
            could not encode it.
    """
    import cv2
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f'expected an (H, W, 3) uint8 RGB array, got shape {arr.shape} '
                         f'dtype {arr.dtype}')
    if fmt not in FORMATS:
        raise ValueError(f"unknown compressed format {fmt!r}; use 'jpeg' or 'png'")
    if chroma not in CHROMA:
        raise ValueError(f'unknown JPEG chroma subsampling {chroma!r}; one of {CHROMA}')
    scale = 1.0 if max_side is None else max_side / max(arr.shape[:2])
    qualities = (quality, *[q for q in _FALLBACK_QUALITIES if q < quality]) \
        if fmt == 'jpeg' and max_bytes is not None else (quality,)
    while True:
        img = arr
        if scale < 1.0:
            size = (max(1, round(arr.shape[1] * scale)), max(1, round(arr.shape[0] * scale)))
            img = cv2.resize(arr, size, interpolation=cv2.INTER_AREA)
        bgr = np.ascontiguousarray(img[..., ::-1])
        for q in qualities:
            data = _encode(cv2, bgr, fmt, q, chroma)
            if max_bytes is None or len(data) <= max_bytes:
                return data
        scale = min(scale, 1.0) * 0.7


def _encode(cv2, bgr: np.ndarray, fmt: str, quality: int, chroma: str) -> bytes:
    params: list[int] = []
    if fmt == 'jpeg':
        factor = (cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444 if chroma == '444'
                  else cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420)
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality), cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                  factor]
    ok, buf = cv2.imencode('.jpg' if fmt == 'jpeg' else '.png', bgr, params)
    if not ok:
        raise ValueError(f'OpenCV failed to encode a {bgr.shape} image as {fmt}')
    return buf.tobytes()


__all__ = ['CHROMA', 'FORMATS', 'encode_rgb']
