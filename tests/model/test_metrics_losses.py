import math

import pytest
import torch

from pvq_model.config import LPIPSConfig, load_config
from pvq_model.losses import PVQLoss, masked_recon
from pvq_model.metrics import clip_metrics, frame_psnr, frame_ssim
from pvq_model.perceptual import LPIPS, build_lpips
from pvq_model.vae import PVQVAE


def test_psnr_of_a_constant_offset():
    x = torch.zeros(2, 3, 8, 8)
    # an offset of 0.1 in [-1, 1] is 0.05 on [0, 1]: PSNR = 10 log10(1 / 0.05^2)
    assert torch.allclose(frame_psnr(x, x + 0.1), torch.full((2,), 10 * math.log10(1 / 0.05**2)), atol=1e-3)


def test_ssim_of_identical_and_different_pairs():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    assert torch.allclose(frame_ssim(x, x), torch.ones(2), atol=1e-6)
    assert (frame_ssim(x, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1) < 0.2).all()


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (3, 3, 137, 201), (1, 1, 20, 17)])
def test_ssim_in_strips_equals_torchmetrics(shape):
    """frame_ssim computes the map a strip of rows at a time (a 4K frame in torchmetrics takes
    ~6 GB); every strip height, down to one row, gives torchmetrics' number."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    g = torch.Generator().manual_seed(1)
    x = torch.rand(*shape, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(*shape, generator=g)).clamp(-1, 1)
    ref = structural_similarity_index_measure((y + 1) / 2, (x + 1) / 2, data_range=1.0, reduction="none")
    for rows in (1, 7, 64, shape[2]):
        assert torch.allclose(frame_ssim(x, y, rows), ref, atol=2e-6, rtol=0), rows
    with pytest.raises(ValueError, match="larger than 5 x 5"):
        frame_ssim(x[..., :4, :], y[..., :4, :])


def test_clip_metrics_respect_the_mask():
    x = torch.zeros(1, 3, 16, 32, 32)
    y = x + 0.1
    y[:, :, 1:] = 0.9  # frames 1.. are padding and badly reconstructed
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, 0] = True
    m = clip_metrics(x, y, mask)
    assert m.psnr[0] == pytest.approx(10 * math.log10(1 / 0.05**2), abs=1e-3)
    assert len(m.psnr_frames[0]) == 1
    assert m.lpips is None  # no weights configured: absent, not 0
    full = clip_metrics(x, y)
    assert full.psnr[0] < m.psnr[0] and len(full.psnr_frames[0]) == 16


def _lpips_files(tmp_path):
    torch.manual_seed(0)
    net = LPIPS()
    backbone = {f"features.{k}": v.normal_() * 0.05 for k, v in net.features.state_dict().items()}
    backbone["classifier.1.weight"] = torch.zeros(4, 4)  # torchvision files carry the classifier too
    linear = {f"lin{i}.model.1.weight": lin.weight.detach().abs() + 0.1 for i, lin in enumerate(net.lins)}
    torch.save(backbone, tmp_path / "alexnet.pth")
    torch.save(linear, tmp_path / "alex.pth")
    return LPIPSConfig(backbone_weights=str(tmp_path / "alexnet.pth"), linear_weights=str(tmp_path / "alex.pth"))


def test_lpips_properties(tmp_path):
    cfg = _lpips_files(tmp_path)
    lp = build_lpips(cfg)
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1, torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    assert torch.allclose(lp(a, a), torch.zeros(2), atol=1e-7)
    d = lp(a, b)
    assert (d > 0).all() and torch.allclose(d, lp(b, a))
    assert (lp(a, a + 0.02 * torch.randn_like(a)) < d).all()
    m = clip_metrics(a[:, :, None], b[:, :, None], lpips=lp)
    assert m.lpips is not None and m.lpips[0] == pytest.approx(float(d[0]), rel=1e-5)


def test_lpips_absent_or_missing_file(tmp_path):
    assert build_lpips(LPIPSConfig()) is None
    with pytest.raises(FileNotFoundError, match="lpips.backbone_weights"):
        build_lpips(LPIPSConfig(backbone_weights=str(tmp_path / "x.pth"), linear_weights=str(tmp_path / "y.pth")))


def test_masked_recon_ignores_padding():
    x = torch.zeros(1, 3, 4, 8, 8)
    y = x.clone()
    y[:, :, 2:] = 5.0
    mask = torch.tensor([[True, True, False, False]])
    assert float(masked_recon(x, y, mask)) == 0.0
    y[:, :, 0] = 1.0
    assert float(masked_recon(x, y, mask)) == pytest.approx(0.5)


def test_generator_and_discriminator_losses(configs):
    from pvq_model.discriminator import Discriminator3D

    cfg = load_config(configs / "debug.yaml", ["loss.adversarial_start_step=10"])
    torch.manual_seed(0)
    model, disc = PVQVAE(cfg).train(), Discriminator3D(cfg.discriminator)
    loss_fn = PVQLoss(cfg)
    x = torch.rand(2, 3, 16, 64, 64) * 2 - 1
    mask = torch.ones(2, 16, dtype=torch.bool)
    out = model(x)
    total, parts = loss_fn.generator(x, out, mask, step=0, discriminator=disc)
    assert set(parts) == {"recon", "quantizer"}  # before the adversarial start step
    total, parts = loss_fn.generator(x, out, mask, step=10, discriminator=disc)
    assert set(parts) == {"recon", "quantizer", "adversarial"}
    assert total.dtype == torch.float32
    assert torch.allclose(total, sum(parts.values()))
    d_loss, stats = loss_fn.discriminator(disc, x, out.recon)
    d_loss.backward()
    assert d_loss > 0 and torch.isfinite(d_loss)
    for name, p in disc.named_parameters():  # the discriminator loss reaches every layer ...
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        # ... but the head bias: each active hinge term adds +-1/n (fake +, real -), 0 with all active
        assert (p.grad.abs().sum() > 0) == (name != "head.bias"), name


def test_alignment_to_a_tiny_2d_vae_teacher(configs, tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    teacher = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16), latent_channels=4,
                            norm_num_groups=4, layers_per_block=1,
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    teacher.save_pretrained(tmp_path / "vae")
    cfg = load_config(configs / "debug.yaml", ["alignment.weight=0.5", f"alignment.teacher_path={tmp_path / 'vae'}",
                                               "alignment.teacher_channels=4", "alignment.grid=2"])
    from pvq_model.alignment import load_teacher

    loaded = load_teacher(cfg.alignment.teacher_path)
    assert not any(p.requires_grad for p in loaded.parameters())
    model = PVQVAE(cfg).train()
    assert model.alignment is not None
    loss_fn = PVQLoss(cfg, teacher=loaded)
    x = torch.rand(2, 3, 16, 64, 64) * 2 - 1
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, :16] = True
    mask[1, 0] = True  # an image: one valid frame
    out = model(x)
    total, parts = loss_fn.generator(x, out, mask, step=0, heads=model.alignment)
    assert "alignment" in parts and torch.isfinite(parts["alignment"])
    # InfoNCE over N tokens starts near log(N) (17 valid frames x 2 x 2 grid)
    assert float(parts["alignment"].detach()) / 0.5 == pytest.approx(math.log(17 * 4), rel=0.3)
    parts["alignment"].backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.alignment.teacher.weight.grad.abs().sum() > 0
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_teacher(tmp_path)
