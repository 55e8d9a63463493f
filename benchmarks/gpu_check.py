"""The GPU check of issue 12, part 3: one run, one JSON, at most 8 minutes of GPU time.

    python benchmarks/gpu_check.py            # on a GPU machine (benchmarks/gpu_check.sh sets it up)
    python benchmarks/gpu_check.py --smoke    # the same code paths on CPU at toy sizes (CI-sized)

Checks, each in its own child process (a fresh CUDA context, so each peak memory is its own, and a
fresh process group), each with its own time limit; one failing check is an ``error`` entry, the
others still run:

* ``bf16_grads``: the paper model in bf16 (what a DeepSpeed bf16 engine holds) on a bf16 input,
  one generator step (:func:`pvq_model.train.fit.generator_step`): native bf16 convolutions on the
  GPU (``blocks.Conv3d`` runs them in fp32 only on CPU), every gradient finite, and the cosine
  between the bf16 and the fp32 gradient of the same batch.
* ``zero3_256x16`` and ``zero3_1080p_x16``: the trainer's own ZeRO-3 step
  (:func:`pvq_model.train.setup.build_engines` + :func:`pvq_model.train.step.train_step`, nccl, one
  rank, bf16, activation checkpointing as in configs/paper.yaml) of the paper model: median step
  time after warm-up, peak GPU memory, and model FLOPs utilisation: 3 x the forward FLOPs of one
  clip (``torch.utils.flop_counter``, recomputation not counted) per step time, against the GPU's
  bf16 dense peak (a table by device name, ``--peak-tflops`` to override) and against the rate of
  an 8192^3 bf16 matmul measured in the same process.
* ``stream_1080p_x96``: :func:`pvq_model.eval.stream.reconstruct_stream` of a 1920x1080 x 96-frame
  clip (generated in memory: the GPU machine has no ffmpeg) with the paper model, the bounded-memory
  settings of benchmarks/tiled_memory.py: seconds and peak GPU memory.
* ``loader``: the trainer fed by the shard loader (``train.data_path``, the demo set sharded by
  ``benchmarks/gpu_prepare.sh`` into ``.gpu/shards``), paper model: median data-wait fraction of
  the step (the fraction of each step spent waiting for the next micro-batch).

Randomly initialised weights throughout: time, memory and finiteness do not depend on training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 125.0}
"""Dense bf16 tensor-core peaks from the vendors' data sheets (SXM parts), by a name substring."""

CHECK_LIMIT_S = {"bf16_grads": 60, "zero3_256x16": 90, "zero3_1080p_x16": 150, "stream_1080p_x96": 120,
                 "loader": 60}
"""Each child's time limit; together 480 s, the issue's 8 minutes."""

STREAM = ["inference.tile_size=512", "inference.tile_overlap=32", "inference.tile_halo=32",
          "inference.chunk_frames=32", "inference.chunk_overlap=0", "inference.chunk_halo=0",
          "inference.decode_halo=64", "inference.decode_halo_frames=16"]
"""benchmarks/tiled_memory.py's bounded-memory settings (kept equal by tests/benchmarks/test_gpu_check.py)."""


def one_rank(cfg_overrides: list[str]) -> list[str]:
    return ["train.nodes=1", "train.gpus_per_node=1", "train.world_size=1", "train.micro_batch=1",
            "train.grad_accum=1", "train.global_batch=1", *cfg_overrides]


def sizes(smoke: bool) -> dict:
    """The check's shapes: the issue's, or toy ones on the debug model for a CPU smoke run."""
    if smoke:
        return {"config": "debug.yaml", "bf16": (16, 64, 64), "zero3_256x16": (16, 64, 64),
                "zero3_1080p_x16": (16, 96, 160), "stream": (32, 96, 160), "steps": 4, "warm": 1}
    return {"config": "paper.yaml", "bf16": (16, 256, 256), "zero3_256x16": (16, 256, 256),
            "zero3_1080p_x16": (16, 1080, 1920), "stream": (96, 1080, 1920), "steps": 8, "warm": 3}


# ---------------------------------------------------------------------------------------------
# helpers run inside a child
# ---------------------------------------------------------------------------------------------
def _device():
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_gib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def _clip(t: int, h: int, w: int, seed: int = 0):
    """A smooth moving pattern with texture in [-1, 1], (1, 3, t, h, w), made on the CPU."""
    import torch

    g = torch.Generator().manual_seed(seed)
    yy = torch.linspace(0, 1, h).view(1, h, 1)
    xx = torch.linspace(0, 1, w).view(1, 1, w)
    tt = torch.arange(t, dtype=torch.float32).view(t, 1, 1) / max(t, 1)
    chans = [torch.sin(6.28 * (xx * (2 + c) + yy * (1 + c) + tt * (0.5 + c))) for c in range(3)]
    x = torch.stack(chans) * 0.7 + 0.1 * torch.randn(3, t, h, w, generator=g)
    return x.clamp(-1, 1).unsqueeze(0)


def _forward_flops(cfg, shape) -> float:
    """FLOPs of one forward pass of the generator on one clip of ``shape`` (T, H, W), bf16 autocast."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pvq_model.vae import PVQVAE

    dev = _device()
    model = PVQVAE(cfg).to(dev).eval()
    x = _clip(*shape).to(dev)
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        counter = FlopCounterMode(display=False)
        with counter:
            model(x)
    del model
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return float(counter.get_total_flops())


def _matmul_tflops() -> float | None:
    """Measured bf16 rate of an 8192^3 matmul (mean of 10 after 3 warm-ups), TFLOP/s."""
    import torch

    if not torch.cuda.is_available():
        return None
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    rate = 10 * 2 * 8192**3 / (time.perf_counter() - t0) / 1e12
    del a, b
    torch.cuda.empty_cache()
    return rate


def _peak_tflops(override: float | None) -> tuple[float | None, str]:
    import torch

    if override:
        return override, "--peak-tflops"
    if not torch.cuda.is_available():
        return None, "no GPU"
    name = torch.cuda.get_device_name()
    for key, tf in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tf, f"data sheet ({name})"
    return None, f"unknown device {name!r}: pass --peak-tflops"


# ---------------------------------------------------------------------------------------------
# the checks
# ---------------------------------------------------------------------------------------------
def check_bf16_grads(smoke: bool, **_) -> dict:
    import torch
    import torch.nn.functional as F

    from pvq_model.config import load_config
    from pvq_model.train.fit import generator_step, seed_everything
    from pvq_model.train.setup import build_loss
    from pvq_model.vae import PVQVAE

    s = sizes(smoke)
    dev = _device()
    cfg = load_config(ROOT / "configs" / s["config"], one_rank(["train.precision=bf16"]))
    seed_everything(0)
    x = _clip(*s["bf16"]).to(dev)
    mask = torch.ones(1, x.shape[2], dtype=torch.bool, device=dev)
    grads = {}
    for dtype in (torch.float32, torch.bfloat16):
        seed_everything(0)
        model = PVQVAE(cfg).to(dev)
        model.data_init(x)
        model = model.to(dtype)
        loss_fn = build_loss(cfg, dev)
        loss, _, _ = generator_step(model, loss_fn, x, mask, 0, model_input=x.to(dtype))
        loss.backward()
        grads[dtype] = {n: p.grad.detach().float().flatten() for n, p in model.named_parameters()
                        if p.grad is not None}
        del model
    g16, g32 = grads[torch.bfloat16], grads[torch.float32]
    nonfinite = [n for n, g in g16.items() if not torch.isfinite(g).all()]
    v16 = torch.cat([g16[n] for n in sorted(g16)])
    v32 = torch.cat([g32[n] for n in sorted(g16)])
    cos = float(F.cosine_similarity(v16.nan_to_num(), v32, dim=0))
    return {"device": str(dev), "shape": list(x.shape), "parameters_with_grad": len(g16),
            "nonfinite": nonfinite[:10], "finite": not nonfinite, "grad_cosine_bf16_vs_fp32": round(cos, 4),
            "native_bf16_conv": dev.type == "cuda", "ok": not nonfinite}


def _zero3(shape, smoke: bool, data_overrides: list[str], measure_flops: bool = True):
    """Steps of the trainer's own ZeRO-3 engine; returns (step times, data-wait fractions, cfg, extra)."""
    import torch

    from pvq_model.config import load_config
    from pvq_model.train.data import synthetic_batches, training_batches
    from pvq_model.train.fit import seed_everything
    from pvq_model.train.setup import build_engines, build_loss, init_distributed, lone_process_env
    from pvq_model.train.step import train_step

    s = sizes(smoke)
    t, h, w = shape
    overrides = one_rank([f"data.scales=[[{w},{h}]]", f"data.frames=[{t}]", f"train.steps={s['steps']}",
                          "train.warmup_steps=1", "train.precision=bf16", *data_overrides])
    cfg = load_config(ROOT / "configs" / s["config"], overrides)
    flops = _forward_flops(cfg, shape) if measure_flops else None
    run = Path(tempfile.mkdtemp(prefix="pvq-gpu-check-"))
    source = training_batches if cfg.train.data_path else (lambda c, r, wd, st: synthetic_batches(c, r, st))
    with lone_process_env() as lone:
        rank, world, dev = init_distributed(cfg, run, lone)
        seed_everything(cfg.train.seed)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        engines = build_engines(cfg, rank, world, source, run / "checkpoints", resume=False)
        loss_fn = build_loss(cfg, dev)
        batches = source(cfg, rank, world, 0)
        times, waits = [], []
        for step in range(s["steps"]):
            _sync()
            tic = time.perf_counter()
            res = train_step(engines, loss_fn, batches, step, cfg, dev)
            _sync()
            dt = time.perf_counter() - tic
            times.append(dt)
            waits.append(res.data_wait_s / dt)
            if not all(map(lambda v: v == v, res.parts.values())):  # NaN check
                raise RuntimeError(f"step {step}: non-finite loss parts {res.parts}")
    n_params = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in engines.g.module.parameters())
    return times[s["warm"]:], waits[s["warm"]:], cfg, {"flops_forward": flops, "parameters": n_params,
                                                        "peak_gpu_gib": _peak_gib(), "device": str(dev)}


def _zero3_check(shape, smoke: bool, peak_tflops: float | None = None) -> dict:
    times, _, cfg, extra = _zero3(shape, smoke, [])
    step_s = statistics.median(times)
    train_flops = 3 * extra["flops_forward"] * cfg.train.micro_batch * cfg.train.grad_accum
    peak, peak_source = _peak_tflops(peak_tflops)
    measured = _matmul_tflops()
    achieved = train_flops / step_s / 1e12
    return {**extra, "shape_t_h_w": list(shape), "gradient_checkpointing": cfg.model.gradient_checkpointing,
            "step_s_median": round(step_s, 4), "steps_timed": len(times), "model_tflops_per_step": train_flops / 1e12,
            "achieved_tflops": round(achieved, 2), "peak_tflops": peak, "peak_source": peak_source,
            "mfu": round(achieved / peak, 4) if peak else None,
            "matmul_tflops_measured": round(measured, 1) if measured else None,
            "mfu_vs_measured_matmul": round(achieved / measured, 4) if measured else None, "ok": True}


def check_zero3_256x16(smoke: bool, peak_tflops=None, **_) -> dict:
    return _zero3_check(sizes(smoke)["zero3_256x16"], smoke, peak_tflops)


def check_zero3_1080p_x16(smoke: bool, peak_tflops=None, **_) -> dict:
    return _zero3_check(sizes(smoke)["zero3_1080p_x16"], smoke, peak_tflops)


def check_stream_1080p_x96(smoke: bool, **_) -> dict:
    import torch

    from pvq_model.config import load_config
    from pvq_model.eval.stream import TensorSource, reconstruct_stream
    from pvq_model.vae import PVQVAE

    s = sizes(smoke)
    dev = _device()
    cfg = load_config(ROOT / "configs" / s["config"], STREAM)
    model = PVQVAE(cfg).to(dev).eval()
    x = _clip(*s["stream"])
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with torch.no_grad():
        res = reconstruct_stream(model, TensorSource(x), metrics=True)
    _sync()
    wall = time.perf_counter() - t0
    frames = x.shape[2]
    return {"device": str(dev), "shape_t_h_w": list(s["stream"]), "seconds": round(wall, 2),
            "seconds_per_frame": round(wall / frames, 4), "encode_s": round(res.encode_s, 2),
            "decode_s": round(res.decode_s, 2), "peak_gpu_gib": _peak_gib(),
            "psnr": res.metrics["psnr"] if res.metrics else None, "max_output_frames": res.max_output_frames,
            "ok": True}


def check_loader(smoke: bool, shards: str = "", **_) -> dict:
    from data_prep.loader import ShardLoader

    shards = shards or str(ROOT / ".gpu" / "shards")
    if not Path(shards, "LATEST").is_file():
        raise FileNotFoundError(f"{shards}: no shard dataset; run benchmarks/gpu_prepare.sh here first "
                                f"and carry .gpu")
    buckets = ShardLoader(shards, split="train").buckets
    w, h = (int(v) for v in buckets[0].split("x"))
    _, waits, cfg, extra = _zero3((16, h, w), smoke, [f"train.data_path={shards}",
                                                          f"train.data_buckets=[\"{buckets[0]}\"]"],
                                  measure_flops=False)
    wait = statistics.median(waits)
    return {**extra, "bucket": buckets[0], "data_wait_fraction_median": round(wait, 4),
            "data_wait_fraction_max": round(max(waits), 4), "limit": 0.10, "ok": wait < 0.10}


CHECKS = {"bf16_grads": check_bf16_grads, "zero3_256x16": check_zero3_256x16,
          "zero3_1080p_x16": check_zero3_1080p_x16, "stream_1080p_x96": check_stream_1080p_x96,
          "loader": check_loader}


# ---------------------------------------------------------------------------------------------
# the parent
# ---------------------------------------------------------------------------------------------
def run_child(name: str, args) -> dict:
    from pvq_common.env import local_env

    cmd = [sys.executable, __file__, "--child", name, *(["--smoke"] if args.smoke else [])]
    if args.peak_tflops:
        cmd += ["--peak-tflops", str(args.peak_tflops)]
    if args.shards:
        cmd += ["--shards", args.shards]
    limit = CHECK_LIMIT_S[name] * (4 if args.smoke else 1)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, cwd=ROOT, env=local_env())
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"over its {limit} s limit", "wall_s": round(time.perf_counter() - t0, 1)}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{\"check\"")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
        return {"ok": False, "error": f"exit {proc.returncode}: " + " | ".join(tail),
                "wall_s": round(time.perf_counter() - t0, 1)}
    out = json.loads(lines[-1])["result"]
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="debug model, toy sizes, CPU allowed")
    ap.add_argument("--checks", default=",".join(CHECKS), help="comma-separated subset of " + ", ".join(CHECKS))
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's bf16 dense peak (default: table)")
    ap.add_argument("--shards", default="", help="shard dataset for the loader check (default .gpu/shards)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        result = CHECKS[args.child](smoke=args.smoke, peak_tflops=args.peak_tflops, shards=args.shards)
        print(json.dumps({"check": args.child, "result": result}), flush=True)
        return 0
    import torch

    names = [n.strip() for n in args.checks.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        ap.error(f"unknown checks {unknown}; choose from {list(CHECKS)}")
    if not args.smoke and not torch.cuda.is_available():
        print(json.dumps({"ok": False, "error": "no CUDA device (use --smoke for the CPU code-path run)"}))
        return 2
    t0 = time.perf_counter()
    report = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "smoke": args.smoke, "checks": {}}
    for name in names:
        print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
        report["checks"][name] = run_child(name, args)
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    report["ok"] = all(c.get("ok") for c in report["checks"].values())
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
