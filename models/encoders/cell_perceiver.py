"""`cell_perceiver` encoder: per-cell input/output pair tokens, a transformer inside each demo,
then P learned queries cross-attending over every token of every demo (no pooling per demo).

Why: a pooled demo vector (`standard`, `hybrid_*`) averages away rules that barely change a
demo's colour statistics (exchanging two colours) or only move cells (reflections). Here cell
(r, c) of a demo is one token, embed_in(input token) + embed_out(output token), so "colour a
became b here" is in a single token; blocks with 2-D rotary positions relate neighbouring cells
(shifts, flips), and the set encoder's queries can pick out the few tokens that carry the rule
instead of averaging them with the many unchanged cells.

PAD: a cell that is PAD in both grids is masked as a key in the demo transformer and in the
set encoder; masked demo slots contribute no tokens. Order of the demos does not matter.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from models.encoders.common import EncoderConfig, EncoderOutput, SetEncoder
from models.grid_features import GridFeatureEmbedding, grid_features
from models.layers import Block, Embedding, grid_positions, rope_2d


class CellPerceiverEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        H = cfg.hidden_size
        self.pad_id = cfg.pad_id
        self.embed_scale = math.sqrt(H)
        self.embed_in = Embedding(cfg.vocab_size, H, init_std=1.0 / self.embed_scale)
        self.embed_out = Embedding(cfg.vocab_size, H, init_std=1.0 / self.embed_scale)
        self.layers = nn.ModuleList([Block(H, cfg.num_heads, cfg.expansion) for _ in range(cfg.num_layers)])
        # grid_features: what each cell is part of in its input grid and in its output grid (zero at init)
        self.feat_in = GridFeatureEmbedding(H) if cfg.grid_features else None
        self.feat_out = GridFeatureEmbedding(H) if cfg.grid_features else None
        self.set_encoder = SetEncoder(cfg)
        rows, cols = grid_positions(cfg.side)
        cos, sin = rope_2d(rows, cols, H // cfg.num_heads, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def tokens(self, demo_inputs: torch.Tensor, demo_labels: torch.Tensor, demo_mask: torch.Tensor):
        """-> per-cell tokens [B, D*S, H] and their key mask [B, D*S] (True = real)."""
        B, D, S = demo_inputs.shape
        x_in, x_out = demo_inputs.reshape(B * D, S), demo_labels.reshape(B * D, S)
        mask = (x_in != self.pad_id) | (x_out != self.pad_id)  # [B*D, S]
        h = self.embed_scale * (self.embed_in(x_in) + self.embed_out(x_out))
        if self.feat_in is not None:
            h = h + self.feat_in(grid_features(x_in, self.cfg.side)) + self.feat_out(grid_features(x_out, self.cfg.side))
        cos_sin = (self.rope_cos, self.rope_sin)
        for layer in self.layers:
            h = layer(h, cos_sin=cos_sin, key_mask=mask)
        token_mask = mask.view(B, D, S) & demo_mask[:, :, None]
        return h.reshape(B, D * S, -1), token_mask.reshape(B, D * S)

    def forward(self, demo_inputs: torch.Tensor, demo_labels: torch.Tensor, demo_mask: torch.Tensor,
                demo_lengths: torch.Tensor | None = None) -> EncoderOutput:  # demo_lengths: no packing plan here
        h, mask = self.tokens(demo_inputs, demo_labels, demo_mask)
        return EncoderOutput(context=self.set_encoder(h, mask))
