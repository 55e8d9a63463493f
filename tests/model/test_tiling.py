"""Tiled / chunked inference against the untiled model, with the tolerances we measured."""

import pytest
import torch

from pvq_model.config import load_config
from pvq_model.vae import PVQVAE


def model_for(configs, *overrides):
    torch.manual_seed(42)
    cfg = load_config(configs / "debug.yaml", ["inference.tile_size=64", "inference.tile_overlap=32",
                                               "inference.chunk_frames=16", "inference.chunk_overlap=0",
                                               *overrides])
    model = PVQVAE(cfg).eval()
    # A new model's zero-initialised branches (blocks.py) make every layer look at its own cell
    # only; re-draw all convolutions so the receptive fields that the halos must cover are real.
    for m in model.modules():
        if isinstance(m, torch.nn.Conv3d):
            torch.nn.init.kaiming_normal_(m.weight)
    return model


def test_tiled_decode_equals_untiled(configs):
    # the debug decoder's receptive radius is 6 latent positions: a 192-px / 96-frame halo is exact
    model = model_for(configs, "inference.decode_halo=192", "inference.decode_halo_frames=96")
    z = torch.randn(1, 16, 2, 4, 9)
    full = model.decode(z)
    tiled = model.decode_tiled(z)
    assert tiled.shape == full.shape == (1, 3, 32, 128, 288)
    assert torch.allclose(tiled, full, atol=1e-5 * full.abs().max().item()), (tiled - full).abs().max()


def test_tiled_decode_with_small_halo_is_close_but_not_exact(configs):
    model = model_for(configs, "inference.decode_halo=0", "inference.decode_halo_frames=0")
    z = torch.randn(1, 16, 2, 5, 5)
    err = (model.decode_tiled(z) - model.decode(z)).abs().max()
    assert err > 1e-4  # the halo is what makes tiled decoding exact


def test_tiled_encode_without_fft_matches_with_large_halo(configs):
    model = model_for(configs, "model.encoder.fft=false", "inference.tile_halo=512", "inference.chunk_halo=32")
    x = torch.rand(1, 3, 32, 128, 160) * 2 - 1
    assert torch.allclose(model.encode_tiled(x), model.encode(x), atol=1e-4)


def test_tiled_reconstruction_tolerance_with_fft(configs):
    """The FFT branch is global, so tiles can see a different spectrum than the whole clip: the tiled
    latent may differ from the untiled one (bound 0.25 relative; a new model's spectral weights are
    zero, so here it is exact). Then every pyramid level picks the same codes and the reconstruction
    (decoded with the exact halo) equals the untiled one up to float rounding."""
    model = model_for(configs, "inference.tile_halo=64", "inference.chunk_halo=16")
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.avg_pool3d(torch.rand(1, 3, 32, 128, 128, generator=g), 5, 1, 2) * 2 - 1
    with torch.no_grad():
        tiled, q_t = model.reconstruct(x, tiled=True)
        untiled, q_u = model.reconstruct(x, tiled=False)
        z_t, z_u = model.encode_tiled(x), model.encode(x)
    rel = (z_t - z_u).norm() / z_u.norm()
    assert rel < 0.25, float(rel)
    assert len(q_t.indices) == len(q_u.indices) > 1
    assert all(torch.equal(a, b) for a, b in zip(q_t.indices, q_u.indices))
    assert tiled.shape == untiled.shape == x.shape
    assert torch.allclose(tiled, untiled, atol=1e-5 * untiled.abs().max().item()), (tiled - untiled).abs().max()


@pytest.mark.slow
def test_720p_clip_runs_in_bounded_memory(configs):
    """A 720p clip through tiled reconstruction on CPU: peak extra memory stays a small multiple of
    the clip itself, far below the untiled activations. (1080p x 96 frames, streamed from a file:
    benchmarks/tiled_memory.py, case debug-1080p-96, bar 4 GiB peak RSS.)"""
    import resource

    torch.manual_seed(0)
    cfg = load_config(configs / "debug.yaml", ["inference.tile_size=256", "inference.tile_overlap=64",
                                               "inference.tile_halo=32", "inference.chunk_frames=32",
                                               "inference.chunk_overlap=16"])
    model = PVQVAE(cfg).eval()
    x = torch.zeros(1, 3, 32, 720, 1280)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB
    y, quant = model.reconstruct(x, tiled=True)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert quant.quantized.shape == (1, 16, 2, 23, 40)
    assert after - before < 3.0, (before, after)
