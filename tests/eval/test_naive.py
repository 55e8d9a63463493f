"""The information-equivalent baselines (pvq_model/eval/naive.py), the identity bottleneck and the
residual-autoencoding shortcuts (pvq_model/blocks.py)."""

import torch

from pvq_model.blocks import channel_resize, down_shortcut, up_shortcut
from pvq_model.config import load_config
from pvq_model.eval.summary import baseline_summary
from pvq_model.metrics import clip_metrics
from pvq_model.eval.naive import mean_colour, pooled
from pvq_model.quantizers import build_quantizer
from pvq_model.vae import PVQVAE
from helpers import DEBUG_CONFIG, debug_model



def test_mean_colour_is_the_clip_mean_and_ignores_padded_frames():
    x = torch.rand(2, 3, 4, 8, 8) * 2 - 1
    mask = torch.tensor([[True] * 4, [True, False, False, False]])
    y = mean_colour(x, mask)
    assert torch.allclose(y[0], x[0].mean((1, 2, 3), keepdim=True).expand_as(x[0]), atol=1e-6)
    assert torch.allclose(y[1, :, 0], x[1, :, 0].mean((1, 2), keepdim=True).expand_as(x[1, :, 0]), atol=1e-6)
    assert torch.equal(y[1, :, 1:], x[1, :, 1:])  # padded frames come back unchanged


def test_pooled_is_exact_on_a_block_constant_clip_and_beats_mean_colour():
    low = torch.rand(1, 3, 2, 2, 2) * 2 - 1
    x = low.repeat_interleave(4, 2).repeat_interleave(8, 3).repeat_interleave(8, 4)  # (1, 3, 8, 16, 16)
    # trilinear upsampling of block means reproduces a constant clip exactly, and is a smooth
    # approximation otherwise: on a smooth ramp it beats the flat mean colour by a wide margin
    const = torch.full((1, 3, 8, 16, 16), 0.3)
    assert torch.allclose(pooled(const, (4, 8, 8)), const, atol=1e-6)
    ramp = torch.linspace(-1, 1, 16).view(1, 1, 1, 1, 16).expand(1, 3, 8, 16, 16).contiguous()
    p_pool = clip_metrics(ramp, pooled(ramp, (4, 8, 8))).psnr[0]
    p_mean = clip_metrics(ramp, mean_colour(ramp)).psnr[0]
    assert p_pool > p_mean + 5
    assert pooled(x, (4, 8, 8)).shape == x.shape


def test_pooled_handles_sizes_off_the_grid_and_one_frame_images():
    x = torch.rand(1, 3, 1, 20, 36) * 2 - 1
    y = pooled(x, (16, 32, 32), torch.ones(1, 1, dtype=torch.bool))
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_baseline_summary_margins():
    rows = [{"kind": "video", "psnr": 20.0, "ssim": 0.5, "mean_colour_psnr": 14.0, "mean_colour_ssim": 0.3,
             "pooled_psnr": 18.0, "pooled_ssim": 0.4},
            {"kind": "image", "psnr": 22.0, "ssim": 0.6, "mean_colour_psnr": 16.0, "mean_colour_ssim": 0.3,
             "pooled_psnr": 19.0, "pooled_ssim": 0.5}]
    s = baseline_summary(rows, (16, 32, 32))
    assert s["mean_colour"]["margin_db"] == 21.0 - 15.0
    assert s["pooled"]["margin_db"] == 21.0 - 18.5
    assert s["pooled"]["videos"]["psnr"] == 18.0 and s["pooled"]["block"] == [16, 32, 32]


def test_channel_resize_identity_average_and_duplicate():
    x = torch.arange(8.0).view(1, 8, 1, 1, 1)
    assert torch.equal(channel_resize(x, 8), x)
    assert channel_resize(x, 4).flatten().tolist() == [0.5, 2.5, 4.5, 6.5]
    assert channel_resize(x[:, :2], 4).flatten().tolist() == [0.0, 0.0, 1.0, 1.0]
    y = channel_resize(torch.rand(1, 3, 2, 2, 2), 8)  # lcm 24: duplicate x8, average groups of 3
    assert y.shape == (1, 8, 2, 2, 2)


def test_up_shortcut_inverts_down_shortcut_on_block_constant_input():
    low = torch.rand(1, 4, 2, 3, 3)
    x = low.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)  # constant 2x2x2 blocks
    z = down_shortcut(x, 4, (2, 2, 2))
    assert torch.allclose(z, low, atol=1e-6)  # each channel's block mean
    assert torch.allclose(up_shortcut(z, 4, (2, 2, 2)), x, atol=1e-6)


def test_a_new_model_is_its_shortcut_path():
    """Zero-initialised branches: a fresh identity-bottleneck model maps a clip that is constant
    over its latent blocks to itself up to a fixed linear mix of colours (the shortcut path)."""
    cfg = load_config(DEBUG_CONFIG, ["quantizer.type=identity", "model.encoder.fft=false"])
    torch.manual_seed(0)
    model = PVQVAE(cfg).eval()
    grey = torch.full((1, 3, 16, 64, 64), 0.4)
    with torch.no_grad():
        out = model(grey).recon
    assert torch.allclose(out, out.flatten()[0].expand_as(out), atol=1e-5)  # still constant
    old = debug_model("quantizer.type=identity", "model.shortcuts=false")
    with torch.no_grad():
        assert old(grey).recon.std() > 1e-3  # a plain random network does not keep it constant


def test_identity_quantizer_round_trip():
    cfg = load_config(DEBUG_CONFIG, ["quantizer.type=identity"]).quantizer
    q = build_quantizer(cfg)
    z = torch.randn(2, 16, 1, 2, 3, requires_grad=True)
    out = q(z)
    assert torch.equal(out.quantized, z.detach()) and float(out.aux_loss) == 0.0
    assert torch.equal(q.decode_indices(out.indices), out.quantized)
    out.quantized.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))
