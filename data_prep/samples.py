"""Generator of the small embedded demo set (no download needed).

``make_demo_set(out)`` writes, deterministically:

- ``videos/``: synthetic moving scenes from ffmpeg's lavfi sources, several sizes, aspects, lengths;
- ``images/``: a few still images;
- ``broken/``: one of each bad input (zero bytes, truncated mp4, text with a video extension,
  audio only, a too-short video, an unreadable image);
- ``webvid.csv`` (WebVid columns ``videoid,contentUrl,duration,page_dir,name``, with one missing path
  and one corrupt row) and ``captions_demo.json`` (COCO captions format) for ``images/``.

Paths inside the CSV are relative to the CSV file, so the set can be moved.
"""

from __future__ import annotations

import csv
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# (name, lavfi source, width, height, frames, fps, caption)
DEMO_VIDEOS: tuple[tuple[str, str, int, int, int, int, str], ...] = (
    ("testsrc_wide", "testsrc2", 320, 180, 40, 24, "a colour test pattern with a moving counter"),
    ("mandel_square", "mandelbrot", 128, 128, 36, 25, "zooming into a mandelbrot fractal"),
    ("bars_portrait", "smptebars", 96, 160, 20, 24, "colour bars in portrait"),
    ("life_4x3", "life=ratio=0.2:mold=10:seed=7", 160, 120, 33, 30, "cellular automaton growing"),
    ("rgb_wide", "rgbtestsrc", 256, 144, 17, 24, "rgb test source"),
)
DEMO_IMAGES: tuple[tuple[str, str, int, int, str], ...] = (
    ("img_landscape", "testsrc2", 300, 200, "a still test pattern, landscape"),
    ("img_portrait", "mandelbrot", 120, 200, "a still fractal, portrait"),
    ("img_square", "smptebars", 140, 140, "still colour bars"),
)
SHORT_FRAMES = 10


@dataclass
class DemoSet:
    root: Path
    csv: Path
    coco_json: Path
    image_dir: Path
    video_dir: Path
    videos: dict[str, dict] = field(default_factory=dict)
    """name -> {path, width, height, frames, fps, caption}"""
    images: dict[str, dict] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)
    """source id (as it appears in the job) -> expected error reason"""


def _ffmpeg(args: list[str]) -> None:
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", *args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({' '.join(cmd)}): {r.stderr.strip()}")


def make_video(path: Path, source: str, width: int, height: int, frames: int, fps: int,
               *, faststart: bool = True) -> Path:
    """Encode ``frames`` frames of lavfi ``source`` at ``width``x``height`` to an H.264 mp4."""
    path.parent.mkdir(parents=True, exist_ok=True)
    name, _, opts = source.partition("=")
    spec = f"{name}=size={width}x{height}:rate={fps}" + (f":{opts}" if opts else "")
    args = ["-f", "lavfi", "-i", spec, "-frames:v", str(frames), "-c:v", "libx264", "-preset", "ultrafast",
            "-crf", "18", "-pix_fmt", "yuv420p", "-fflags", "+bitexact", "-map_metadata", "-1"]
    if faststart:
        args += ["-movflags", "+faststart"]
    _ffmpeg([*args, str(path)])
    return path


def make_image(path: Path, source: str, width: int, height: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _ffmpeg(["-f", "lavfi", "-i", f"{source}=size={width}x{height}:rate=1", "-frames:v", "1",
             "-q:v", "2", "-fflags", "+bitexact", str(path)])
    return path


def make_broken(dir: Path) -> dict[str, Path]:
    """One file per kind of bad input; returns reason-name -> path."""
    dir.mkdir(parents=True, exist_ok=True)
    out = {}
    out["empty"] = dir / "empty.mp4"
    out["empty"].write_bytes(b"")
    full = make_video(dir / "_full.mp4", "testsrc2", 128, 96, 24, 24, faststart=False)
    data = full.read_bytes()
    out["truncated"] = dir / "truncated.mp4"
    out["truncated"].write_bytes(data[: len(data) // 2])  # moov is at the end: header lost
    full.unlink()
    out["not_video"] = dir / "notes.mp4"
    out["not_video"].write_text("this is a text file, not a video\n" * 20)
    out["audio_only"] = dir / "tone.mp4"
    _ffmpeg(["-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", "-fflags", "+bitexact",
             str(out["audio_only"])])
    out["short"] = make_video(dir / "short.mp4", "testsrc2", 128, 96, SHORT_FRAMES, 24)
    out["bad_image"] = dir / "garbage.jpg"
    out["bad_image"].write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 3)
    return out


def make_demo_set(root: str | Path, *, broken: bool = True) -> DemoSet:
    """Write the demo set under ``root`` (idempotent) and describe it."""
    root = Path(root)
    vdir, idir, bdir = root / "videos", root / "images", root / "broken"
    demo = DemoSet(root=root, csv=root / "webvid.csv", coco_json=root / "captions_demo.json",
                   image_dir=idir, video_dir=vdir)
    rows = []
    for i, (name, src, w, h, n, fps, caption) in enumerate(DEMO_VIDEOS):
        p = vdir / f"{name}.mp4"
        if not p.exists():
            make_video(p, src, w, h, n, fps)
        vid = str(1000 + i)
        demo.videos[name] = dict(path=p, id=f"webvid:{vid}", width=w, height=h, frames=n, fps=fps, caption=caption)
        rows.append([vid, f"videos/{name}.mp4", f"PT00H00M{n // fps:02d}S", "demo", caption])
    if broken:
        bad = make_broken(bdir)
        reasons = {"empty": "empty_file", "truncated": "unreadable", "not_video": "unreadable",
                   "audio_only": "no_video_stream", "short": "too_short"}
        for j, (kind, reason) in enumerate(reasons.items()):
            vid = str(2000 + j)
            rows.append([vid, f"broken/{bad[kind].name}", "PT00H00M01S", "broken", f"broken input: {kind}"])
            demo.broken[f"webvid:{vid}"] = reason
        rows.append(["2100", "broken/does_not_exist.mp4", "PT00H00M01S", "broken", "a missing file"])
        demo.broken["webvid:2100"] = "missing"
    with demo.csv.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["videoid", "contentUrl", "duration", "page_dir", "name"])
        w.writerows(rows)
        if broken:
            f.write('2200,"unterminated quote,broken\n')  # a corrupt row: one field only
            demo.broken[f"webvid.csv:row{len(rows)}"] = "bad_csv_row"
    images, anns = [], []
    for k, (name, src, w, h, caption) in enumerate(DEMO_IMAGES):
        p = idir / f"{name}.jpg"
        if not p.exists():
            make_image(p, src, w, h)
        images.append({"id": 500 + k, "file_name": p.name, "width": w, "height": h})
        anns.append({"id": 9000 + k, "image_id": 500 + k, "caption": caption})
        demo.images[name] = dict(path=p, id=f"coco:{500 + k}", width=w, height=h, caption=caption)
    if broken:
        (idir / "garbage.jpg").write_bytes((bdir / "garbage.jpg").read_bytes())
        images.append({"id": 599, "file_name": "garbage.jpg", "width": 10, "height": 10})
        anns.append({"id": 9099, "image_id": 599, "caption": "an unreadable image"})
        demo.broken["coco:599"] = "unreadable_image"
    demo.coco_json.write_text(json.dumps({"images": images, "annotations": anns}, indent=1))
    return demo


def main() -> None:  # pragma: no cover - thin entry point
    import sys

    demo = make_demo_set(sys.argv[1] if len(sys.argv) > 1 else "demo_data")
    print(f"demo set in {demo.root}: {len(demo.videos)} videos, {len(demo.images)} images, "
          f"{len(demo.broken)} broken inputs\n  {demo.csv}\n  {demo.coco_json}::{demo.image_dir}")


if __name__ == "__main__":  # pragma: no cover
    main()
