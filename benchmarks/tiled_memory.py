"""Peak memory and speed of streaming reconstruction against clip size (issue 12, part 1).

Generates its own clips with ffmpeg (``testsrc2``, H.264, no network), runs ``pvq reconstruct`` on
each in a child process and prints, per case, the child's peak RSS (``os.wait4``: the largest
process of the child's tree, the Python process or its ffmpeg children) and seconds per frame,
against the issue's bars:

* 1080p x 96 frames, debug model: peak RSS <= 4 GiB;
* 4K x 96 frames, debug model: <= 6 GiB;
* 1080p x 96 frames, paper model: <= 8 GiB;
* flat in the number of frames: the 384-frame peak within 5 % (and 128 MiB) of the 96-frame one.

Every case runs with the bounded-memory settings :data:`STREAM` (plus the case's own); ``--set``
adds overrides to every case; ``--cases`` picks cases by name. The README's numbers::

    nice -n 19 python benchmarks/tiled_memory.py --cases debug-1080p-96,debug-540p-96,debug-270p-96,debug-270p-384
    nice -n 19 python benchmarks/tiled_memory.py --seams --checkpoint runs/fidelity-cpu-l8-1600/export
    python benchmarks/tiled_memory.py --cases debug-4k-96
    python benchmarks/tiled_memory.py --cases paper-1080p-96   # 256-px tiles, ~70 min on 2 cores

``--windows`` measures instead the peak RSS of the largest encode window and the largest decode
window of a 1920x1080x96 clip alone, each in a fresh child process (model weights included), for
models whose full run is long on CPU (the paper model at 256-px tiles: ~270 windows of ~18 s on
the 2 cores alone)::

    nice -n 19 python benchmarks/tiled_memory.py --windows debug,paper --set inference.tile_size=256

Randomly initialised weights are used (the memory and time do not depend on the weights);
``--checkpoint`` runs a trained export instead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GiB = 2**30

STREAM = ["inference.tile_size=512", "inference.tile_overlap=32", "inference.tile_halo=32",
          "inference.chunk_frames=32", "inference.chunk_overlap=0", "inference.chunk_halo=0",
          "inference.decode_halo=64", "inference.decode_halo_frames=16"]
"""The bounded-memory inference settings measured here (the configs' own halos are the exact-decode
ones: debug.yaml's decode window spans 96 frames x 896 px and grows with the clip up to 224 frames).
Encode: 32-frame chunks without temporal halo (the CPU recipes train on 16-frame clips), 512-px
tiles with a 32-px halo; decode: 1 latent frame (16 frames) and 64 px of context around each chunk."""
CHUNK16 = ["inference.chunk_frames=16"]
"""4K: 16-frame chunks halve the one chunk of fp32 output that is held (3840x2160x16: 1.6 GB)."""

PAPER_TILE = ["inference.tile_size=256"]
"""The paper model's windows at 512-px tiles would hold ~5x the memory of its 256-px ones (one 32x320^2
encode window: 4.95 GiB, ``--windows paper --set inference.tile_size=256``)."""

CASES = {  # name: (config, width, height, frames, bar in GiB or None, extra overrides)
    "debug-1080p-96": ("debug", 1920, 1080, 96, 4.0, []),
    "debug-1080p-384": ("debug", 1920, 1080, 384, None, []),  # flatness against debug-1080p-96
    "debug-4k-96": ("debug", 3840, 2160, 96, 6.0, CHUNK16),
    "debug-4k-48": ("debug", 3840, 2160, 48, 6.0, CHUNK16),  # the 96-frame case's windows, half the time
    "paper-1080p-96": ("paper", 1920, 1080, 96, 8.0, PAPER_TILE),
    "paper-1080p-32": ("paper", 1920, 1080, 32, 8.0, PAPER_TILE),  # one chunk of the 96-frame case, a third of the time
    "debug-540p-96": ("debug", 960, 540, 96, None, []),
    "debug-540p-384": ("debug", 960, 540, 384, None, []),  # flatness against debug-540p-96
    "debug-270p-96": ("debug", 480, 270, 96, None, []),
    "debug-270p-384": ("debug", 480, 270, 384, None, []),  # flatness against debug-270p-96
}
FLAT = {"debug-1080p-384": "debug-1080p-96", "debug-540p-384": "debug-540p-96", "debug-270p-384": "debug-270p-96"}
FLAT_TOLERANCE = (0.05, 128 * 2**20)
"""A longer clip's peak may exceed the shorter one's by at most 5 % and 128 MiB."""


def make_clip(path: Path, width: int, height: int, frames: int) -> Path:
    """A moving test pattern (ffmpeg testsrc2) of the given size, H.264 yuv420p, cached by name."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.mp4")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size={width}x{height}:rate=25", "-frames:v", str(frames), "-c:v", "libx264",
                    "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", str(tmp)], check=True)
    tmp.rename(path)
    return path


def run_case(name: str, work: Path, overrides: list[str], checkpoint: str | None) -> dict:
    config, w, h, frames, bar, extra = CASES[name]
    overrides = [*STREAM, *extra, *overrides]
    clip = make_clip(work / f"testsrc2_{w}x{h}_{frames}.mp4", w, h, frames)
    out = work / f"{name}_recon.mp4"
    cmd = [sys.executable, "-m", "flows.cli", "reconstruct", str(clip), str(out),
           "--max-frames", str(frames)]
    cmd += ["--checkpoint", checkpoint] if checkpoint else ["--config", str(ROOT / "configs" / f"{config}.yaml")]
    for o in overrides:
        cmd += ["--set", o]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    log = proc.stdout.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    rss = usage.ru_maxrss * 1024  # KiB on Linux
    row = {"case": name, "config": config, "size": f"{w}x{h}", "frames": frames, "rc": proc.returncode,
           "peak_rss_gib": rss / GiB, "seconds": seconds, "s_per_frame": seconds / frames,
           "bar_gib": bar, "overrides": overrides, "checkpoint": checkpoint}
    if proc.returncode != 0:
        row["log_tail"] = log[-2000:]
    row["met"] = None if bar is None else (proc.returncode == 0 and rss <= bar * GiB)
    return row


WINDOW_CLIP = (96, 1088, 1920)
"""(T, H, W) of the clip whose largest windows ``--windows`` measures: 1080p x 96, padded to the grid."""


def _window_child(which: str, config: str, overrides: list[str]) -> None:
    """In a child process: run the model's largest ``which`` (enc / dec) window of :data:`WINDOW_CLIP`
    once and print one json line with its shape, seconds and the process's peak RSS."""
    import resource

    import torch

    sys.path.insert(0, str(ROOT))
    from pvq_model.config import load_config
    from pvq_model.tiling import largest_window
    from pvq_model.vae import PVQVAE

    torch.manual_seed(0)
    model = PVQVAE(load_config(ROOT / "configs" / f"{config}.yaml", overrides)).eval()
    enc, dec = model._specs()
    if which == "enc":
        x = torch.rand(1, 3, *largest_window(WINDOW_CLIP, enc)) * 2 - 1
        fn = lambda v: model.encoder(v).latent  # noqa: E731
    else:
        latent = tuple(n // f for n, f in zip(WINDOW_CLIP, model.factor))
        x = torch.randn(1, model.cfg.model.latent_dim, *largest_window(latent, dec))
        fn = model.decoder
    start = time.perf_counter()
    with torch.no_grad():
        y = fn(x)
    print(json.dumps({"window": which, "config": config, "input": list(x.shape[2:]), "output": list(y.shape[2:]),
                      "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                      "seconds": time.perf_counter() - start,
                      "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB}))


def windows(configs: list[str], overrides: list[str]) -> list[dict]:
    rows = []
    for config in configs:
        for which in ("enc", "dec"):
            cmd = [sys.executable, __file__, "--window-child", which, "--config-name", config,
                   *[a for o in [*STREAM, *overrides] for a in ("--set", o)]]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{config} {which} window failed:\n{proc.stderr[-2000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"{config:<6} {which} window {'x'.join(map(str, r['input']))} -> {'x'.join(map(str, r['output']))}"
                  f"  ({r['params_m']:.1f} M params)  peak RSS {r['peak_rss_gib']:5.2f} GiB  {r['seconds']:6.1f} s",
                  flush=True)
    return rows


SEAM_CLIPS = ("arm_wrestling_340x256.mp4", "pool_cleaning_340x256.mp4", "teddy_hands_368x480.mp4",
              "cat_sofa_368x480.mp4")
"""Real 87-96-frame clips of ../shared/media/videos at native size (small: the seams are temporal)."""
SEAM_BAR_DB = 0.1


def seams(checkpoint: str, overrides: list[str], media: Path) -> list[dict]:
    """Per-frame PSNR of a trained export at the temporal chunk borders against the interior frames
    (``seam_dip``, plain and at the same phase of the 16-frame latent period), and against decoding
    the clip whole in time (the same model with one chunk spanning the clip)."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from pvq_model.config import load_config
    from pvq_model.eval.stream import VideoFileSource, chunk_borders, reconstruct_stream, seam_dip
    from pvq_model.vae import PVQVAE

    torch.set_grad_enabled(False)
    weights = PVQVAE.from_pretrained(checkpoint).state_dict()

    def build(extra: list[str]) -> PVQVAE:
        m = PVQVAE(load_config(Path(checkpoint) / "config.yaml", [*overrides, *extra]))
        m.load_state_dict(weights)
        return m.eval()

    chunked, whole = build([]), build(["inference.chunk_frames=112", "inference.decode_halo_frames=112",
                                       "inference.chunk_overlap=0", "inference.chunk_halo=0"])
    rows = []
    for name in SEAM_CLIPS:
        path = media / name
        if not path.is_file():
            continue
        a = reconstruct_stream(chunked, VideoFileSource(path)).metrics["psnr_frames"]
        b = reconstruct_stream(whole, VideoFileSource(path)).metrics["psnr_frames"]
        borders = chunk_borders(chunked, len(a))
        at = sorted({f for x in borders for f in (x - 1, x)})
        diff = np.array(b) - np.array(a)  # loss of chunking per frame
        inner = [i for i in range(len(a)) if i not in at]
        rows.append({"clip": name, "frames": len(a), "borders": borders, "psnr": float(np.mean(a)),
                     "psnr_whole": float(np.mean(b)), "dip_db": seam_dip(a, borders),
                     "dip_phase_db": seam_dip(a, borders, chunked.factor[0]),
                     "border_loss_vs_whole_db": float(diff[at].mean() - diff[inner].mean()) if at else None})
        r = rows[-1]
        print(f"{name:<28} {r['frames']:>3} frames  borders {borders}  PSNR {r['psnr']:.2f} (whole in time "
              f"{r['psnr_whole']:.2f})  dip at borders {r['dip_db']:+.3f} dB, same phase {r['dip_phase_db']:+.3f} dB, "
              f"extra loss at borders vs whole {r['border_loss_vs_whole_db']:+.3f} dB", flush=True)
    if rows:
        worst = max(r["dip_phase_db"] for r in rows)
        print(f"seams: worst same-phase dip {worst:+.3f} dB (bar <= {SEAM_BAR_DB} dB: "
              f"{'met' if worst <= SEAM_BAR_DB else 'NOT met'}); mean plain dip "
              f"{np.mean([r['dip_db'] for r in rows]):+.3f} dB")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="debug-1080p-96,debug-1080p-384,debug-4k-96,paper-1080p-96",
                   help=f"comma-separated, from {', '.join(CASES)}")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override for every case")
    p.add_argument("--checkpoint", default=None, help="a trained export instead of random weights")
    p.add_argument("--work", default=str(ROOT / ".cache" / "tiled_memory"), help="clips and outputs")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--seams", action="store_true",
                   help="instead: the chunk-border PSNR check of the trained --checkpoint on real clips")
    p.add_argument("--media", default=str(ROOT.parent / "shared" / "media" / "videos"))
    p.add_argument("--windows", default=None, metavar="CONFIGS",
                   help="instead: the largest encode and decode window of 1080p x 96 alone, per config (debug,paper)")
    p.add_argument("--window-child", choices=("enc", "dec"), help=argparse.SUPPRESS)
    p.add_argument("--config-name", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.window_child:
        _window_child(args.window_child, args.config_name, args.overrides)
        return 0
    if args.windows:
        rows = windows([c.strip() for c in args.windows.split(",") if c.strip()], args.overrides)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
        return 0
    work = Path(args.work)
    if args.seams:
        if not args.checkpoint:
            p.error("--seams needs --checkpoint (a trained export, e.g. runs/fidelity-cpu-l8-1600/export)")
        rows = seams(args.checkpoint, [*STREAM, *args.overrides], Path(args.media))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
        if not rows:
            print(f"no seam clips under {args.media}", file=sys.stderr)
            return 2
        return 0 if max(r["dip_phase_db"] for r in rows) <= SEAM_BAR_DB else 1
    rows = {}
    for name in [c.strip() for c in args.cases.split(",") if c.strip()]:
        if name not in CASES:
            p.error(f"unknown case {name!r}; known: {', '.join(CASES)}")
        rows[name] = r = run_case(name, work, args.overrides, args.checkpoint)
        if name in FLAT and FLAT[name] in rows:
            ref = rows[FLAT[name]]["peak_rss_gib"] * GiB
            limit = ref + max(FLAT_TOLERANCE[0] * ref, FLAT_TOLERANCE[1])
            r["flat_against"], r["ratio"] = FLAT[name], r["peak_rss_gib"] * GiB / ref
            r["met"] = r["rc"] == 0 and r["peak_rss_gib"] * GiB <= limit
        bar = (f"<= {r['bar_gib']:.0f} GiB" if r["bar_gib"] else
               f"flat vs {r['flat_against']} (x{r['ratio']:.3f})" if "flat_against" in r else "-")
        verdict = {True: "met", False: "NOT met", None: ""}[r["met"]]
        print(f"{name:<18} {r['size']:>10} x {r['frames']:>3}  peak RSS {r['peak_rss_gib']:6.2f} GiB  "
              f"{r['s_per_frame']:6.2f} s/frame  rc {r['rc']}  bar {bar} {verdict}", flush=True)
        if r["rc"] != 0:
            print(r["log_tail"], file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(list(rows.values()), indent=2))
    return 0 if all(r["met"] is not False for r in rows.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
