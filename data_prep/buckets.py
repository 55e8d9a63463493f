"""Pick a resolution bucket for a source and the center crop that maps it there.

Rule: among the buckets the source can fill (enlarging by at most ``max_upscale``), take the one
whose aspect ratio is nearest to the source's (in log space); among equally near aspects, the
largest. The source is center-cropped to the bucket's aspect and resized to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Crop:
    """Source-pixel crop ``(x, y, w, h)`` then resize to ``(out_w, out_h)``."""

    x: int
    y: int
    w: int
    h: int
    out_w: int
    out_h: int


def bucket_name(scale: tuple[int, int] | list[int]) -> str:
    return f"{scale[0]}x{scale[1]}"


def parse_bucket(name: str) -> tuple[int, int]:
    w, h = name.split("x")
    return int(w), int(h)


def choose_bucket(width: int, height: int, scales: list[list[int]] | tuple, max_upscale: float = 1.0
                  ) -> tuple[int, int] | None:
    """The (W, H) bucket for a ``width`` x ``height`` source, or None when it cannot fill any."""
    if width <= 0 or height <= 0:
        return None
    src_aspect = math.log(width / height)
    best, best_key = None, None
    for w, h in scales:
        factor = max(w / width, h / height)  # enlargement needed to cover the bucket
        if factor > max_upscale + 1e-9:
            continue
        key = (round(abs(math.log(w / h) - src_aspect), 3), -w * h)
        if best_key is None or key < best_key:
            best, best_key = (int(w), int(h)), key
    return best


def center_crop(width: int, height: int, out_w: int, out_h: int) -> Crop:
    """Largest centered region of the source with the aspect of ``out_w`` x ``out_h`` (even sizes)."""
    scale = max(out_w / width, out_h / height)
    cw = min(width, int(round(out_w / scale)))
    ch = min(height, int(round(out_h / scale)))
    cw -= cw % 2 if cw > 2 else 0
    ch -= ch % 2 if ch > 2 else 0
    return Crop(x=(width - cw) // 2, y=(height - ch) // 2, w=cw, h=ch, out_w=out_w, out_h=out_h)
