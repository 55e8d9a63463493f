"""Loader throughput: ShardLoader samples/s vs a raw decord decode of the same clips.

On the same clips of one bucket: the baseline decodes each clip's mp4 bytes (already in memory) with
decord's usual call, ``VideoReader(...).get_batch(...).asnumpy()``; the loader reads the tars,
decodes with decord (taking its buffer through DLPack instead of ``asnumpy``'s copy), converts to
float in [-1, 1], pads, masks and batches. Both go ``--passes`` times over the clips, so the
numbers are steady-state throughput (a training loader runs for hours), not start-up. Measured in
one process (loader without workers vs a decord loop) and with N processes (DataLoader with N
workers vs decord over a pool of N whose frames, like the loader's batches, travel back to the main
process). Prints the ratios (target >= 0.8).

    python benchmarks/loader_throughput.py [--clips 48] [--passes 4] [--size 256] [--frames 16] [--batch 4]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _bench import emit  # noqa: E402
from pvq_common.env import missing_local_env  # noqa: E402

os.environ.update(missing_local_env())  # loopback only, no usage stats: before Ray starts


def _decord_decode(args: tuple):
    """(T, H, W, C) uint8 frames of one clip; from a pool they travel back to the caller, as a loader's must."""
    import decord

    data, frames = args
    vr = decord.VideoReader(io.BytesIO(data), num_threads=1)
    return vr.get_batch(list(range(frames))).asnumpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=48)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--passes", type=int, default=4, help="passes over the clips per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers vs a decord process pool")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    import decord

    from data_prep import manifest
    from data_prep.config import load_shard_config
    from data_prep.loader import make_loader
    from data_prep.samples import make_video
    from data_prep.shard import shard

    work = Path(tempfile.mkdtemp(prefix="pvq-bench-loader-"))
    try:
        per_video = 4
        for i in range(-(-a.clips // per_video)):
            make_video(work / "src" / f"v{i:03d}.mp4", ("testsrc2", "mandelbrot", "smptebars")[i % 3],
                       a.size, a.size, per_video * a.frames, 24)
        cfg = load_shard_config(ROOT / "configs" / "shard" / "default.yaml", [
            f"clips.lengths=[{a.frames}]", f"clips.max_clips_per_video={per_video}",
            f"buckets.scales=[[{a.size},{a.size}]]", "shards.val_fraction=0.0", "shards.maxcount=16"])
        out = str(work / "ds")
        shard([str(work / "src")], out, cfg)
        import ray

        ray.shutdown()  # measure the loader alone, as in a training process
        v = manifest.read_version(out)
        clips = []
        for row in v["shards"]:
            with tarfile.open(os.path.join(out, row["shard"])) as tf:
                clips += [tf.extractfile(m).read() for m in tf.getmembers() if m.name.endswith(".mp4")]
        n = len(clips) - len(clips) % a.batch
        steps = a.passes * n // a.batch
        work_list = clips[:n] * a.passes

        def decord_run(workers: int) -> float:
            t = time.perf_counter()
            if workers <= 1:
                for data in work_list:
                    _decord_decode((data, a.frames))
            else:
                with ProcessPoolExecutor(workers) as pool:
                    list(pool.map(_decord_decode, [(d, a.frames) for d in work_list], chunksize=4))
            return time.perf_counter() - t

        def loader_run(workers: int) -> float:
            t = time.perf_counter()
            got = 0
            for b in make_loader(out, num_workers=workers, batch_size=a.batch, frames=[a.frames], steps=steps, seed=0):
                got += b["video"].shape[0]
            assert got == len(work_list)
            return time.perf_counter() - t

        res = {"clips": n, "passes": a.passes, "size": a.size, "frames": a.frames, "batch": a.batch}
        for workers in (0, a.workers):
            decord_run(workers), loader_run(workers)  # warm-up (imports, page cache)
            t_dec, t_load = [], []
            for _ in range(a.repeats):  # alternate, so both see the same machine load
                t_dec.append(decord_run(workers))
                t_load.append(loader_run(workers))
            dec, load = statistics.median(t_dec), statistics.median(t_load)
            tag = "single_process" if workers == 0 else f"{workers}_workers"
            m = len(work_list)
            res[tag] = {"decord_samples_per_s": round(m / dec, 2), "loader_samples_per_s": round(m / load, 2),
                        "ratio": round(dec / load, 3)}
        res["cpu_load_1min"] = os.getloadavg()[0]
        emit(res, "\n".join(f"loader / raw decord ({tag.replace('_', ' ')}) = {res[tag]['ratio']:.2f} (target >= 0.80)"
                             for tag in ("single_process", f"{a.workers}_workers")), a.json)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
