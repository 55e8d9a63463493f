"""List inputs as :class:`SourceItem` rows (id, uri, caption, kind) from the supported source specs.

A source spec is one of:

- ``path/or/s3/to/file.csv``: WebVid CSV (``videoid, contentUrl, duration, page_dir, name``);
  ``contentUrl`` may be a local path (relative to the CSV), ``file://``, ``s3://`` or ``http(s)://``.
- ``captions_*.json`` or ``captions.json::IMAGE_DIR``: COCO captions; without ``::IMAGE_DIR`` the
  images are looked up in ``<json dir>/images``, ``<json dir>/<split>`` and ``<json dir>/../<split>``
  (``captions_val2017.json`` -> ``val2017``).
- a folder or ``s3://bucket/prefix``: every video/image file under it; a caption is read from a
  sidecar ``<name>.txt`` when one exists.

Rows that cannot be listed (corrupt CSV rows) come back as items with ``error`` set, so the job
records them instead of failing.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import re
from dataclasses import asdict, dataclass
from typing import Iterator

from data_prep import storage

VIDEO_EXT = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"}
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
WEBVID_COLUMNS = ("videoid", "contentUrl", "duration", "page_dir", "name")


class SourceError(ValueError):
    """A source spec cannot be read at all (wrong path, unknown format); the message says why."""


@dataclass
class SourceItem:
    id: str
    uri: str
    caption: str
    kind: str  # "video" | "image"
    error: str | None = None
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def kind_of(uri: str) -> str | None:
    ext = posixpath.splitext(uri.split("?")[0])[1].lower()
    return "video" if ext in VIDEO_EXT else "image" if ext in IMAGE_EXT else None


def _resolve(base_dir: str, ref: str) -> str:
    if re.match(r"^[a-z][a-z0-9+.-]*://", ref):
        return ref
    if ref.startswith("/"):
        return ref
    return storage.join(base_dir, ref)


def read_webvid_csv(spec: str) -> Iterator[SourceItem]:
    text = storage.read_text(spec)
    base = storage.dirname(spec)
    name = posixpath.basename(spec)
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or [h.strip() for h in header[:5]] != list(WEBVID_COLUMNS):
        raise SourceError(f"{spec}: not a WebVid CSV; expected header {','.join(WEBVID_COLUMNS)}, got {header}")
    index = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            yield SourceItem(f"{name}:row{index}", spec, "", "video", "bad_csv_row", f"row {index}: {e}")
            break
        index += 1
        if len(row) != len(header) or not row[0].strip() or not row[1].strip():
            yield SourceItem(f"{name}:row{index - 1}", spec, "", "video", "bad_csv_row",
                             f"row {index - 1} (line {reader.line_num}): expected {len(header)} fields, "
                             f"got {len(row)}: {row[:3]}")
            continue
        vid, url, _dur, _page, caption = (c.strip() for c in row[:5])
        uri = _resolve(base, url)
        yield SourceItem(f"webvid:{vid}", uri, caption, kind_of(uri) or "video")


def _coco_image_dir(spec: str, explicit: str | None) -> str:
    if explicit:
        return explicit
    base = storage.dirname(spec)
    stem = posixpath.splitext(posixpath.basename(spec))[0]
    split = stem[len("captions_"):] if stem.startswith("captions_") else stem
    candidates = [storage.join(base, "images"), storage.join(base, split),
                  storage.join(storage.dirname(base), split)]
    for c in candidates:
        if storage.isdir(c):
            return c
    raise SourceError(f"{spec}: image folder not found (tried {', '.join(candidates)}); "
                      f"give it as {spec}::IMAGE_DIR")


def read_coco(spec: str) -> Iterator[SourceItem]:
    path, _, image_dir = spec.partition("::")
    try:
        data = json.loads(storage.read_text(path))
        images = {im["id"]: im["file_name"] for im in data["images"]}
        anns = data["annotations"]
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise SourceError(f"{path}: not a COCO captions json (needs images[].id/file_name and "
                          f"annotations[].image_id/caption): {e}") from None
    image_dir = _coco_image_dir(path, image_dir or None)
    captions: dict[int, str] = {}
    for a in sorted(anns, key=lambda a: a.get("id", 0)):
        captions.setdefault(a["image_id"], a.get("caption", "").strip())  # first caption per image
    for img_id in sorted(images):
        uri = storage.join(image_dir, images[img_id])
        yield SourceItem(f"coco:{img_id}", uri, captions.get(img_id, ""), "image")


def read_folder(spec: str) -> Iterator[SourceItem]:
    files = storage.find(spec)
    names = set(files)
    root = spec.rstrip("/")
    for uri in files:
        kind = kind_of(uri)
        if kind is None:
            continue
        rel = uri[len(root):].lstrip("/") if uri.startswith(root) else posixpath.basename(uri)
        side = posixpath.splitext(uri)[0] + ".txt"
        caption = storage.read_text(side).strip() if side in names else ""
        yield SourceItem(f"file:{rel}", uri, caption, kind)


def list_sources(specs: list[str]) -> list[SourceItem]:
    """All items of all specs, in a deterministic order, ids unique (a repeated id keeps the first)."""
    items: list[SourceItem] = []
    for spec in specs:
        path = spec.partition("::")[0]
        if not storage.exists(path):
            raise SourceError(f"source not found: {path} (check the path, or the S3 endpoint/credentials "
                              f"for s3:// sources)")
        if storage.isdir(path):
            items.extend(read_folder(path))
        elif path.lower().endswith(".csv"):
            items.extend(read_webvid_csv(path))
        elif path.lower().endswith(".json"):
            items.extend(read_coco(spec))
        elif kind_of(path):
            items.append(SourceItem(f"file:{posixpath.basename(path)}", path, "", kind_of(path)))
        else:
            raise SourceError(f"{spec}: unknown source; give a WebVid .csv, a COCO captions .json, a folder, "
                              f"a media file or an s3:// prefix")
    seen: set[str] = set()
    out = []
    for it in items:
        if it.id in seen:
            continue
        seen.add(it.id)
        out.append(it)
    return out
