"""The ``pvq`` command line."""

from __future__ import annotations

import time
from pathlib import Path

import typer
import yaml
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="PVQ-VAE: pyramidal vector-quantized video autoencoder.", no_args_is_help=True,
                  add_completion=False)
console = Console()

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "debug.yaml"


def _load_model(config: Path | None, checkpoint: Path | None, overrides: list[str]):
    import torch

    from .config import load_config
    from .vae import PVQVAE

    if checkpoint is not None:
        return PVQVAE.from_pretrained(checkpoint)
    cfg = load_config(config or DEFAULT_CONFIG, overrides)
    torch.manual_seed(cfg.train.seed)
    console.print(f"[yellow]no --checkpoint: using randomly initialised weights of {config or DEFAULT_CONFIG}[/]")
    return PVQVAE(cfg).eval()


def _metrics_table(title: str, rows: list[tuple]) -> Table:
    table = Table(title=title)
    for col in ("clip", "frames", "size", "PSNR (dB)", "SSIM", "LPIPS", "seconds"):
        table.add_column(col, justify="right" if col != "clip" else "left")
    for r in rows:
        table.add_row(*[str(v) for v in r])
    return table


def reconstruct_file(model, src: Path, dst: Path, max_frames: int | None, tiled: bool):
    """Reconstruct one video/image file to ``dst`` (mp4); returns (row for the table, metrics)."""
    import torch

    from .metrics import clip_metrics
    from .perceptual import build_lpips
    from .video_io import read_video, to_tensor, to_uint8, write_video

    frames, fps = read_video(src, max_frames)
    x = to_tensor(frames)
    start = time.perf_counter()
    with torch.no_grad():
        recon, _ = model.reconstruct(x, tiled=tiled)
    seconds = time.perf_counter() - start
    write_video(dst, to_uint8(recon), fps=fps)
    m = clip_metrics(x, recon, lpips=build_lpips(model.cfg.lpips))
    lp = f"{m.lpips[0]:.4f}" if m.lpips is not None else "absent"
    row = (src.name, x.shape[2], f"{x.shape[4]}x{x.shape[3]}", f"{m.psnr[0]:.2f}", f"{m.ssim[0]:.4f}", lp, f"{seconds:.1f}")
    return row, m


@app.command()
def reconstruct(
    inp: Path = typer.Argument(..., help="input video or image"),
    out: Path = typer.Argument(..., help="output mp4"),
    config: Path = typer.Option(None, help="config YAML (default configs/debug.yaml) when no checkpoint"),
    checkpoint: Path = typer.Option(None, help="directory from save_pretrained / training export"),
    max_frames: int = typer.Option(96, help="decode at most this many frames (0 = all)"),
    untiled: bool = typer.Option(False, help="run the whole clip at once instead of tiles/chunks"),
    set_: list[str] = typer.Option([], "--set", help="config override key.path=value"),
):
    """Encode and decode a clip, write the reconstruction, print PSNR / SSIM / LPIPS."""
    from .config import ConfigError
    from .video_io import MediaError

    try:
        model = _load_model(config, checkpoint, set_)
        row, _ = reconstruct_file(model, inp, out, max_frames or None, tiled=not untiled)
    except (ConfigError, MediaError, FileNotFoundError) as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    console.print(_metrics_table(f"reconstruction -> {out}", [row]))


@app.command()
def info(
    config: Path = typer.Option(DEFAULT_CONFIG, help="config YAML"),
    set_: list[str] = typer.Option([], "--set", help="config override key.path=value"),
):
    """Parameter counts and the latent shape for every paper resolution and frame count."""
    import math

    import torch

    from .config import PAPER_FRAMES, PAPER_SCALES, load_config
    from .vae import PVQVAE

    cfg = load_config(config, set_)
    with torch.device("meta"):
        model = PVQVAE(cfg)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    console.print(f"{cfg.name}: encoder {n(model.encoder):,}  quantizer {n(model.quantizer):,} "
                  f"({cfg.quantizer.type}, {cfg.quantizer.codebook_size:,} codes x dim {cfg.quantizer.dim})  "
                  f"decoder {n(model.decoder):,} parameters")
    table = Table(title="latent (t x h x w x d) per input (W x H, T)")
    table.add_column("W x H")
    for t in PAPER_FRAMES:
        table.add_column(f"T={t}")
    for w, h in PAPER_SCALES:
        table.add_row(f"{w}x{h}", *[f"{t // 16}x{math.ceil(h / 32)}x{math.ceil(w / 32)}x{cfg.model.latent_dim}"
                                     for t in PAPER_FRAMES])
    console.print(table)


@app.command("config")
def show_config(
    config: Path = typer.Argument(..., help="config YAML"),
    set_: list[str] = typer.Option([], "--set", help="config override key.path=value"),
):
    """Print the resolved, validated config."""
    from .config import ConfigError, load_config

    try:
        cfg = load_config(config, set_)
    except ConfigError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    console.print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


@app.command()
def demo(
    out: Path = typer.Option(Path(".demo"), help="working directory"),
    steps: int = typer.Option(300, help="CPU training steps of the debug model"),
):
    """Generate clips, reconstruct them with the untrained and a briefly fitted debug model."""
    import torch
    from rich.progress import Progress

    from .config import load_config
    from .demo import write_demo_clips
    from .fit import fit, seed_everything
    from .video_io import read_video, to_tensor
    from .vae import PVQVAE

    cfg = load_config(DEFAULT_CONFIG)
    seed_everything(cfg.train.seed)
    clips = write_demo_clips(out / "clips")
    console.print(f"wrote {len(clips)} synthetic clips to {out / 'clips'}")
    model = PVQVAE(cfg).eval()
    before = [reconstruct_file(model, c, out / "untrained" / c.name, None, True)[0] for c in clips]
    console.print(_metrics_table("untrained debug model", before))
    tensors = [to_tensor(read_video(c)[0]) for c in clips]
    with Progress(console=console) as bar:
        task = bar.add_task("fitting the debug model", total=steps)
        losses = fit(model, tensors, steps, callback=lambda s, parts: bar.advance(task))
    console.print(f"loss {losses[0]:.4f} -> {sum(losses[-10:]) / 10:.4f} (mean of the last 10 steps)")
    ckpt = model.save_pretrained(out / "checkpoint")
    after = [reconstruct_file(model, c, out / "fitted" / c.name, None, True)[0] for c in clips]
    console.print(_metrics_table(f"debug model after {steps} steps (checkpoint: {ckpt})", after))
    console.print(f"try: pvq reconstruct {clips[1]} {out / 'again.mp4'} --checkpoint {ckpt}")
    del torch


if __name__ == "__main__":
    app()
