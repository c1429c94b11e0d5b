"""Tiny compressed image files whose headers declare huge sizes ("image bombs"), for tests.

Each builder returns the bytes of a small, well-formed file header of one format that
OpenCV's ``imdecode`` recognises, declaring ``width`` x ``height`` pixels, followed by little
or no pixel data. A decoder that trusts the header allocates ``width * height * channels``
bytes before it finds that the data is missing.
"""
from __future__ import annotations

import struct
import zlib


def png(width: int, height: int) -> bytes:
    """PNG: signature, IHDR (8-bit RGB), a tiny IDAT, IEND."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack('>I', len(body)) + kind + body
                + struct.pack('>I', zlib.crc32(kind + body) & 0xFFFFFFFF))
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr)
            + chunk(b'IDAT', zlib.compress(b'\x00' * 16)) + chunk(b'IEND', b''))


def bmp(width: int, height: int) -> bytes:
    """BMP, 4 bits per pixel with a 16-colour palette and no pixel data: 118 bytes."""
    palette = bytes(64)
    offset = 14 + 40 + len(palette)
    info = struct.pack('<IiiHHIIiiII', 40, width, height, 1, 4, 0, 0, 2835, 2835, 16, 0)
    return b'BM' + struct.pack('<IHHI', offset, 0, 0, offset) + info + palette
