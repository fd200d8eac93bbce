"""Learning-curve charts as PNG without matplotlib (not in the venv): a tiny raster and zlib.

Each series is a trailing-window accuracy line over the pass; constants are flat lines. There is
no text in the image: the colours are fixed (COLOURS) and named in the bench's markdown report.
Gridlines at accuracy 0.25 / 0.5 / 0.75, ticks every 50 calls, vertical marks at learning cycles.
"""

from __future__ import annotations

import itertools
import statistics
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

RGB = tuple[int, int, int]
COLOURS: dict[str, RGB] = {
    "learners off": (150, 150, 150), "learners on": (31, 119, 180), "oracle": (44, 160, 44),
    "best constant": (214, 39, 40), "learning cycle": (255, 200, 120),
}
W, H, PAD = 640, 320, 24


def trailing(correct: Sequence[bool], window: int) -> list[float]:
    """Accuracy over the trailing `window` calls at each call (fewer at the start)."""
    return [statistics.fmean(correct[max(0, i + 1 - window):i + 1]) for i in range(len(correct))]


class Canvas:
    """A white RGB raster with lines; written as an 8-bit PNG."""

    def __init__(self, w: int = W, h: int = H) -> None:
        self.w, self.h = w, h
        self.px = bytearray(b"\xff" * (w * h * 3))

    def dot(self, x: int, y: int, c: RGB, size: int = 1) -> None:
        for dx in range(size):
            for dy in range(size):
                xx, yy = x + dx, y + dy
                if 0 <= xx < self.w and 0 <= yy < self.h:
                    o = (yy * self.w + xx) * 3
                    self.px[o:o + 3] = bytes(c)

    def line(self, x0: int, y0: int, x1: int, y1: int, c: RGB, size: int = 1) -> None:
        """Bresenham's line."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            self.dot(x0, y0, c, size)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def png(self) -> bytes:
        """The raster as PNG bytes (filter 0 on every row)."""
        raw = b"".join(b"\x00" + bytes(self.px[y * self.w * 3:(y + 1) * self.w * 3]) for y in range(self.h))

        def chunk(tag: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

        head = struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def write_curve(path: Path, n: int, series: dict[str, list[float]], constants: dict[str, float],
                learn_at: Sequence[int]) -> None:
    """Draw `series` (values in [0, 1] per call), flat `constants` and learning-cycle marks to `path`."""
    cv = Canvas()

    def xy(i: float, v: float) -> tuple[int, int]:
        return (PAD + round(i / max(1, n - 1) * (W - 2 * PAD)), H - PAD - round(v * (H - 2 * PAD)))

    for g in (0.0, 0.25, 0.5, 0.75, 1.0):
        x0, y = xy(0, g)
        x1, _ = xy(n - 1, g)
        cv.line(x0, y, x1, y, (0, 0, 0) if g == 0.0 else (225, 225, 225))
    for at in learn_at:
        x, y0 = xy(at, 0.0)
        cv.line(x, y0, x, xy(at, 1.0)[1], COLOURS["learning cycle"])
    for tick in range(0, n, 50):
        x, y = xy(tick, 0.0)
        cv.line(x, y, x, y + 5, (0, 0, 0))
    for name, value in constants.items():
        x0, y = xy(0, value)
        cv.line(x0, y, xy(n - 1, value)[0], y, COLOURS.get(name, (0, 0, 0)))
    for name, values in series.items():
        colour = COLOURS.get(name, (0, 0, 0))
        pts = [xy(i, v) for i, v in enumerate(values)]
        for (xa, ya), (xb, yb) in itertools.pairwise(pts):
            cv.line(xa, ya, xb, yb, colour, size=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cv.png())
