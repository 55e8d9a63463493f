import math

import pytest
import torch

from pvq_model.config import ConfigError, QuantizerConfig
from pvq_model.quantizers import QUANTIZERS, TABLE1_TYPES, LookupFreeQuantizer, build_quantizer
from pvq_model.quantizers.base import code_stats
from pvq_model.quantizers.lfq import lfq_entropy, lfq_entropy_naive

SMALL = {
    "vq": dict(codebook_size=64, dim=8),
    "gvq": dict(codebook_size=64, dim=8),
    "lfq": dict(codebook_size=2**8, dim=8),
    "rvq": dict(codebook_size=64, dim=8, num_levels=3),
    "psvq": dict(codebook_size=64, dim=8, num_levels=3, pyramid_scales=[0.34, 0.67, 1.0]),
    "rvq_lfq": dict(codebook_size=2**8, dim=8, num_levels=3),
    "pvq": dict(codebook_size=2**8, dim=8, num_levels=3, pyramid_scales=[0.34, 0.67, 1.0]),
}


def make(kind):
    torch.manual_seed(0)
    return build_quantizer(QuantizerConfig(type=kind, entropy_group_bits=4, **SMALL[kind]))


@pytest.mark.parametrize("kind", sorted(SMALL))
@pytest.mark.parametrize("training", [True, False])
def test_round_trip_and_straight_through(kind, training):
    q = make(kind)
    z = torch.randn(2, 8, 2, 6, 6, requires_grad=True)
    q.data_init(z.detach())
    q.train(training)
    out = q(z)
    assert out.quantized.shape == z.shape and out.quantized.dtype == torch.float32
    assert torch.allclose(q.decode_indices(out.indices), out.quantized, atol=1e-5)
    assert out.aux_loss.ndim == 0 and torch.isfinite(out.aux_loss)
    assert 0 < float(out.stats["usage"]) <= 1 and float(out.stats["perplexity"]) >= 1
    if not training:
        return
    # in training, gradients reach the encoder side through the straight-through estimator
    (out.quantized * torch.randn_like(out.quantized)).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_indices_layout():
    z = torch.randn(2, 8, 2, 6, 6)
    assert make("vq")(z).indices.shape == (2, 2, 6, 6)
    pyr = make("pvq")
    pyr.data_init(z)
    sizes = [tuple(i.shape) for i in pyr(z).indices]
    assert sizes == [(2, 1, 2, 2), (2, 1, 4, 4), (2, 2, 6, 6)]


def test_registry_names_labels_and_table1_order():
    assert TABLE1_TYPES == ("vq", "gvq", "lfq", "rvq", "psvq", "rvq_lfq", "pvq")
    assert set(QUANTIZERS) == set(SMALL) | {"identity"}
    assert [QUANTIZERS[k].label for k in TABLE1_TYPES] == ["VQ", "GVQ", "LFQ", "RVQ", "PSVQ", "RVQ + LFQ", "PVQ"]
    for kind in SMALL:
        assert type(make(kind)) is QUANTIZERS[kind] and QUANTIZERS[kind].type_name == kind
    with pytest.raises(ConfigError, match="quantizer.type: 'bogus' is not one of vq, gvq"):
        build_quantizer(QuantizerConfig(type="bogus"))


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_token_grids_are_the_index_shapes(kind):
    q = make(kind)
    z = torch.randn(2, 8, 2, 6, 6)
    q.data_init(z)
    indices = q(z).indices
    shapes = [tuple(i.shape[1:]) for i in (indices if isinstance(indices, list) else [indices])]
    cfg = QuantizerConfig(type=kind, entropy_group_bits=4, **SMALL[kind])
    assert QUANTIZERS[kind].token_grids(cfg, (2, 6, 6)) == shapes
    assert QUANTIZERS["identity"].token_grids(cfg, (2, 6, 6)) is None


def test_lfq_codes_are_signs_and_ids_are_bits():
    q = LookupFreeQuantizer(dim=4)
    z = torch.tensor([0.3, -2.0, 0.01, -0.5]).view(1, 4, 1, 1, 1)
    out = q(z)
    assert out.quantized.flatten().tolist() == [1.0, -1.0, 1.0, -1.0]
    assert int(out.indices.flatten()) == 0b0101
    assert set(q(torch.randn(2, 4, 1, 3, 3)).quantized.unique().tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize("dim, group", [(6, 6), (16, 16)])
def test_lfq_entropy_matches_naive_formula_when_exact(dim, group):
    torch.manual_seed(1)
    flat = torch.randn(64, dim) * 0.05
    ps, batch = lfq_entropy(flat, temperature=0.1, group_bits=group)
    ps_ref, batch_ref = lfq_entropy_naive(flat, temperature=0.1)
    assert torch.allclose(ps, ps_ref, rtol=1e-4, atol=1e-5)
    assert torch.allclose(batch, batch_ref, rtol=1e-4, atol=1e-5)


def test_lfq_grouped_batch_entropy_is_an_upper_bound():
    torch.manual_seed(2)
    flat = torch.randn(128, 8) * 0.05 + torch.linspace(-0.02, 0.02, 8)
    ps_ref, batch_ref = lfq_entropy_naive(flat, temperature=0.1)
    for group in (1, 2, 4):
        ps, batch = lfq_entropy(flat, temperature=0.1, group_bits=group)
        assert torch.allclose(ps, ps_ref, rtol=1e-4, atol=1e-5)  # per-sample term is always exact
        assert batch >= batch_ref - 1e-5
        assert batch <= 8 * math.log(2) + 1e-5


def test_lfq_entropy_paper_codebook_is_cheap_and_differentiable():
    # 2**16 codes, 4096 tokens: the factorised form holds at most 4096 x 256 values per group
    q = LookupFreeQuantizer(dim=16, group_bits=8)
    z = torch.randn(1, 16, 4, 32, 32, requires_grad=True)
    out = q(z)
    out.aux_loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["pvq", "psvq", "rvq", "rvq_lfq"])
def test_residual_error_shrinks_with_each_level(kind):
    torch.manual_seed(3)
    q = make(kind)
    z = torch.randn(2, 8, 3, 12, 12)
    q.data_init(z)
    q.eval()
    stats = q(z).stats
    res = [float(stats[f"residual/l{k}"]) for k in range(3)]
    assert all(b < a for a, b in zip([1.0] + res, res)), res


def test_code_stats_known_values():
    s = code_stats(torch.tensor([0, 0, 1, 1]), 4)
    assert float(s["usage"]) == 0.5
    assert float(s["perplexity"]) == pytest.approx(2.0)
    s = code_stats(torch.arange(8), 8)
    assert float(s["usage"]) == 1.0 and float(s["perplexity"]) == pytest.approx(8.0)


def test_gumbel_eval_is_argmax():
    q = make("gvq").eval()
    z = torch.randn(1, 8, 1, 4, 4)
    out = q(z)
    assert torch.equal(out.indices, q.proj(z).argmax(1))
