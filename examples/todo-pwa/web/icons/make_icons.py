#!/usr/bin/env python3
"""Writes the PWA's icons (PNG, standard library only: zlib + struct).

A white check mark on the app's blue. `icon-*.png` are "any" icons (the
mark fills most of the square); `icon-maskable-512.png` keeps the mark
inside the central safe zone (a circle of 40% radius) so that any mask
shape the platform applies leaves it whole; `apple-touch-icon.png` is the
opaque 180 px icon iOS uses.

Usage: python3 examples/todo-pwa/web/icons/make_icons.py   (rewrites them)
"""
import math
import os
import struct
import zlib

BLUE = (0x1E, 0x40, 0xAF)
WHITE = (0xFF, 0xFF, 0xFF)
# The check mark, in units of the icon's side, and its stroke width.
MARK = [(0.26, 0.52), (0.43, 0.69), (0.75, 0.35)]
STROKE = 0.10


def seg_dist(px, py, a, b):
    (ax, ay), (bx, by) = a, b
    dx, dy = bx - ax, by - ay
    t = max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy)))
    return math.hypot(px - (ax + t * dx), py - (ay + t * dy))


def icon(size, scale):
    """RGB rows: the mark scaled by `scale` around the centre."""
    pts = [(0.5 + (x - 0.5) * scale, 0.5 + (y - 0.5) * scale) for x, y in MARK]
    half = STROKE * scale * size / 2
    rows = []
    for y in range(size):
        row = bytearray([0])  # filter: none
        for x in range(size):
            px, py = (x + 0.5) / size, (y + 0.5) / size
            d = min(seg_dist(px, py, pts[i], pts[i + 1]) for i in range(len(pts) - 1)) * size
            cover = max(0.0, min(1.0, half - d + 0.5))  # anti-aliased edge
            row += bytes(round(b + (w - b) * cover) for b, w in zip(BLUE, WHITE))
        rows.append(bytes(row))
    return rows


def png(path, size, scale):
    rows = icon(size, scale)

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit RGB
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
    data += chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(data)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    for name, size, scale in [
        ("icon-192.png", 192, 1.0),
        ("icon-512.png", 512, 1.0),
        ("icon-maskable-512.png", 512, 0.62),
        ("apple-touch-icon.png", 180, 0.85),
    ]:
        png(os.path.join(here, name), size, scale)
        print(f"{name}: {size}x{size}")


if __name__ == "__main__":
    main()
