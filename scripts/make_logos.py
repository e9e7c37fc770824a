"""Write kernelspec/logo-32x32.png and logo-64x64.png with a tiny stdlib PNG writer.

The logo: a white "N" on an indigo rounded square. Run from the repository root:
``python3 scripts/make_logos.py`` (the PNGs are committed; rerun only to change them).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

BACKGROUND = (63, 81, 181, 255)
FOREGROUND = (255, 255, 255, 255)
CLEAR = (0, 0, 0, 0)


def png(width: int, height: int, pixels: list[list[tuple[int, int, int, int]]]) -> bytes:
    """An 8-bit RGBA PNG of ``pixels`` (rows of (r, g, b, a))."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + b"".join(bytes(p) for p in row) for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def logo(size: int) -> list[list[tuple[int, int, int, int]]]:
    """Pixels of the logo at ``size`` x ``size``."""
    radius = size // 5
    stroke = max(2, size // 8)
    left, right = size * 0.25, size * 0.75 - stroke
    top, bottom = size * 0.2, size * 0.8
    rows = []
    for y in range(size):
        row = []
        for x in range(size):
            row.append(_pixel(x + 0.5, y + 0.5, size, radius, stroke, left, right, top, bottom))
        rows.append(row)
    return rows


def _pixel(x, y, size, radius, stroke, left, right, top, bottom):
    if not _in_rounded_square(x, y, size, radius):
        return CLEAR
    if top <= y <= bottom:
        if left <= x <= left + stroke or right <= x <= right + stroke:
            return FOREGROUND
        # the diagonal from the top of the left bar to the bottom of the right bar
        t = (y - top) / (bottom - top)
        diagonal = left + t * (right - left)
        if diagonal <= x <= diagonal + stroke:
            return FOREGROUND
    return BACKGROUND


def _in_rounded_square(x, y, size, radius):
    cx = min(max(x, radius), size - radius)
    cy = min(max(y, radius), size - radius)
    return (x - cx) ** 2 + (y - cy) ** 2 <= radius**2


def main() -> None:
    target = Path(__file__).resolve().parent.parent / "kernelspec"
    target.mkdir(exist_ok=True)
    for size in (32, 64):
        path = target / f"logo-{size}x{size}.png"
        path.write_bytes(png(size, size, logo(size)))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
