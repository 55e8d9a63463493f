"""Typed configuration tree for PVQ-VAE.

One dataclass tree, loaded from YAML by :func:`load_config` (the project's one strict loader,
:mod:`pvq_common.config`). Unknown keys and wrong types are errors that name the full key path
(``model.encoder.chanels: unknown key; known keys here: ...``). Overrides use dotted paths with
YAML values: ``load_config("configs/debug.yaml", ["quantizer.num_levels=3", "train.seed=7"])``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvq_common.config import ConfigError, from_dict, load_tree
from pvq_common.paper import PAPER_FRAMES, PAPER_SCALES

__all__ = [
    "PAPER_SCALES", "PAPER_FRAMES", "ConfigError", "from_dict", "load_config", "config_from_dict",
    "validate", "PVQConfig", "EncoderConfig", "DecoderConfig", "QuantizerConfig", "AlignmentConfig", "LossConfig",
    "DiscriminatorConfig", "LPIPSConfig", "ModelConfig", "InferenceConfig", "DataConfig", "TrainConfig",
]


@dataclass
class EncoderConfig:
    channels: list[int] = field(default_factory=lambda: [64, 128, 256, 256, 512])
    """Width after each of the 5 down-sampling blocks."""
    temporal_downsample: list[bool] = field(default_factory=lambda: [False, True, True, True, True])
    """Which blocks also halve time (the paper: four of five, giving T/16; the first keeps frames, so
    the alignment loss sees frame-wise features)."""
    spatial_downsample: list[bool] = field(default_factory=lambda: [True] * 5)
    """Which blocks halve H and W (the paper: all five, H/32 x W/32). The compression presets
    (configs/cpu_4x8x8.yaml, configs/presets/) turn the last ones off."""
    num_res_blocks: int = 2
    fft: bool = True
    """FFT branch (global structure): a spectral filter on the deepest blocks."""
    fft_blocks: list[int] = field(default_factory=lambda: [2, 3, 4])
    fft_modes: list[int] = field(default_factory=lambda: [2, 8, 8])
    """Lowest (t, h, w) frequencies the spectral filter keeps (per sign for t and h)."""
    dwt: bool = True
    """DWT branch (local detail): Haar sub-bands of the input injected into the first blocks."""
    dwt_levels: int = 3


@dataclass
class DecoderConfig:
    channels: list[int] = field(default_factory=lambda: [512, 256, 128])
    """Width of each of the 3 up-sampling blocks."""
    temporal_upsample: list[bool] = field(default_factory=lambda: [True, True, True])
    spatial_upsample: list[bool] = field(default_factory=lambda: [True, True, True])
    num_res_blocks: int = 2
    out_patch: list[int] = field(default_factory=lambda: [2, 4, 4])
    """(t, h, w) factor of the final projection (depth-to-space) back to pixels; with the up-blocks
    it must undo the encoder's compression."""


@dataclass
class QuantizerConfig:
    type: str = "pvq"
    """A name in :data:`pvq_model.quantizers.QUANTIZERS`: vq, gvq, lfq, rvq, psvq, rvq_lfq, pvq (Table 1
    of the paper), or ``identity``: the continuous latent passed through unchanged, a diagnostic upper
    bound (not a Table-1 row). Each type reads only the fields below that it uses."""
    codebook_size: int = 65536
    dim: int = 16
    num_levels: int = 4
    """Residual levels for rvq / rvq_lfq / psvq / pvq."""
    pyramid_scales: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    """Relative latent size of each pyramid level (psvq / pvq); the last must be 1.0."""
    commitment_weight: float = 0.25
    entropy_weight: float = 0.1
    """LFQ: weight of (per-sample entropy - diversity * batch entropy)."""
    diversity_weight: float = 1.0
    entropy_temperature: float = 0.01
    entropy_group_bits: int = 8
    """LFQ: the batch entropy is computed exactly within groups of this many bits (2**bits codes
    per group) and summed over groups; equal to the exact formula when it equals ``dim``."""
    gumbel_temperature: float = 1.0
    gumbel_kl_weight: float = 5e-4
    fusion_mix: float = 0.5
    """Pyramidal token fusion: out = (1 - mix) * up(q) + mix * conv(up(q))."""


@dataclass
class AlignmentConfig:
    weight: float = 0.0
    """0 disables the contrastive alignment to the 2D VAE teacher."""
    teacher_path: str | None = None
    """Local directory of a diffusers AutoencoderKL (e.g. FLUX.1 ``vae/``)."""
    teacher_channels: int = 16
    """Latent channels of the teacher (16 for the FLUX VAE)."""
    proj_dim: int = 64
    grid: int = 4
    temperature: float = 0.1
    max_tokens: int = 4096


@dataclass
class LossConfig:
    recon_weight: float = 1.0
    recon_type: str = "l1"
    perceptual_weight: float = 0.1
    quantizer_weight: float = 1.0
    adversarial_weight: float = 0.1
    adversarial_start_step: int = 50_000
    adversarial_type: str = "hinge"


@dataclass
class DiscriminatorConfig:
    channels: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    """One 3D conv stage (conv, BatchNorm3d, SiLU, max-pool) per entry."""


@dataclass
class LPIPSConfig:
    backbone_weights: str | None = None
    """torchvision-format AlexNet weights (``alexnet-owt-7be5be79.pth``), a local path."""
    linear_weights: str | None = None
    """LPIPS v0.1 linear-layer weights (``lpips/weights/v0.1/alex.pth``), a local path."""


@dataclass
class ModelConfig:
    in_channels: int = 3
    latent_dim: int = 16
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    gradient_checkpointing: bool = True
    shortcuts: bool = True
    """Non-parametric space-to-depth / depth-to-space shortcuts beside every resolution change
    (residual autoencoding, see blocks.py). False is the original plain-convolution network
    (kept for the ablation in docs/training_dynamics.md)."""
    norm: str = "channel"
    """Normalisation in the residual blocks: ``channel`` (per-position LayerNorm over channels,
    tiling-exact), ``group`` (GroupNorm with 8 groups: statistics over the whole clip, so tiled
    inference no longer equals untiled) or ``none``."""

    def encoder_factors(self) -> list[tuple[int, int, int]]:
        """(t, h, w) down-sampling factor of each encoder block."""
        e = self.encoder
        return [(2 if t else 1, 2 if s else 1, 2 if s else 1)
                for t, s in zip(e.temporal_downsample, e.spatial_downsample)]

    def decoder_factors(self) -> list[tuple[int, int, int]]:
        """(t, h, w) up-sampling factor of each decoder block."""
        d = self.decoder
        return [(2 if t else 1, 2 if s else 1, 2 if s else 1)
                for t, s in zip(d.temporal_upsample, d.spatial_upsample)]

    @property
    def compression(self) -> tuple[int, int, int]:
        """(t, h, w) compression of the latent grid: T/ft x H/fh x W/fw (the paper: 16 x 32 x 32)."""
        f = [1, 1, 1]
        for factor in self.encoder_factors():
            f = [a * b for a, b in zip(f, factor)]
        return tuple(f)


@dataclass
class InferenceConfig:
    tile_size: int = 512
    """Spatial tile (pixels, multiple of 32) for tiled encode/decode."""
    tile_overlap: int = 64
    chunk_frames: int = 32
    """Temporal chunk (frames, multiple of 16)."""
    chunk_overlap: int = 16
    tile_halo: int = 64
    """Extra context (pixels, multiple of 32) encoded around each tile and then cropped away."""
    chunk_halo: int = 16
    """Extra context (frames, multiple of 16) around each temporal chunk when encoding."""
    decode_halo: int = 256
    """Context (pixels) around each decoded tile; at least the decoder's receptive radius (8
    latent positions = 256 px for the paper decoder, 6 for debug) makes tiled decoding exact."""
    decode_halo_frames: int = 128
    """Context (frames) around each decoded chunk; the temporal radius is 8 latent frames, so the
    default decodes clips of up to 96 frames whole in time and tiles only in space."""


@dataclass
class DataConfig:
    scales: list[list[int]] = field(default_factory=lambda: [list(s) for s in PAPER_SCALES])
    """(W, H) resolution buckets, sampled uniformly per step."""
    frames: list[int] = field(default_factory=lambda: list(PAPER_FRAMES))
    hflip: bool = False
    """Training only: mirror each clip left-right with probability 1/2 (``pvq_model.train.augment``)."""
    reverse: bool = False
    """Training only: play each clip backwards with probability 1/2 (its real frames; padding stays last)."""


@dataclass
class TrainConfig:
    seed: int = 42
    steps: int = 800_000
    lr: float = 1e-5
    warmup_steps: int = 10_000
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.0
    fused_adam: bool = True
    """torch's fused Adam kernel (CPU and CUDA) for both the trainer's ZeRO-3 partitions and the
    plain loop: the same update, computed in one pass without temporaries. The unfused one builds
    full-size temporaries of the flat fp32 partition every step (at 130 M parameters on CPU,
    measured under cProfile: 0.71 s per step unfused, 0.10 s fused)."""
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    micro_batch: int = 4
    grad_accum: int = 4
    world_size: int = 64
    nodes: int = 8
    gpus_per_node: int = 8
    global_batch: int = 1024
    precision: str = "bf16"
    zero_stage: int = 3
    reduce_bucket_gib: float = 5.0
    checkpoint_every: int = 5_000
    keep_checkpoints: int = 3
    """Checkpoints kept under ``RUN/checkpoints`` (the newest ones); older ones are deleted after
    each save. 0 keeps every checkpoint."""
    pin_checkpoints: list[int] = field(default_factory=list)
    """Steps whose checkpoints are never pruned (e.g. ``[100000, 400000]``)."""
    data_path: str | None = None
    """Shard dataset (``pvq data shard`` output, local or s3://). ``None``: synthetic clips drawn
    per step with the same (bucket, frames) schedule (tests, benchmarks, demo without data)."""
    data_version: str | None = None
    """Dataset version to train on ("v000001"); default the dataset's LATEST at start."""
    data_buckets: list[str] | None = None
    """Bucket names ("WxH") to train on; default every bucket of the dataset."""
    num_workers: int = 0
    fixed_batch: bool = False
    """Repeat the first batch every step (overfitting checks): each slot's micro-batch of step 0, synthetic
    or from the shards."""
    log_every: int = 1
    image_metrics_every: int = 100
    """Log PSNR / SSIM of the step's reconstructions (valid frames) every this many steps; the
    training curves of the paper's Fig. 1. 0 disables."""
    dist_timeout_s: int = 1800
    """Timeout of every collective, so a rank stuck in rank-0-only work fails loudly."""
    persistence_threshold: int | None = None
    """ZeRO-3 ``stage3_param_persistence_threshold``; 0 shards even tiny test models."""
    zero3_leaf_blocks: bool = True
    """Gather each activation-checkpointing block (``Checkpointed``: an encoder/decoder stage, a
    mid block) and the quantizer as one ZeRO-3 unit (DeepSpeed leaf modules): one fetch/release
    hook pair per block instead of one per conv and norm inside it, the host overhead that made the
    trainer 0.3-0.5x a plain loop (benchmarks/train_step.py). Parameters and gradients are the same;
    a block's weights are gathered whole, at most one stage's worth (a few M parameters)."""
    mlflow_tracking_uri: str | None = None
    """Default: env MLFLOW_TRACKING_URI, else sqlite in the run directory."""
    mlflow_experiment: str = "pvq-vae"


@dataclass
class PVQConfig:
    name: str = "pvq-vae"
    model: ModelConfig = field(default_factory=ModelConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    lpips: LPIPSConfig = field(default_factory=LPIPSConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PVQConfig:
    """Load and validate a :class:`PVQConfig` from YAML plus ``key.path=value`` overrides."""
    return load_tree(PVQConfig, path, overrides, validate)


def config_from_dict(data: dict[str, Any]) -> PVQConfig:
    cfg = from_dict(PVQConfig, data)
    validate(cfg)
    return cfg


def validate(cfg: PVQConfig) -> None:
    """Cross-field checks; each error names the key path and the fix."""
    enc, dec, q = cfg.model.encoder, cfg.model.decoder, cfg.quantizer
    if len(enc.channels) != 5 or len(enc.temporal_downsample) != 5 or len(enc.spatial_downsample) != 5:
        raise ConfigError("model.encoder.channels / temporal_downsample / spatial_downsample: the encoder "
                          "has exactly 5 blocks")
    if len(dec.channels) != 3 or len(dec.temporal_upsample) != 3 or len(dec.spatial_upsample) != 3:
        raise ConfigError("model.decoder.channels / temporal_upsample / spatial_upsample: the decoder has "
                          "exactly 3 blocks")
    ft, fh, fw = cfg.model.compression
    up = [1, 1, 1]
    for factor in cfg.model.decoder_factors():
        up = [a * b for a, b in zip(up, factor)]
    pt, ph, pw = dec.out_patch
    if (up[0] * pt, up[1] * ph, up[2] * pw) != (ft, fh, fw):
        raise ConfigError(
            f"model.decoder.out_patch: the 3 up-blocks ({up[0]}x{up[1]}x{up[2]}) times out_patch "
            f"({pt}x{ph}x{pw}) must undo the encoder's compression {ft}x{fh}x{fw}")
    if 32 % fh or 16 % ft:
        raise ConfigError(f"model.encoder: compression {ft}x{fh}x{fw} must divide 16x32x32 (tiles and "
                          "chunks are multiples of 32 pixels and 16 frames)")
    if cfg.model.norm not in ("channel", "group", "none"):
        raise ConfigError(f"model.norm: {cfg.model.norm!r} is not one of channel, group, none")
    if not 0 <= enc.dwt_levels <= 4:
        raise ConfigError("model.encoder.dwt_levels: between 0 and 4")
    if not all(enc.spatial_downsample[:enc.dwt_levels if enc.dwt else 0]):
        raise ConfigError("model.encoder.dwt_levels: each DWT level halves H and W, so the first "
                          "dwt_levels blocks must down-sample space")
    if any(not 0 <= b < 5 for b in enc.fft_blocks):
        raise ConfigError("model.encoder.fft_blocks: block indices are 0..4")
    if q.dim != cfg.model.latent_dim:
        raise ConfigError(
            f"quantizer.dim ({q.dim}) must equal model.latent_dim ({cfg.model.latent_dim}): "
            "the latent is quantized as it is")
    from .quantizers import quantizer_class  # the registry (imports torch); it checks its own fields

    quantizer_class(q.type).check_config(q)
    if q.num_levels < 1:
        raise ConfigError("quantizer.num_levels: at least 1")
    inf = cfg.inference
    if inf.tile_size % 32 or inf.tile_overlap % 32 or inf.tile_overlap >= inf.tile_size:
        raise ConfigError("inference.tile_size / tile_overlap: multiples of 32, overlap < tile")
    if inf.chunk_frames % 16 or inf.chunk_overlap % 16 or inf.chunk_overlap >= inf.chunk_frames:
        raise ConfigError("inference.chunk_frames / chunk_overlap: multiples of 16, overlap < chunk")
    if inf.tile_halo % 32 or inf.decode_halo % 32 or inf.chunk_halo % 16 or inf.decode_halo_frames % 16:
        raise ConfigError("inference.*_halo: pixel halos are multiples of 32, frame halos of 16")
    for i, s in enumerate(cfg.data.scales):
        if len(s) != 2:
            raise ConfigError(f"data.scales[{i}]: expected [W, H]")
    if any(f % 16 for f in cfg.data.frames):
        raise ConfigError("data.frames: multiples of 16")
    t = cfg.train
    if t.micro_batch * t.grad_accum * t.world_size != t.global_batch:
        raise ConfigError(
            f"train.global_batch: micro_batch {t.micro_batch} x grad_accum {t.grad_accum} x "
            f"world_size {t.world_size} = {t.micro_batch * t.grad_accum * t.world_size}, "
            f"not {t.global_batch}")
    if t.nodes * t.gpus_per_node != t.world_size:
        raise ConfigError("train.world_size: must equal train.nodes x train.gpus_per_node")
    if cfg.alignment.weight > 0 and not cfg.alignment.teacher_path:
        raise ConfigError("alignment.teacher_path: required when alignment.weight > 0 "
                          "(a local diffusers AutoencoderKL directory)")
