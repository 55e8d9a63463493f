import math

import pytest
import torch

from pvq_model.config import PAPER_FRAMES, PAPER_SCALES, ConfigError, load_config
from pvq_model.vae import PVQVAE


def test_paper_recipe_numbers(configs):
    cfg = load_config(configs / "paper.yaml")
    t = cfg.train
    assert (t.lr, t.warmup_steps, t.steps) == (1e-5, 10_000, 800_000)
    assert t.betas == [0.9, 0.95] and t.eps == 1e-8
    assert (t.micro_batch, t.grad_accum, t.world_size, t.global_batch) == (4, 4, 64, 1024)
    assert (t.nodes, t.gpus_per_node) == (8, 8)
    assert (t.ema_decay, t.grad_clip, t.seed, t.zero_stage, t.reduce_bucket_gib) == (0.999, 1.0, 42, 3, 5.0)
    assert t.precision == "bf16" and cfg.model.gradient_checkpointing
    assert [tuple(s) for s in cfg.data.scales] == list(PAPER_SCALES) and len(PAPER_SCALES) == 10
    assert cfg.data.frames == list(PAPER_FRAMES) == [16, 32, 48, 96]
    assert cfg.model.latent_dim == 16 and cfg.quantizer.type == "pvq"
    assert cfg.quantizer.codebook_size == 2**16 and cfg.quantizer.dim == 16


@pytest.mark.parametrize("override, path", [
    ("model.encoder.chanels=[1]", "model.encoder.chanels"),
    ("quantizer.bogus=1", "quantizer.bogus"),
    ("train.seed=abc", "train.seed"),
    ("model.encoder.fft=3", "model.encoder.fft"),
    ("loss.recon_weight=[1]", "loss.recon_weight"),
])
def test_bad_keys_and_types_name_the_path(configs, override, path):
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        load_config(configs / "debug.yaml", [override])


def test_cross_field_checks(configs):
    with pytest.raises(ConfigError, match="global_batch"):
        load_config(configs / "paper.yaml", ["train.grad_accum=2"])
    with pytest.raises(ConfigError, match="65536"):
        load_config(configs / "paper.yaml", ["quantizer.codebook_size=32800"])
    with pytest.raises(ConfigError, match="teacher_path"):
        load_config(configs / "paper.yaml", ["alignment.weight=0.5"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(configs / "nope.yaml")


def test_override_values_are_typed(configs):
    cfg = load_config(configs / "debug.yaml", ["quantizer.num_levels=2", "quantizer.pyramid_scales=[0.5, 1.0]",
                                               "train.lr=3e-4"])
    assert cfg.quantizer.num_levels == 2 and cfg.quantizer.pyramid_scales == [0.5, 1.0]
    assert cfg.train.lr == pytest.approx(3e-4)


TABLE1 = {"vq": ("vq", 4096, 256), "gvq": ("gvq", 4096, 256), "lfq": ("lfq", 65536, 16),
          "rvq": ("rvq", 8000, 512), "psvq": ("psvq", 8000, 512), "rvq_lfq": ("rvq_lfq", 65536, 16),
          "pvq": ("pvq", 65536, 16), "no_fft": ("pvq", 65536, 16), "no_dwt": ("pvq", 65536, 16),
          "no_fft_dwt": ("pvq", 65536, 16)}


@pytest.mark.parametrize("name", sorted(TABLE1))
def test_ablation_configs_build_the_table1_model(configs, name):
    cfg = load_config(configs / "ablations" / f"{name}.yaml")
    kind, size, dim = TABLE1[name]
    assert (cfg.quantizer.type, cfg.quantizer.codebook_size, cfg.quantizer.dim) == (kind, size, dim)
    assert cfg.model.encoder.fft == ("no_fft" not in name)
    assert cfg.model.encoder.dwt == (name not in ("no_dwt", "no_fft_dwt"))
    with torch.device("meta"):
        model = PVQVAE(cfg)
        z = model.encode(torch.empty(1, 3, 16, 256, 256))
    assert tuple(z.shape) == (1, dim, 1, 8, 8)
    assert model.quantizer.codebook_size == size
    assert (model.encoder.fft is not None and len(model.encoder.fft) > 0) == cfg.model.encoder.fft
    assert (model.encoder.dwt is not None) == cfg.model.encoder.dwt


def test_latent_shape_every_scale_and_length(configs):
    cfg = load_config(configs / "debug.yaml")
    with torch.device("meta"):
        model = PVQVAE(cfg)
        for w, h in PAPER_SCALES:
            for t in PAPER_FRAMES:
                z = model.encode(torch.empty(1, 3, t, h, w))
                assert tuple(z.shape) == (1, 16, t // 16, math.ceil(h / 32), math.ceil(w / 32)), (w, h, t)
                y = model.decode(z, (t, h, w))
                assert tuple(y.shape) == (1, 3, t, h, w)
