"""List inputs as :class:`SourceItem` rows (id, uri, caption, kind) from the supported source specs.

A source spec is one of:

- ``path/or/s3/to/file.csv``: WebVid CSV (``videoid, contentUrl, duration, page_dir, name``);
  ``contentUrl`` may be a local path (relative to the CSV), ``file://``, ``s3://`` or ``http(s)://``.
- ``captions_*.json`` or ``captions.json::IMAGE_DIR``: COCO captions; without ``::IMAGE_DIR`` the
  images are looked up in ``<json dir>/images``, ``<json dir>/<split>`` and ``<json dir>/../<split>``
  (``captions_val2017.json`` -> ``val2017``).
- a folder or ``s3://bucket/prefix``: every video/image file under it; a caption is read from a
  sidecar ``<name>.txt`` when one exists.

Rows that cannot be listed (corrupt CSV rows, unsupported URI schemes) come back as items with
``error`` set, so the job records them instead of failing. Ids are unique by construction
(:func:`unique_ids`): no input is dropped because another one has the same name.

Before a job encodes them, :func:`check_hosts` turns http(s) sources outside ``allowed_hosts`` into
``host_not_allowed`` rows (no request made) and :func:`stat_sources` records every file's size and
mtime/ETag (resume and change detection).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import posixpath
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Iterator

from data_prep import storage
from data_prep.storage import host_allowed
from pvq_common.media import kind_of

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
    size: int | None = None
    """Size and mtime/ETag when the listing gave them (a folder on S3), else ``None``: :func:`stat_sources` asks."""
    version: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _resolve(base_dir: str, ref: str) -> str:
    if re.match(r"^[a-z][a-z0-9+.-]*://", ref):
        return ref
    if ref.startswith("/"):
        return ref
    return storage.join(base_dir, ref)


SCHEMES = ("file", "s3", "http", "https")
"""URI schemes a source may use; anything else (ftp://, github://, ...) is an ``unsupported_scheme`` row."""


def scheme_of(uri: str) -> str | None:
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", uri)
    return m.group(1).lower() if m else None


def _strict_error(text: str) -> str | None:
    """What csv's strict mode says of ``text`` (None: well-formed)."""
    try:
        for _ in csv.reader(io.StringIO(text), strict=True):
            pass
    except csv.Error as e:
        return str(e)
    return None


def _complete(text: str) -> bool:
    """Whether ``text`` ends outside a quoted field (csv's strict mode says "unexpected end of data")."""
    return "unexpected end of data" not in (_strict_error(text) or "")


def _looks_like_row(line: str, width: int) -> bool:
    """Whether one physical line is on its own a complete CSV row of ``width`` fields with an id and a URL."""
    if not _complete(line):
        return False
    try:
        rows = list(csv.reader([line]))
    except csv.Error:
        return False
    return len(rows) == 1 and len(rows[0]) == width and bool(rows[0][0].strip()) and bool(rows[0][1].strip())


def _csv_records(text: str, width: int) -> Iterator[tuple[int, str, bool]]:
    """Split CSV text (after the header) into records: ``(first line index, text, terminated)``.

    A quoted field may span lines, but never across a line that is a complete row by itself, and a
    record of several lines must be well-formed CSV: otherwise an unterminated quote ends at the end
    of its own line (``terminated`` False) and reading starts again on the next line, so it swallows
    neither the later rows nor a good row whose own quoted field spans lines (its opening quote would
    close the bad one: ``"never closed`` + ``112,c.mp4,..,"caption on`` + ``two lines"``).
    """
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        start, buf = i, lines[i]
        i += 1
        while not _complete(buf) and i < len(lines) and not _looks_like_row(lines[i], width):
            buf += lines[i]
            i += 1
        if i - start > 1 and _strict_error(buf) is not None:  # not one record: only its first line is bad
            buf, i = lines[start], start + 1
        yield start, buf, _complete(buf)


def read_webvid_csv(spec: str) -> Iterator[SourceItem]:
    """Rows of a WebVid CSV; every row that cannot be used is an item with ``error`` set and the row
    number (0-based, data rows) and line number in its detail, and the rows after it still count."""
    text = storage.read_text(spec)
    base = storage.dirname(spec)
    name = posixpath.basename(spec)
    head, _, body = text.partition("\n")
    try:
        header = next(csv.reader([head]), None)
    except csv.Error:
        header = None
    if header is None or [h.strip() for h in header[:5]] != list(WEBVID_COLUMNS):
        raise SourceError(f"{spec}: not a WebVid CSV; expected header {','.join(WEBVID_COLUMNS)}, got {header}")
    width = len(header)
    index = 0
    for start, record, terminated in _csv_records(body, width):
        if not record.strip():
            continue  # blank line
        line = start + 2  # 1-based, after the header
        k = index
        index += 1

        def bad(reason: str, what: str) -> SourceItem:
            return SourceItem(f"{name}:row{k}", spec, "", "video", reason, f"row {k} (line {line}): {what}")

        if not terminated:
            yield bad("bad_csv_row", f"unterminated quote: {record.strip()[:80]!r}")
            continue
        try:
            rows = list(csv.reader(io.StringIO(record)))
        except csv.Error as e:
            yield bad("bad_csv_row", f"{e}")
            continue
        row = rows[0] if len(rows) == 1 else None
        if row is None or len(row) != width:
            yield bad("bad_csv_row", f"expected {width} fields, got {len(row) if row else len(rows)}: "
                                     f"{(row or [])[:3]}")
            continue
        vid, url, _dur, _page, caption = (c.strip() for c in row[:5])
        if not vid:
            yield bad("bad_csv_row", f"empty videoid (url {url[:80]!r})")
            continue
        if not url:
            yield bad("bad_csv_row", f"empty contentUrl (videoid {vid!r})")
            continue
        uri = _resolve(base, url)
        scheme = scheme_of(uri)
        if scheme is not None and scheme not in SCHEMES:
            yield SourceItem(f"webvid:{vid}", uri, caption, kind_of(uri) or "video", "unsupported_scheme",
                             f"row {k} (line {line}): {scheme}:// is not supported; use a local path, "
                             f"file://, s3:// or http(s)://")
            continue
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


def _norm(uri: str) -> str:
    return uri.rstrip("/") if storage.is_remote(uri) else os.path.abspath(storage.strip_file(uri))


def _under(uri: str, roots: list[str]) -> bool:
    u = _norm(uri)
    return any(u == r or u.startswith(r.rstrip("/") + "/") for r in roots)


def read_folder(spec: str, exclude: list[str] | None = None) -> Iterator[SourceItem]:
    """Every media file under ``spec``, except those under the folders in ``exclude`` (the job's own
    output tree when ``--out`` lies inside a source folder: its work cache holds mp4 files)."""
    # on S3 the listing carries each object's size and ETag: no HEAD per source in stat_sources
    stats = storage.find_remote_info(spec) if storage.is_remote(spec) else {}
    files = sorted(stats) if stats else storage.find(spec)
    names = set(files)
    root = spec.rstrip("/")
    roots = [_norm(e) for e in exclude or []]
    for uri in files:
        kind = kind_of(uri)
        if kind is None or (roots and _under(uri, roots)):
            continue
        rel = uri[len(root):].lstrip("/") if uri.startswith(root) else posixpath.basename(uri)
        side = posixpath.splitext(uri)[0] + ".txt"
        caption = storage.read_text(side).strip() if side in names else ""
        st = stats.get(uri, {})
        yield SourceItem(f"file:{rel}", uri, caption, kind, size=st.get("size"), version=st.get("version"))


def list_sources(specs: list[str], exclude: list[str] | None = None) -> list[SourceItem]:
    """All items of all specs, in a deterministic order, ids unique (:func:`unique_ids`). Folder
    listings skip everything under ``exclude`` (the job's output)."""
    items: list[SourceItem] = []
    for spec in specs:
        path = spec.partition("::")[0]
        scheme = scheme_of(path)
        if scheme is not None and scheme not in SCHEMES:
            raise SourceError(f"{spec}: {scheme}:// sources are not supported; use a local path, file://, s3:// "
                              f"or http(s)://")
        if not storage.exists(path):
            raise SourceError(f"source not found: {path} (check the path, or the S3 endpoint/credentials "
                              f"for s3:// sources)")
        if storage.isdir(path):
            items.extend(read_folder(path, exclude))
        elif path.lower().endswith(".csv"):
            items.extend(read_webvid_csv(path))
        elif path.lower().endswith(".json"):
            items.extend(read_coco(spec))
        elif kind_of(path):
            # absolute: the Ray workers that open it do not share the caller's working directory
            uri = path if storage.is_remote(path) else os.path.abspath(storage.strip_file(path))
            items.append(SourceItem(f"file:{posixpath.basename(path)}", uri, "", kind_of(path)))
        else:
            raise SourceError(f"{spec}: unknown source; give a WebVid .csv, a COCO captions .json, a folder, "
                              f"a media file or an s3:// prefix")
    return unique_ids(items)


def unique_ids(items: list[SourceItem]) -> list[SourceItem]:
    """Make ids unique by construction, keeping every input.

    The same (id, uri) listed twice (one CSV given twice, a folder and a file in it) is one input:
    kept once; listed again with another caption, the later listing is a ``duplicate_row`` error
    item (id ``<id>#<n>``) saying which caption was kept, so no caption is dropped without a word. An
    id shared by *different* inputs (two folders that both hold ``clip.mp4``, a CSV that repeats a
    ``videoid`` with another URL) gets ``@<8 hex of sha1(uri)>`` appended on every one of them, so no
    input is dropped and the ids do not depend on the order of the specs.
    """
    uris: dict[str, set[str]] = {}
    for it in items:
        uris.setdefault(it.id, set()).add(it.uri)
    kept: dict[tuple[str, str], SourceItem] = {}
    repeats: dict[tuple[str, str], int] = {}
    out = []
    for it in items:
        key = (it.id, it.uri)
        if len(uris[it.id]) > 1:
            it = SourceItem(**{**it.to_dict(), "id": f"{it.id}@{hashlib.sha1(it.uri.encode()).hexdigest()[:8]}"})
        first = kept.get(key)
        if first is None:
            kept[key] = it
            out.append(it)
        elif it.error is None and first.error is None and (it.caption, it.kind) != (first.caption, first.kind):
            n = repeats[key] = repeats.get(key, 1) + 1
            out.append(SourceItem(f"{it.id}#{n}", it.uri, it.caption, it.kind, "duplicate_row",
                                  f"{it.id}: {storage.redact(it.uri)} listed again with another caption "
                                  f"({it.caption[:80]!r}); kept the first listing ({first.caption[:80]!r})"))
    return out


def check_hosts(items: list[SourceItem], allowed_hosts: list[str]) -> list[SourceItem]:
    """Turn sources on hosts outside ``allowed_hosts`` (a shard config's) into ``host_not_allowed``
    items (no request made)."""
    out = []
    for it in items:
        if it.error is None and not host_allowed(it.uri, allowed_hosts):
            it = SourceItem(it.id, it.uri, it.caption, it.kind, "host_not_allowed",
                            f"{storage.redact(it.uri)}: host not in allowed_hosts {allowed_hosts}")
        out.append(it)
    return out


def _stat_item(it: SourceItem, allowed_hosts: list[str] | None = None) -> dict:
    d = it.to_dict()
    if it.error is None and it.size is not None:  # stat'ed by the listing
        return d
    d.update(size=-1, version="")
    if it.error is None:
        try:
            d.update(storage.info(it.uri, allowed_hosts))
        except Exception as e:  # noqa: BLE001 - any failure to stat is a missing source, recorded per item
            refused = storage.host_refusal(e)
            if refused is not None:  # an allowed host redirected elsewhere: no request was made there
                d.update(error="host_not_allowed", detail=str(refused))
    return d


def stat_sources(items: list[SourceItem], allowed_hosts: list[str] | None = None) -> list[dict]:
    """Items as dicts with ``size`` and ``version`` (mtime or ETag; ``size`` -1: missing), stat'ed in
    parallel, except those whose listing gave them (S3 folders); an http(s) source that redirects to
    a host outside ``allowed_hosts`` becomes a ``host_not_allowed`` item."""
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda it: _stat_item(it, allowed_hosts), items))
