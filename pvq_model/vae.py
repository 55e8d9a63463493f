"""PVQVAE: encode / quantize / decode / forward, tokenize / detokenize, tiled + chunked inference,
and save / load of plain (non-DeepSpeed) checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .blocks import set_checkpointing
from .config import PVQConfig, config_from_dict
from .decoder import Decoder
from .encoder import Encoder
from .quantizers import QuantizerOutput, build_quantizer
from .tiling import TileSpec, tiled_apply, tiled_stream

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"


class VAEOutput(NamedTuple):
    recon: Tensor
    """(B, C, T, H, W) reconstruction, cropped back to the input size."""
    quant: QuantizerOutput
    latent: Tensor
    """(B, D, T/ft, H/fh, W/fw) continuous latent before quantization (the paper: 16 x 32 x 32)."""
    frame_features: Tensor
    """(B, C0, T, H/2, W/2) frame-wise encoder features (alignment loss)."""


def pad_to_grid(x: Tensor, factor: tuple[int, int, int] = (16, 32, 32)) -> tuple[Tensor, tuple[int, int, int]]:
    """Pad (B, C, T, H, W) to T % ft == 0 (zero frames) and H % fh, W % fw == 0 (edge replicate),
    with ``factor`` = (ft, fh, fw) the model's compression (the paper's 16 x 32 x 32 by default).

    Returns the padded clip and the original (T, H, W). 720p and 1080p, whose heights are not
    multiples of 32, are padded to 736 and 1088 and cropped back after decoding."""
    t, h, w = x.shape[2:]
    pt, ph, pw = (-t) % factor[0], (-h) % factor[1], (-w) % factor[2]
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph, 0, 0), mode="replicate")
    if pt:
        x = F.pad(x, (0, 0, 0, 0, 0, pt))
    return x, (t, h, w)


class PVQVAE(nn.Module):
    def __init__(self, cfg: PVQConfig):
        super().__init__()
        self.cfg = cfg
        self.factor = cfg.model.compression
        self.encoder = Encoder(cfg.model)
        self.quantizer = build_quantizer(cfg.quantizer)
        self.decoder = Decoder(cfg.model)
        if cfg.alignment.weight > 0:
            from .alignment import AlignmentHeads

            self.alignment = AlignmentHeads(cfg.model.encoder.channels[0], cfg.alignment)
        else:
            self.alignment = None
        self.set_gradient_checkpointing(cfg.model.gradient_checkpointing)

    # ------------------------------------------------------------------ core
    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Activation checkpointing of every encoder/decoder block (active in training only)."""
        set_checkpointing(self, enabled)

    def encode(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) in [-1, 1], any size -> continuous latent (B, D, ceil(T/ft), ceil(H/fh), ceil(W/fw))."""
        x, _ = pad_to_grid(x, self.factor)
        return self.encoder(x).latent

    def quantize(self, z: Tensor) -> QuantizerOutput:
        """(B, D, t, h, w) continuous latent -> :class:`QuantizerOutput`."""
        return self.quantizer(z)

    def decode(self, zq: Tensor, size: tuple[int, int, int] | None = None) -> Tensor:
        """(B, D, t, h, w) quantized latent -> (B, C, ft t, fh h, fw w), cropped to ``size`` (T, H, W)."""
        x = self.decoder(zq)
        if size is not None:
            x = x[:, :, : size[0], : size[1], : size[2]]
        return x

    def forward(self, x: Tensor) -> VAEOutput:
        """(B, C, T, H, W) in [-1, 1] -> :class:`VAEOutput` with a reconstruction of the same size."""
        xp, size = pad_to_grid(x, self.factor)
        enc = self.encoder(xp)
        quant = self.quantizer(enc.latent)
        recon = self.decode(quant.quantized.to(enc.latent.dtype), size)
        return VAEOutput(recon, quant, enc.latent, enc.frame_features)

    @torch.no_grad()
    def tokenize(self, x: Tensor) -> Any:
        """(B, C, T, H, W) -> token indices (a tensor, or one tensor per level for residual quantizers)."""
        return self.quantizer(self.encode(x)).indices

    @torch.no_grad()
    def detokenize(self, indices: Any, size: tuple[int, int, int] | None = None) -> Tensor:
        """Token indices from :meth:`tokenize` -> (B, C, T, H, W) clip."""
        return self.decode(self.quantizer.decode_indices(indices), size)

    @torch.no_grad()
    def data_init(self, x: Tensor) -> None:
        """Data-dependent quantizer initialisation from a first batch (B, C, T, H, W)."""
        self.quantizer.data_init(self.encode(x))

    # ------------------------------------------------------------------ tiled inference
    def _specs(self, tile: int | None = None, overlap: int | None = None) -> tuple[TileSpec, TileSpec]:
        inf = self.cfg.inference
        tile = tile or inf.tile_size
        overlap = inf.tile_overlap if overlap is None else overlap
        enc = TileSpec(tile=(inf.chunk_frames, tile, tile), overlap=(inf.chunk_overlap, overlap, overlap),
                       halo=(inf.chunk_halo, inf.tile_halo, inf.tile_halo))
        ft, fh, fw = self.factor
        dec = TileSpec(tile=(inf.chunk_frames // ft, tile // fh, tile // fw),
                       overlap=(inf.chunk_overlap // ft, overlap // fh, overlap // fw),
                       halo=(inf.decode_halo_frames // ft, inf.decode_halo // fh, inf.decode_halo // fw))
        return enc, dec

    def grid_size(self, size: tuple[int, int, int]) -> tuple[int, int, int]:
        """(T, H, W) of a clip padded to the latent grid by :func:`pad_to_grid`."""
        return tuple(n + (-n) % f for n, f in zip(size, self.factor))

    @torch.no_grad()
    def encode_stream(self, read, size: tuple[int, int, int], progress=None) -> Tensor:
        """:meth:`encode_tiled` of a clip that is read window by window: ``read(t0, t1, h0, h1, w0, w1)``
        returns (1, C, t1-t0, h1-h0, w1-w0) of the clip padded as :func:`pad_to_grid` pads it, whose
        padded size is ``size`` (:meth:`grid_size`), with non-decreasing t0, t1. Returns the latent
        (1, D, T/ft, H/fh, W/fw); it is small (1080p x 96 frames: 0.8 MB)."""
        enc, _ = self._specs()
        inv = tuple(1 / f for f in self.factor)
        parts: list[Tensor] = []
        tiled_stream(lambda c: self.encoder(c).latent, read, size, enc, inv, lambda t, y: parts.append(y),
                     progress, next(self.parameters()).device)
        return torch.cat(parts, 2)

    @torch.no_grad()
    def encode_tiled(self, x: Tensor, progress=None) -> Tensor:
        """Like :meth:`encode` with bounded memory: spatial tiles and temporal chunks of the clip."""
        x, _ = pad_to_grid(x, self.factor)
        return self.encode_stream(lambda t0, t1, h0, h1, w0, w1: x[:, :, t0:t1, h0:h1, w0:w1],
                                  tuple(x.shape[2:]), progress)

    @torch.no_grad()
    def decode_stream(self, zq: Tensor, emit, size: tuple[int, int, int] | None = None, progress=None) -> None:
        """Decode ``zq`` (1, D, t, h, w) chunk by chunk: ``emit(t0, frames)`` receives the output frames
        [t0, t0 + n) in order, ``frames`` (1, C, n, H, W) cropped to ``size`` (T, H, W); frames past
        ``size[0]`` (the zero frames padded to the grid) are not emitted. Only one temporal chunk of
        output exists at a time."""
        _, dec = self._specs()
        t_max = None if size is None else size[0]

        def crop(t0: int, y: Tensor) -> None:
            if size is not None:
                if t0 >= t_max:
                    return
                y = y[:, :, : t_max - t0, : size[1], : size[2]]
            emit(t0, y)

        tiled_stream(self.decoder, lambda t0, t1, h0, h1, w0, w1: zq[:, :, t0:t1, h0:h1, w0:w1],
                     tuple(zq.shape[2:]), dec, self.factor, crop, progress, zq.device)

    @torch.no_grad()
    def decode_tiled(self, zq: Tensor, size: tuple[int, int, int] | None = None, progress=None) -> Tensor:
        """Like :meth:`decode` with bounded memory; equal to it when the decode halo covers the
        decoder's receptive field (the default does)."""
        parts: list[Tensor] = []
        self.decode_stream(zq, lambda t, y: parts.append(y), size, progress)
        return torch.cat(parts, 2)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, tiled: bool = True, progress=None) -> tuple[Tensor, QuantizerOutput]:
        """Encode (tiled), quantize the whole latent at once (it is small), decode (tiled)."""
        if not tiled:
            out = self(x)
            return out.recon, out.quant
        size = tuple(x.shape[2:])
        z = self.encode_tiled(x, progress)
        quant = self.quantizer(z)
        return self.decode_tiled(quant.quantized, size, progress), quant

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write ``model.safetensors`` (fp32) and the resolved ``config.yaml``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().float().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, directory / WEIGHTS_FILE, metadata={"format": "pt", **{k: json.dumps(v) for k, v in (extra or {}).items()}})
        (directory / CONFIG_FILE).write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str = "cpu") -> "PVQVAE":
        directory = Path(directory)
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} not found: expected a directory written by "
                                        "PVQVAE.save_pretrained or the training export")
        cfg = config_from_dict(yaml.safe_load((directory / CONFIG_FILE).read_text()))
        model = cls(cfg)
        model.load_state_dict(load_file(directory / WEIGHTS_FILE, device=map_location))
        return model.eval()
