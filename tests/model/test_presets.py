"""Compression presets (configs/presets/): they load, keep the paper recipe apart from the sampling
factors, run at their compression, decode tiled exactly, and report the right rates."""

import math

import pytest
import torch
from typer.testing import CliRunner

from flows.cli import app
from pvq_common.config import read_yaml
from pvq_model.config import load_config
from pvq_model.decoder import Decoder
from pvq_model.rates import bits_per_pixel, bits_per_token, compression_ratio, latent_shape, token_grids
from pvq_model.vae import PVQVAE

PRESETS = {  # file -> (compression, base)
    "paper_4x8x8": ((4, 8, 8), "paper.yaml"),
    "paper_8x16x16": ((8, 16, 16), "paper.yaml"),
    "debug_4x8x8": ((4, 8, 8), "debug.yaml"),
    "debug_8x16x16": ((8, 16, 16), "debug.yaml"),
}
DEBUG = ["debug_4x8x8", "debug_8x16x16"]


def preset(configs, name, *overrides):
    return load_config(configs / "presets" / f"{name}.yaml", list(overrides))


def _flatten(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_at_its_compression_and_changes_only_the_sampling(configs, name):
    factors, base = PRESETS[name]
    cfg = preset(configs, name)
    assert cfg.model.compression == factors
    assert compression_ratio(cfg) == math.prod(factors) * 3 / 16
    assert cfg.model.latent_dim == 16 and cfg.quantizer.type == "pvq"
    # a config file, not a fork: apart from the sampling flags and what follows from them (decoder
    # projection, FFT placement, inference halos), every value is the base recipe's
    allowed = ("name", "model.encoder.temporal_downsample", "model.encoder.spatial_downsample",
               "model.encoder.fft_blocks", "model.encoder.fft_modes", "model.decoder.", "inference.")
    mine, theirs = dict(_flatten(cfg.to_dict())), dict(_flatten(load_config(configs / base).to_dict()))
    changed = {k for k in mine if mine[k] != theirs[k]}
    assert changed and all(k.startswith(allowed) for k in changed), changed
    assert read_yaml(configs / "presets" / f"{name}.yaml")["name"] != theirs["name"]


def test_paper_compression_is_unchanged(configs):
    cfg = load_config(configs / "paper.yaml")
    assert cfg.model.compression == (16, 32, 32)
    assert cfg.model.decoder.out_patch == [2, 4, 4]
    assert compression_ratio(cfg) == 16 * 32 * 32 * 3 / 16 == 3072
    assert latent_shape(cfg, 96, 1080, 1920) == (6, 34, 60, 16)


@pytest.mark.parametrize("name", DEBUG)
def test_latent_is_input_over_factors_and_round_trip_keeps_shape(configs, name):
    torch.manual_seed(0)
    cfg = preset(configs, name)
    model = PVQVAE(cfg).eval()
    ft, fh, fw = cfg.model.compression
    t, h, w = 20, 36, 72  # not multiples of either preset's factors: the clip is padded, then cropped
    x = torch.rand(1, 3, t, h, w) * 2 - 1
    with torch.no_grad():
        out = model(x)
        back = model.detokenize(out.quant.indices, (t, h, w))
    expected = (math.ceil(t / ft), math.ceil(h / fh), math.ceil(w / fw))
    assert out.latent.shape == (1, 16, *expected) and latent_shape(cfg, t, h, w) == (*expected, 16)
    assert out.recon.shape == back.shape == x.shape and torch.isfinite(out.recon).all()
    assert torch.allclose(back, out.recon, atol=1e-5)  # the tokens carry the whole reconstruction
    # the rates count exactly the tokens the quantizer emits, level by level
    assert [tuple(i.shape[1:]) for i in out.quant.indices] == token_grids(cfg, t, h, w)


def _trained_like(module: torch.nn.Module) -> torch.nn.Module:
    """Re-draw every convolution (He-normal weights, so far neighbours still matter): a new model
    starts with its residual convolutions at zero (it *is* its pointwise shortcut path), a trained
    one does not, and the halos must hold for the trained one."""
    for m in module.modules():
        if isinstance(m, torch.nn.Conv3d):
            torch.nn.init.kaiming_normal_(m.weight)
    return module


def _measured_radius(cfg, axis: int, n: int) -> int:
    """Receptive radius of the config's decoder along ``axis`` (0 = t, 1 = h) in latent positions:
    how far from a latent cell the latents reach that its output pixels depend on (the gradient's
    support). Widths do not change it, so a narrow copy of the decoder is measured."""
    m = cfg.model
    m.decoder.channels, m.latent_dim = [4, 4, 4], 4
    torch.manual_seed(0)
    dec = _trained_like(Decoder(m))
    shape = [1, 1, 1]
    shape[axis] = n
    z = torch.randn(1, 4, *shape, requires_grad=True)
    y = dec(z)
    c, f = n // 2, m.compression[axis]
    cell = [slice(None)] * 5
    cell[2 + axis] = slice(c * f, (c + 1) * f)
    block = y[tuple(cell)]
    (block * torch.randn(block.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    support = (z.grad.abs().sum((0, 1)).flatten() > 0).nonzero().flatten()
    return int(max(c - support.min(), support.max() - c))


@pytest.mark.parametrize("name", PRESETS)
def test_decode_halos_cover_the_decoders_receptive_radius(configs, name):
    cfg = preset(configs, name)
    ft, fh, _ = cfg.model.compression
    halo_t, halo_h = cfg.inference.decode_halo_frames // ft, cfg.inference.decode_halo // fh
    # a window of 2 * halo + 3 cells shows a radius beyond the halo if there is one
    r_t = _measured_radius(preset(configs, name), 0, 2 * halo_t + 3)
    r_h = _measured_radius(preset(configs, name), 1, 2 * halo_h + 3)
    expected = {"paper_4x8x8": (9, 8), "paper_8x16x16": (8, 8), "debug_4x8x8": (7, 6), "debug_8x16x16": (6, 6)}
    assert (r_t, r_h) == expected[name]
    assert r_t <= halo_t and r_h <= halo_h
    # and the halos are the smallest valid ones (pixels in steps of 32, frames in steps of 16)
    assert (cfg.inference.decode_halo_frames - 16) // ft < r_t and (cfg.inference.decode_halo - 32) // fh < r_h


@pytest.mark.parametrize("name", DEBUG)
@pytest.mark.parametrize("axis", ["t", "w"])
def test_tiled_decode_equals_untiled_with_the_presets_halos(configs, name, axis):
    """Small tiles (16 frames, 64 px) and the preset's own halos, tiling one axis at a time: the
    latent is tile + 2 halo long there, so the first window ends inside the clip, one halo past its
    tile, and the seams are exact only if the halo covers the decoder's receptive radius."""
    small = ["inference.tile_size=64", "inference.tile_overlap=32", "inference.chunk_frames=16",
             "inference.chunk_overlap=0"]
    torch.manual_seed(0)
    model = PVQVAE(preset(configs, name, *small)).eval()
    _trained_like(model.decoder)
    inf, (ft, fh, _) = model.cfg.inference, model.factor
    if axis == "t":
        shape = (16 // ft + 2 * inf.decode_halo_frames // ft, 1, 1)
    else:
        shape = (1, 2, 64 // fh + 2 * inf.decode_halo // fh)
    z = torch.randn(1, 16, *shape)
    with torch.no_grad():
        full = model.decode(z)
    assert full.shape == (1, 3, *[n * f for n, f in zip(shape, model.factor)])
    scale = full.abs().max().item()
    exact = (model.decode_tiled(z) - full).abs().max().item()
    assert exact < 1e-5 * scale, exact  # measured <= 5e-7 of the scale
    # one step less halo (16 frames, 32 px) is no longer exact: the halo is what makes it exact
    shrink = (f"inference.decode_halo_frames={inf.decode_halo_frames - 16}" if axis == "t"
              else f"inference.decode_halo={inf.decode_halo - 32}")
    model.cfg = preset(configs, name, *small, shrink)
    short = (model.decode_tiled(z) - full).abs().max().item()
    assert short > 1e-4 * scale, (shrink, short)  # measured 3e-4 .. 2e-3 of the scale


def test_bits_per_pixel_by_hand(configs):
    paper = load_config(configs / "paper.yaml")
    # 256x256 x 16 frames: latent 1x8x8; pyramid levels 0.25, 0.5, 0.75, 1 round to
    # 1x2x2, 1x4x4, 1x6x6, 1x8x8 = 4 + 16 + 36 + 64 = 120 tokens of 16 bits
    assert token_grids(paper, 16, 256, 256) == [(1, 2, 2), (1, 4, 4), (1, 6, 6), (1, 8, 8)]
    assert bits_per_pixel(paper, 16, 256, 256) == 120 * 16 / (16 * 256 * 256) == 0.0018310546875
    # 512x512 x 32: latent 2x16x16 -> 1x4x4, 1x8x8, 2x12x12, 2x16x16 = 16 + 64 + 288 + 512 = 880
    assert bits_per_pixel(paper, 32, 512, 512) == 880 * 16 / (32 * 512 * 512)
    # 4x8x8 at 512x512 x 32: latent 8x64x64 -> 512 + 4096 + 13824 + 32768 = 51200 tokens
    p4 = preset(configs, "paper_4x8x8")
    assert bits_per_pixel(p4, 32, 512, 512) == 51200 * 16 / (32 * 512 * 512) == 0.09765625
    # 8x16x16 at 512x512 x 32: latent 4x32x32 -> 64 + 512 + 1728 + 4096 = 6400 tokens
    p8 = preset(configs, "paper_8x16x16")
    assert bits_per_pixel(p8, 32, 512, 512) == 6400 * 16 / (32 * 512 * 512) == 0.01220703125
    # single-level LFQ: 16 bits per latent position, i.e. 16 / (ft fh fw) per pixel
    lfq = ["quantizer.type=lfq", "quantizer.num_levels=1", "quantizer.pyramid_scales=[1.0]"]
    assert bits_per_pixel(preset(configs, "paper_4x8x8", *lfq), 32, 512, 512) == 16 / 256
    assert bits_per_pixel(load_config(configs / "ablations" / "lfq.yaml"), 16, 256, 256) == 16 / 16384
    # RVQ: 4 full-size levels of log2(8000) bits
    rvq = load_config(configs / "ablations" / "rvq.yaml")
    assert bits_per_token(rvq) == math.log2(8000)
    assert bits_per_pixel(rvq, 16, 256, 256) == pytest.approx(4 * math.log2(8000) / 16384)
    # identity: continuous, no bits
    ident = preset(configs, "paper_4x8x8", "quantizer.type=identity")
    assert bits_per_pixel(ident, 16, 256, 256) is None and token_grids(ident, 16, 256, 256) is None


def test_info_shows_compression_ratio_and_bits(configs):
    runner = CliRunner()
    res = runner.invoke(app, ["info", "--config", str(configs / "presets" / "paper_4x8x8.yaml")],
                        terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "4x8x8x16 (ratio 48:1), pvq 4 levels x 16 bits" in res.output
    assert "24x135x240x16" in res.output  # 1920x1080, 96 frames
    assert "0.09766" in res.output  # bits per pixel at 512x512
    res = runner.invoke(app, ["info", "--config", str(configs / "paper.yaml"), "--set", "quantizer.type=identity"],
                        terminal_width=200)
    assert res.exit_code == 0 and "continuous" in res.output and "ratio 3072:1" in res.output
    res = runner.invoke(app, ["info", "--all-presets"], terminal_width=200)
    assert res.exit_code == 0, res.output
    rows = {line.split()[1]: line for line in res.output.splitlines() if line.startswith("│")}
    assert "3072" in rows["paper"] and "0.001678" in rows["paper"]
    assert "48" in rows["paper_4x8x8"] and "0.09766" in rows["paper_4x8x8"]
    assert "384" in rows["paper_8x16x16"] and "0.01221" in rows["paper_8x16x16"]
