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

from models.encoders.common import EncoderConfig, EncoderOutput, SetEncoder, packing_plan
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
        self.packed = cfg.packed   # encode each real demo at its real cells only (same math as padded)
        rows, cols = grid_positions(cfg.side)
        cos, sin = rope_2d(rows, cols, H // cfg.num_heads, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def tokens(self, demo_inputs: torch.Tensor, demo_labels: torch.Tensor, demo_mask: torch.Tensor,
               lengths: torch.Tensor | None = None):
        """-> per-cell tokens [B, D*S, H] and their key mask [B, D*S] (True = real; the other tokens are
        not meaningful).
        `lengths`: the host's real-token counts of the demo pairs [B, D] (the batch's `demo_lengths`,
        input + output cells: at least the cells either grid covers), so the packing plan needs no
        device read."""
        B, D, S = demo_inputs.shape
        x_in, x_out = demo_inputs.reshape(B * D, S), demo_labels.reshape(B * D, S)
        select = demo_mask.reshape(-1)
        cells = (x_in != self.pad_id) | (x_out != self.pad_id)    # [B*D, S]: a cell of either grid
        mask = cells & select[:, None]
        h = self.embed_scale * (self.embed_in(x_in) + self.embed_out(x_out))
        if self.feat_in is not None:
            h = h + self.feat_in(grid_features(x_in, self.cfg.side)) + self.feat_out(grid_features(x_out, self.cfg.side))
        if self.packed:
            h = self._blocks_packed(h, mask, select, lengths)
        else:
            for layer in self.layers:
                h = layer(h, cos_sin=(self.rope_cos, self.rope_sin), key_mask=cells)
        return h.reshape(B, D * S, -1), mask.reshape(B, D * S)

    # torch.compile: the packing plan and the bucket loop run eagerly (as PairEncoder.pooled)
    @torch.compiler.disable(recursive=False)
    def _blocks_packed(self, h: torch.Tensor, mask: torch.Tensor, select: torch.Tensor,
                       lengths: torch.Tensor | None) -> torch.Tensor:
        """The blocks over each real demo's real cells only (PAD cells are masked keys in the padded
        layout: dropping them changes nothing but the cost), in length buckets; -> [B*D, S, H], 0 at
        the cells not computed. Most of a 30x30 canvas is PAD on ARC-AGI-1."""
        out = torch.zeros_like(h)
        H = h.shape[-1]
        for group, order, g_mask in packing_plan(mask, select, lengths):
            g = h[group].gather(1, order[..., None].expand(-1, -1, H))
            cos_sin = (self.rope_cos[order], self.rope_sin[order])   # each cell keeps its own position
            for layer in self.layers:
                g = layer(g, cos_sin=cos_sin, key_mask=g_mask)
            rows = group[:, None].expand_as(order)
            out = out.index_put((rows, order), g * g_mask[..., None].to(g.dtype))  # the bucket's tail: 0
        return out

    def forward(self, demo_inputs: torch.Tensor, demo_labels: torch.Tensor, demo_mask: torch.Tensor,
                demo_lengths: torch.Tensor | None = None) -> EncoderOutput:
        h, mask = self.tokens(demo_inputs, demo_labels, demo_mask, demo_lengths)
        return EncoderOutput(context=self.set_encoder(h, mask))
