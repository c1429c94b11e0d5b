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


def webp(width: int, height: int) -> bytes:
    """WebP (extended): a VP8X chunk with the canvas size, then a lossless (VP8L) bitstream
    header of the largest size it can state (14 bits), and no image data."""
    vp8x = struct.pack('<B3x', 0) + (width - 1).to_bytes(3, 'little') \
        + (height - 1).to_bytes(3, 'little')
    w14, h14 = min(width, 1 << 14) - 1, min(height, 1 << 14) - 1
    vp8l = b'\x2f' + struct.pack('<I', w14 | (h14 << 14)) + bytes(5)
    body = (b'WEBP' + b'VP8X' + struct.pack('<I', len(vp8x)) + vp8x
            + b'VP8L' + struct.pack('<I', len(vp8l)) + vp8l)
    return b'RIFF' + struct.pack('<I', len(body)) + body


def tiff(width: int, height: int) -> bytes:
    """Little-endian baseline TIFF, 8-bit grey, one uncompressed strip of 1 byte."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
               (273, 4, 0), (277, 3, 1), (278, 4, height), (279, 4, 1)]
    ifd_size = 2 + 12 * len(entries) + 4
    data_offset = 8 + ifd_size
    ifd = struct.pack('<H', len(entries))
    for tag, kind, value in entries:
        value = data_offset if tag == 273 else value
        if kind == 3:
            ifd += struct.pack('<HHIHxx', tag, kind, 1, value)
        else:
            ifd += struct.pack('<HHII', tag, kind, 1, value)
    return b'II*\x00' + struct.pack('<I', 8) + ifd + struct.pack('<I', 0) + b'\x00'


def pnm(width: int, height: int) -> bytes:
    """Binary PPM (P6), 8 bits, 4 bytes of pixel data."""
    return f'P6\n{width} {height}\n255\n'.encode() + bytes(4)


def pam(width: int, height: int) -> bytes:
    """PAM (P7), RGB, 4 bytes of pixel data."""
    return (f'P7\nWIDTH {width}\nHEIGHT {height}\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\n'
            'ENDHDR\n').encode() + bytes(4)


def pfm(width: int, height: int) -> bytes:
    """Portable float map (PF, colour, little endian), 12 bytes of pixel data."""
    return f'PF\n{width} {height}\n-1.0\n'.encode() + bytes(12)


def jpeg2000(width: int, height: int) -> bytes:
    """A JPEG 2000 codestream (J2K): SIZ (one 8-bit component, one tile), COD, QCD, one
    tile part with 2 bytes of data, EOC."""
    siz = struct.pack('>HIIIIIIIIH', 0, width, height, 0, 0, width, height, 0, 0, 1) \
        + bytes([7, 1, 1])
    cod = struct.pack('>BBHBBBBBB', 0, 0, 1, 0, 5, 4, 4, 0, 0)
    qcd = bytes([0x40]) + bytes([0x48] * 16)
    def seg(marker: int, body: bytes) -> bytes:
        return struct.pack('>HH', marker, len(body) + 2) + body
    sot = struct.pack('>HIBB', 0, 0, 0, 1)
    return (b'\xff\x4f' + seg(0xFF51, siz) + seg(0xFF52, cod) + seg(0xFF5C, qcd)
            + seg(0xFF90, sot) + b'\xff\x93' + b'\x00\x00' + b'\xff\xd9')


def jp2(width: int, height: int) -> bytes:
    """The same codestream in a JP2 file (signature, ftyp, jp2h/ihdr, jp2c boxes)."""
    def box(kind: bytes, body: bytes) -> bytes:
        return struct.pack('>I', 8 + len(body)) + kind + body
    ihdr = struct.pack('>IIHBBBB', height, width, 1, 7, 7, 0, 0)
    colr = struct.pack('>BBBI', 1, 0, 0, 17)
    return (box(b'jP  ', b'\r\n\x87\n') + box(b'ftyp', b'jp2 \x00\x00\x00\x00jp2 ')
            + box(b'jp2h', box(b'ihdr', ihdr) + box(b'colr', colr))
            + box(b'jp2c', jpeg2000(width, height)))


def gif(width: int, height: int, frame: tuple[int, int] | None = None) -> bytes:
    """GIF89a: logical screen ``width`` x ``height``, one frame (``frame`` size, default the
    screen) with a 2-colour palette and a minimal LZW stream (an end code)."""
    fw, fh = frame or (width, height)
    return (b'GIF89a' + struct.pack('<HHBBB', width, height, 0x80, 0, 0) + bytes(6)
            + b',' + struct.pack('<HHHHB', 0, 0, fw, fh, 0) + b'\x02\x02\x44\x01\x00;')


def sun_raster(width: int, height: int) -> bytes:
    """Sun raster, 24 bits, standard type, no colour map, 4 bytes of pixel data."""
    return struct.pack('>8I', 0x59A66A95, width, height, 24, 0, 1, 0, 0) + bytes(4)


def hdr(width: int, height: int) -> bytes:
    """Radiance RGBE (.hdr): text header, resolution line, 4 bytes of pixel data."""
    return (b'#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n'
            + f'-Y {height} +X {width}\n'.encode() + bytes(4))


#: every builder by format name (OpenCV decodes all of them)
BUILDERS = {'png': png, 'bmp': bmp, 'webp': webp, 'tiff': tiff, 'pnm': pnm, 'pam': pam,
            'pfm': pfm, 'jpeg2000': jpeg2000, 'jp2': jp2, 'gif': gif, 'sun_raster': sun_raster,
            'hdr': hdr}
