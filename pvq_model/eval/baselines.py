"""Peer baselines: evaluate a diffusers video autoencoder (e.g. ``AutoencoderKLCogVideoX``) on the same
data and with the same metrics as :func:`pvq_model.eval.evaluate.evaluate`, so the report can place PVQ-VAE
beside it (``build_report([pvq_eval, baseline_eval], ...)``).

The model is loaded from a local diffusers directory (``config.json`` + weights; nothing is
downloaded). Each clip is reconstructed whole (encode -> latent mode -> decode), padded to what the
model needs - ``k * temporal_compression_ratio + 1`` frames (last frame repeated) and a multiple of
the spatial factor (edge replicated) - and cropped back before the metrics. Results are written in
the evaluation format (``clips.parquet`` + ``summary.json``); the codebook section is empty (a KL
autoencoder has no codebook) and LPIPS is absent unless an LPIPS module is given.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..metrics import clip_metrics
from .evaluate import EvalResult, is_shard_dataset, iter_clips
from .summary import EvaluationError, aggregate, group, write_results


def load_diffusers_autoencoder(path: str | Path, class_name: str | None = None, dtype=torch.float32):
    """A diffusers autoencoder from a local directory; the class comes from ``config.json``'s
    ``_class_name`` unless ``class_name`` is given."""
    import diffusers

    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise EvaluationError(f"{path}: not a diffusers model directory (no config.json); save one with "
                              f"model.save_pretrained(dir)")
    name = class_name or json.loads(cfg_file.read_text()).get("_class_name")
    cls = getattr(diffusers, str(name), None)
    if cls is None or not hasattr(cls, "encode"):
        raise EvaluationError(f"{cfg_file}: _class_name {name!r} is not a diffusers autoencoder")
    return cls.from_pretrained(path, torch_dtype=dtype).eval()


def _factors(model) -> tuple[int, int]:
    """(temporal compression, spatial factor) of a diffusers video autoencoder."""
    cfg = model.config
    temporal = int(getattr(cfg, "temporal_compression_ratio", 1) or 1)
    spatial = 2 ** (len(getattr(cfg, "block_out_channels", [0])) - 1)
    return temporal, spatial


@torch.no_grad()
def reconstruct(model, x: torch.Tensor) -> torch.Tensor:
    """(1, C, T, H, W) in [-1, 1] -> its reconstruction, same shape (padding added and removed)."""
    t, h, w = x.shape[2:]
    temporal, spatial = _factors(model)
    pad_t = 0 if temporal <= 1 else (-(t - 1)) % temporal
    y = torch.cat([x, x[:, :, -1:].expand(-1, -1, pad_t, -1, -1)], 2) if pad_t else x
    pad_h, pad_w = (-h) % spatial, (-w) % spatial
    if pad_h or pad_w:
        y = F.pad(y, (0, pad_w, 0, pad_h, 0, 0), mode="replicate")
    dtype = next(model.parameters()).dtype
    z = model.encode(y.to(dtype)).latent_dist.mode()
    out = model.decode(z).sample.float()
    return out[:, :, :t, :h, :w].clamp(-1, 1)


def evaluate_baseline(model_path: str | Path, data: str | Path, out: str | Path | None = None, *,
                      split: str = "val", version: str | None = None, max_frames: int | None = None,
                      limit: int | None = None, class_name: str | None = None, lpips=None,
                      name: str | None = None) -> EvalResult:
    """Evaluate a diffusers autoencoder on ``data`` (shard dataset or folder) like ``evaluate``."""
    from data_prep import manifest

    model = load_diffusers_autoencoder(model_path, class_name)
    data_version = (version or manifest.latest_version(str(data))) if is_shard_dataset(str(data)) else None
    rows, enc_dec = [], 0.0
    torch.manual_seed(0)
    for clip in iter_clips(data, split, data_version, max_frames, limit):
        t0 = time.perf_counter()
        recon = reconstruct(model, clip.video)
        dt = time.perf_counter() - t0
        enc_dec += dt
        m = clip_metrics(clip.video, recon, clip.mask, lpips)
        rows.append({"key": clip.key, "kind": clip.kind, "bucket": clip.bucket, "frames": clip.frames,
                     "length": int(clip.video.shape[2]), "psnr": m.psnr[0], "ssim": m.ssim[0],
                     "lpips": m.lpips[0] if m.lpips is not None else None, "psnr_frames": m.psnr_frames[0],
                     "encode_s": dt, "decode_s": 0.0})
    if not rows:
        raise EvaluationError(f"{data}: no clips to evaluate")
    cfg = model.config
    summary = {"model": str(model_path), "model_dir": str(model_path), "data": str(data), "split": split,
               "data_version": data_version, "tiled": False,
               "method_info": {"method": name or type(model).__name__, "codebook_size": "continuous",
                               "dim": int(getattr(cfg, "latent_channels", 0))},
               "overall": aggregate(rows), "images": aggregate([r for r in rows if r["kind"] == "image"]),
               "videos": aggregate([r for r in rows if r["kind"] == "video"]),
               "by_bucket": group(rows, "bucket"), "by_frames": group(rows, "frames"), "codebook": {},
               "lpips_available": lpips is not None,
               "timing": {"encode_s": enc_dec, "decode_s": 0.0, "note": "encode_s is encode + decode"}}
    if out is not None:
        write_results(rows, summary, out)
    return EvalResult(summary, rows, Path(out) if out is not None else None)
