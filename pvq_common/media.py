"""The media files the project reads, by extension (sources of a shard job, folders to evaluate)."""

from __future__ import annotations

import posixpath

VIDEO_EXT = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"})
IMAGE_EXT = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})


def kind_of(uri: str) -> str | None:
    """``"video"``, ``"image"`` or None from a path's or URI's extension (query string ignored)."""
    ext = posixpath.splitext(str(uri).split("?")[0])[1].lower()
    return "video" if ext in VIDEO_EXT else "image" if ext in IMAGE_EXT else None
