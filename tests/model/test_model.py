import copy

import pytest
import torch

from pvq_model.config import load_config
from pvq_model.discriminator import Discriminator3D
from pvq_model.dwt_branch import haar_dwt
from pvq_model.fft_branch import FFTBranch
from pvq_model.vae import PVQVAE
from helpers import DEBUG_CONFIG


@pytest.fixture(scope="module")
def cfg(configs):
    return load_config(configs / "debug.yaml")


def build(cfg, seed=42):
    torch.manual_seed(seed)
    return PVQVAE(cfg)


def clip(b=2, t=16, h=64, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, h, w, generator=g) * 2 - 1


def test_forward_shapes_any_size(cfg):
    model = build(cfg).eval()
    for t, h, w in [(16, 64, 64), (20, 48, 80), (1, 40, 40), (32, 64, 96)]:
        out = model(clip(1, t, h, w))
        assert out.recon.shape == (1, 3, t, h, w)
        assert out.latent.shape == (1, 16, -(-t // 16), -(-h // 32), -(-w // 32))
        assert out.frame_features.shape[2:] == (-(-t // 16) * 16, -(-h // 32) * 16, -(-w // 32) * 16)


def test_seed_42_gives_bit_identical_forward(cfg):
    x = clip()
    a, b = build(cfg).eval(), build(cfg).eval()
    ya, yb = a(x), b(x)
    assert torch.equal(ya.recon, yb.recon)
    assert all(torch.equal(i, j) for i, j in zip(ya.quant.indices, yb.quant.indices))
    assert not torch.equal(build(cfg, seed=7).eval()(x).recon, ya.recon)


def test_gradient_checkpointing_gives_equal_gradients(cfg):
    x = clip(1)
    grads = []
    for enabled in (False, True):
        model = build(cfg).train()
        model.set_gradient_checkpointing(enabled)
        out = model(x)
        ((out.recon - x).abs().mean() + out.quant.aux_loss).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 20
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=0, atol=1e-6), name


def test_gradients_reach_the_encoder(cfg):
    model = build(cfg).train()
    out = model(clip(1))
    (out.recon - clip(1, seed=1)).abs().mean().backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0


def test_tokenize_detokenize_round_trip(cfg):
    model = build(cfg).eval()
    x = clip(1, 16, 64, 96)
    model.data_init(x)
    out = model(x)
    again = model.detokenize(model.tokenize(x), (16, 64, 96))
    assert torch.allclose(again, out.recon, atol=1e-5)


def test_save_and_load_pretrained(cfg, tmp_path):
    model = build(cfg).eval()
    x = clip(1)
    model.data_init(x)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = PVQVAE.from_pretrained(tmp_path / "ckpt")
    assert loaded.cfg == model.cfg
    assert torch.equal(loaded(x).recon, model(x).recon)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        PVQVAE.from_pretrained(tmp_path)


@pytest.mark.parametrize("variant", ["no_fft", "no_dwt", "no_fft_dwt"])
def test_branch_ablations_change_the_encoder(cfg, variant):
    over = {"no_fft": ["model.encoder.fft=false"], "no_dwt": ["model.encoder.dwt=false"],
            "no_fft_dwt": ["model.encoder.fft=false", "model.encoder.dwt=false"]}[variant]
    ablated = build(load_config(DEBUG_CONFIG, over))
    full = build(cfg)
    n_full = sum(p.numel() for p in full.encoder.parameters())
    n_abl = sum(p.numel() for p in ablated.encoder.parameters())
    assert n_abl < n_full
    assert ablated(clip(1)).recon.shape == (1, 3, 16, 64, 64)


def test_haar_matches_ptwt_and_is_orthonormal():
    ptwt = pytest.importorskip("ptwt", reason="ptwt is a dev dependency used as the reference")
    x = torch.randn(1, 2, 4, 8, 6, dtype=torch.float64)
    ours = haar_dwt(x, temporal=True)  # (B, C, 8, T/2, H/2, W/2)
    ref = ptwt.wavedec3(x, "haar", level=1)
    assert torch.allclose(ours[:, :, 0], ref[0], atol=1e-10)
    details = ref[1]
    for key, band in details.items():  # ptwt keys: 3 letters (t, h, w), 'a' low / 'd' high
        idx = (key[2] == "d") * 1 + (key[1] == "d") * 2 + (key[0] == "d") * 4
        assert torch.allclose(ours[:, :, idx].abs(), band.abs(), atol=1e-10), key
    assert torch.allclose(ours.pow(2).sum(), x.pow(2).sum())
    spatial = haar_dwt(x, temporal=False)
    assert spatial.shape == (1, 2, 4, 4, 4, 3)
    assert torch.allclose(spatial.pow(2).sum(), x.pow(2).sum())


def test_fft_branch_is_global():
    torch.manual_seed(0)
    branch = FFTBranch(4, [1, 2, 2])
    x = torch.zeros(1, 4, 2, 16, 16)
    y0 = branch(x)
    x2 = x.clone()
    x2[..., 0, 0, 0] = 5.0
    diff = (branch(x2) - y0).abs()
    assert diff[..., 1, 15, 15].sum() > 1e-4  # the far corner sees the change


def test_discriminator_shapes_and_bn(cfg):
    torch.manual_seed(0)
    disc = Discriminator3D(cfg.discriminator)
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in disc.modules())
    assert any(isinstance(m, torch.nn.MaxPool3d) for m in disc.modules())
    logits = disc(clip(3, 16, 64, 96))
    assert logits.shape == (3,) and torch.isfinite(logits).all()
    assert len(set(logits.tolist())) == 3  # one logit per clip, from that clip
    logits.sum().backward()
    for name, p in disc.named_parameters():  # every layer (BN included) gets a finite, nonzero gradient
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("shape", [(2, 32, 2, 2, 3), (2, 32, 2, 4, 6), (1, 8, 1, 2, 2)])
def test_conv3d_bf16_cpu_gradients(shape):
    """torch's CPU bf16 Conv3d backward is wrong for these shapes; our Conv3d must not be."""
    from pvq_model.blocks import Conv3d

    torch.manual_seed(0)
    ref = Conv3d(shape[1], 32, 3, padding=1)
    x = torch.randn(*shape)
    ref(x).square().sum().backward()
    low = Conv3d(shape[1], 32, 3, padding=1).bfloat16()
    low.load_state_dict({k: v.bfloat16() for k, v in ref.state_dict().items()})
    y = low(x.bfloat16())
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    assert torch.allclose(low.weight.grad.float(), ref.weight.grad, rtol=0.05, atol=0.05 * ref.weight.grad.abs().max())
