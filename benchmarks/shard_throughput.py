"""Shard throughput: the shard job vs plain ffmpeg doing the same cuts.

Both sides cut, crop, resize and encode exactly the same clips with the same ffmpeg command (one
process per source video, all its clips in one pass); the job also lists, probes, writes the tars
and manifests. Three modes, each printing its ratio against the target of issue 15:

- warm (default): ``shard()`` in one process, on the local pool and on a warm Ray cluster
  (``--executor``), vs a threads-1 ffmpeg process pool of the same width; the median of
  ``--repeats`` alternating runs, plus each executor's first run (source hashing off: the baseline
  does not read the sources twice). Target >= 0.9.
- ``--cold``: whole processes, ``pvq data shard`` (defaults, hashing on) on every other video, at most
  ``--cold-videos``, ``--cold-clips`` 16-frame 256x256 clips each, vs plain ffmpeg over
  ``xargs -P workers``; each side at ffmpeg ``-threads 1`` and ``0`` (auto), its best counts. Target >= 0.6.
- ``--refresh N``: a no-change ``pvq data refresh`` of a generated dataset of N sources. Target < 10 s
  for 10,000.

Input: ``--videos DIR`` (default ../shared/media/videos when present, else synthetic clips from
data_prep.samples).

    python benchmarks/shard_throughput.py [--videos DIR] [--workers 2] [--clips-per-video 8] [--executor both]
    python benchmarks/shard_throughput.py --cold [--cold-videos 11] [--cold-clips 4] [--repeats 5]
    python benchmarks/shard_throughput.py --refresh 10000
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _bench import emit  # noqa: E402
from pvq_common.env import missing_local_env  # noqa: E402

os.environ.update(missing_local_env())  # loopback only, no usage stats: before Ray starts

from data_prep.buckets import center_crop, choose_bucket  # noqa: E402
from data_prep.clips import plan_windows  # noqa: E402
from data_prep.config import load_shard_config  # noqa: E402
from data_prep.encode import video_command  # noqa: E402
from data_prep.probe import probe  # noqa: E402
from data_prep.samples import make_video  # noqa: E402


def _ffmpeg_job(args: tuple) -> int:
    src, windows, crop, fps, enc, out_dir = args
    os.makedirs(out_dir, exist_ok=True)
    subprocess.run(video_command(src, windows, crop, fps, enc, os.path.join(out_dir, "clip%04d.mp4")),
                   check=True, capture_output=True)
    return len(windows)


def _sh_pool(scripts: list[Path], workers: int) -> None:
    """Run shell scripts ``workers`` at a time (``xargs -P``), as one process, the way a person would."""
    subprocess.run(["xargs", "-0", "-P", str(workers), "-n", "1", "sh"], input="\0".join(map(str, scripts)).encode(),
                   check=True, capture_output=True)


def cold(a: argparse.Namespace, videos: list[str], work: Path) -> None:
    """Whole processes: ``pvq data shard`` on ``--cold-videos`` real videos vs the same cuts by plain
    ffmpeg over ``xargs -P workers``; each side at ffmpeg ``-threads 1`` and ``0`` (auto), its best counts."""
    picked = sorted(videos)[1::2][:a.cold_videos]
    src = work / "cold-src"
    src.mkdir()
    for v in picked:
        (src / Path(v).name).symlink_to(v)
    overrides = ["clips.lengths=[16]", "buckets.scales=[[256,256]]", f"clips.max_clips_per_video={a.cold_clips}",
                 "shards.val_fraction=0.0", *a.set]
    cfg = load_shard_config(ROOT / "configs" / "shard" / "default.yaml", overrides)
    scripts: dict[int, list[Path]] = {}
    n_clips = 0
    for threads in (1, 0):
        enc = dataclasses.replace(cfg.encode, threads=threads)
        scripts[threads] = []
        n_clips = 0
        for i, v in enumerate(sorted(picked, key=lambda v: -os.path.getsize(v))):  # largest first, as the job
            p = probe(v)
            windows = plan_windows(p.frames, cfg.clips, seed=cfg.seed, source_id=v)
            crop = center_crop(p.width, p.height, *choose_bucket(p.width, p.height, cfg.buckets.scales))
            d = work / f"ff{threads}" / f"{i:03d}"
            d.mkdir(parents=True)
            sh = d.with_suffix(".sh")
            sh.write_text(shlex.join(video_command(v, windows, crop, p.fps, enc, str(d / "clip%04d.mp4"))) + "\n")
            scripts[threads].append(sh)
            n_clips += len(windows)
    pvq = shutil.which("pvq", path=str(Path(sys.executable).parent)) or "pvq"

    def run_ffmpeg(threads: int) -> float:
        for sh in scripts[threads]:
            for f in sh.with_suffix("").glob("*.mp4"):
                f.unlink()
        t = time.perf_counter()
        _sh_pool(scripts[threads], a.workers)
        dt = time.perf_counter() - t
        assert sum(len(list(sh.with_suffix("").glob("*.mp4"))) for sh in scripts[threads]) == n_clips
        return dt

    def run_pvq(threads: int) -> float:
        out = work / "cold-out"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [pvq, "data", "shard", "-s", str(src), "-o", str(out), *(x for o in overrides for x in ("--set", o)),
               "--set", f"encode.threads={threads}", "--set", f"ray.num_cpus={a.workers}"]
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        dt = time.perf_counter() - t
        assert r.returncode == 0, r.stderr[-2000:]
        stats = json.loads((out / "v000001" / "_stats.json").read_text())
        assert stats["samples"] == n_clips and stats["errors"] == 0, (stats, n_clips)
        times["job_wall_s"].append(stats["wall_s"])
        return dt

    times: dict[str, list[float]] = {"job_wall_s": []}
    for k in range(a.repeats):  # alternate, so every variant sees the same machine load
        for threads in (1, 0):
            times.setdefault(f"ffmpeg_threads{threads}_s", []).append(run_ffmpeg(threads))
            times.setdefault(f"pvq_threads{threads}_s", []).append(run_pvq(threads))
    med = {k: statistics.median(v) for k, v in times.items()}
    ff = min((med[f"ffmpeg_threads{t}_s"], t) for t in (1, 0))
    ours = min((med[f"pvq_threads{t}_s"], t) for t in (1, 0))
    res = {"mode": "cold", "videos": len(picked), "clips": n_clips, "workers": a.workers, "repeats": a.repeats,
           "overrides": overrides, "ffmpeg_best": {"threads": ff[1], "s": round(ff[0], 3)},
           "pvq_best": {"threads": ours[1], "s": round(ours[0], 3)}, "ratio": round(ff[0] / ours[0], 3),
           **{f"median_{k}": round(v, 3) for k, v in med.items()},
           **{k: [round(x, 3) for x in v] for k, v in times.items()}, "cpu_load_1min": os.getloadavg()[0]}
    emit(res, f"cold: whole `pvq data shard` / plain ffmpeg (xargs -P {a.workers}) = {res['ratio']:.2f} (target >= "
              f"0.60); best threads: ffmpeg {ff[1]} ({ff[0]:.2f} s), pvq {ours[1]} ({ours[0]:.2f} s), "
              f"{n_clips} clips of {len(picked)} videos", a.json)


def warm(a: argparse.Namespace, videos: list[str], work: Path) -> None:
    """Steady state in one process: ``shard()`` on each executor (``--executor``) vs the threads-1
    ffmpeg pool, alternating; plus each executor's first run (and Ray's ``ray.init``)."""
    cfg = load_shard_config(ROOT / "configs" / "shard" / "default.yaml", [
        "clips.lengths=[16]", f"clips.max_clips_per_video={a.clips_per_video}",
        "buckets.scales=[[256,256]]", "shards.val_fraction=0.0", f"ray.num_cpus={a.workers}",
        "encode.preset=veryfast", "hash_sources=false",
        *([f"ray.sources_per_task={a.sources_per_task}"] if a.sources_per_task else [])])
    # the plain-ffmpeg baseline: same windows, crop, command; a process pool of the same width
    jobs = []
    for i, v in enumerate(videos):
        p = probe(v)
        windows = plan_windows(p.frames, cfg.clips, seed=cfg.seed, source_id=v)
        scale = choose_bucket(p.width, p.height, cfg.buckets.scales)
        if windows and scale:
            jobs.append((v, windows, center_crop(p.width, p.height, *scale), p.fps, cfg.encode,
                         str(work / "ffmpeg" / f"{i:03d}")))
    n_clips = sum(len(j[1]) for j in jobs)

    def run_ffmpeg() -> float:
        shutil.rmtree(work / "ffmpeg", ignore_errors=True)
        t = time.perf_counter()
        with ProcessPoolExecutor(a.workers) as pool:
            n = sum(pool.map(_ffmpeg_job, jobs))
        assert n == n_clips
        return time.perf_counter() - t

    from data_prep.shard import ensure_ray, shard

    def run_pipeline(c) -> float:
        t = time.perf_counter()
        r = shard([str(a.videos)], str(work / "out"), c)
        assert r.stats["samples"] == n_clips, f"pipeline made {r.stats['samples']} clips, ffmpeg {n_clips}"
        assert r.stats["executor"] == c.executor
        shutil.rmtree(work / "out")
        return time.perf_counter() - t

    res: dict = {"videos": len(videos), "clips": n_clips, "workers": a.workers, "repeats": a.repeats}
    summary = []
    for ex in ("local", "ray") if a.executor == "both" else (a.executor,):  # local first: Ray not yet in the process
        c = dataclasses.replace(cfg, executor=ex)
        t_init = 0.0
        if ex == "ray":
            t = time.perf_counter()
            ensure_ray(c)
            t_init = time.perf_counter() - t
        t_first = run_pipeline(c)  # local: the first pool; Ray: its workers start and import the pipeline
        t_ff, t_pipe = [], []
        for _ in range(a.repeats):  # alternate, so both see the same machine load
            t_ff.append(run_ffmpeg())
            t_pipe.append(run_pipeline(c))
        ff, pipe = statistics.median(t_ff), statistics.median(t_pipe)
        res[ex] = {"ffmpeg_clips_per_s": round(n_clips / ff, 2), "pipeline_clips_per_s": round(n_clips / pipe, 2),
                   "ratio": round(ff / pipe, 3), "ratio_first_run": round(ff / t_first, 3),
                   "ratio_first_run_with_ray_init": round(ff / (t_first + t_init), 3),
                   "ffmpeg_s": [round(x, 3) for x in t_ff], "pipeline_s": [round(x, 3) for x in t_pipe]}
        summary.append(f"{ex}: {res[ex]['ratio']:.2f} (first run {res[ex]['ratio_first_run']:.2f}"
                       + (f", {res[ex]['ratio_first_run_with_ray_init']:.2f} counting ray.init)" if ex == "ray" else ")"))
    res["cpu_load_1min"] = os.getloadavg()[0]
    emit(res, "warm shard pipeline / threads-1 ffmpeg pool (target >= 0.90): " + "; ".join(summary), a.json)


def make_refresh_dataset(root: Path, n: int, cfg) -> tuple[Path, Path]:
    """A WebVid CSV of ``n`` sources (copies of one small video) and version 1 of its dataset.

    One source goes through the real job step (:func:`data_prep.transform.process_source`); the
    other ``n - 1`` are byte-identical copies, so their results are that one's with their own id,
    uri, size and mtime (what the job would compute: same bytes, same probe, same clips); then the
    version is planned and written by the job's own code (tars, manifests, ``index.parquet``,
    ``LATEST``). Returns (csv, dataset)."""
    from data_prep.planning import plan_shards
    from data_prep.sources import list_sources, stat_sources
    from data_prep.transform import process_source, safe_key
    from data_prep.versions import NewVersion, finish_version, job_id, start_version

    videos = root / "videos"
    make_video(videos / "v0000000.mp4", "testsrc2", 64, 64, 16, 10)
    data = (videos / "v0000000.mp4").read_bytes()
    rows = ["videoid,contentUrl,duration,page_dir,name"]
    for i in range(n):
        if i:
            (videos / f"v{i:07d}.mp4").write_bytes(data)
        rows.append(f"{i},videos/v{i:07d}.mp4,PT1S,d,generated source {i}")
    csv = root / "list.csv"
    csv.write_text("\n".join(rows) + "\n")
    out = root / "ds"
    items = stat_sources(list_sources([str(csv)]))
    work = root / "work"
    first = process_source(items[0], cfg, str(work))
    assert first["clips"] and not first["errors"], first
    clips, sources = [], []
    for it in items:
        stem, sid = safe_key(it["id"]), it["id"]
        sources.append({**first["source"], **{k: it[k] for k in ("id", "uri", "caption", "size", "version")}})
        for c in first["clips"]:
            clips.append({**c, "source_id": sid, "uri": it["uri"], "caption": it["caption"],
                          "key": f"{stem}_{c['start']:06d}", "path": os.path.join(first["cache"], c["file"])})
    start_version(str(out), job_id(cfg, [str(csv)], None, items), "v000001")
    finish_version(NewVersion(str(out), "v000001", None, plan_shards(clips, cfg), sources, [], started=time.time(),
                              encode_s=0.0, sources_processed=len(items)), cfg, None)
    shutil.rmtree(work)
    return csv, out


def refresh(a: argparse.Namespace, work: Path) -> None:
    """A no-change ``pvq data refresh`` (whole process) of a generated dataset of ``--refresh`` sources."""
    overrides = ["clips.lengths=[16]", "buckets.scales=[[64,64]]", "shards.val_fraction=0.0"]
    cfg = load_shard_config(ROOT / "configs" / "shard" / "default.yaml", overrides)
    t = time.perf_counter()
    csv, out = make_refresh_dataset(work, a.refresh, cfg)
    t_make = time.perf_counter() - t
    pvq = shutil.which("pvq", path=str(Path(sys.executable).parent)) or "pvq"
    cmd = [pvq, "data", "refresh", "-s", str(csv), "-o", str(out), *(x for o in overrides for x in ("--set", o))]
    times = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - t)
        assert r.returncode == 0 and "nothing written" in r.stderr, r.stderr[-2000:]
    assert (out / "LATEST").read_text().strip() == "v000001"
    med = statistics.median(times)
    res = {"mode": "refresh", "sources": a.refresh, "samples": len(manifest_rows(out)), "make_dataset_s": round(t_make, 2),
           "refresh_s": [round(x, 3) for x in times], "median_refresh_s": round(med, 3),
           "cpu_load_1min": os.getloadavg()[0]}
    emit(res, f"no-change `pvq data refresh` of {a.refresh} sources: {med:.2f} s (target < 10 s)", a.json)


def manifest_rows(out: Path) -> list[dict]:
    from data_prep import manifest

    return manifest.read_table(str(out / "v000001" / "samples.parquet"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = ROOT.parent / "shared" / "media" / "videos"
    ap.add_argument("--videos", type=Path, default=default if default.is_dir() else None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clips-per-video", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sources-per-task", type=int, default=None, help="override ray.sources_per_task")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    ap.add_argument("--executor", choices=("local", "ray", "both"), default="both", help="warm: which executor(s)")
    ap.add_argument("--refresh", type=int, metavar="N", help="time a no-change refresh of N generated sources")
    ap.add_argument("--cold", action="store_true", help="time whole processes: `pvq data shard` vs plain ffmpeg")
    ap.add_argument("--cold-videos", type=int, default=11, help="--cold: every other video, at most this many")
    ap.add_argument("--cold-clips", type=int, default=4, help="--cold: clips.max_clips_per_video")
    ap.add_argument("--set", action="append", default=[], help="--cold: extra shard-config override")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pvq-bench-shard-"))
    try:
        if a.refresh:
            return refresh(a, work)
        if a.videos is None:
            a.videos = work / "videos"
            for i in range(12):
                make_video(a.videos / f"syn{i:02d}.mp4", ("testsrc2", "mandelbrot", "smptebars")[i % 3],
                           640, 360, 96 + 16 * (i % 3), 24)
        videos = sorted(str(p) for p in a.videos.glob("*.mp4"))
        if a.cold:
            return cold(a, videos, work)
        warm(a, videos, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
