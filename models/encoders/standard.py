"""`standard` encoder: pair transformer -> per-pair pooling (mean over non-PAD tokens, or
learned-query attention) -> masked mean over demos -> linear projection to P context tokens."""
from __future__ import annotations

import torch
from torch import nn

from models.encoders.common import AttentionPool, EncoderConfig, EncoderOutput, PairEncoder, masked_mean
from models.layers import Linear, rms_norm


class StandardEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.pair = PairEncoder(cfg)
        self.pool = AttentionPool(cfg.hidden_size, cfg.num_heads) if cfg.pooling == "attention" else None
        self.proj = Linear(cfg.hidden_size, cfg.puzzle_emb_len * cfg.hidden_size)

    def forward(self, demo_inputs: torch.Tensor, demo_labels: torch.Tensor, demo_mask: torch.Tensor,
                demo_lengths: torch.Tensor | None = None) -> EncoderOutput:
        B, D, S = demo_inputs.shape
        pool = masked_mean if self.pool is None else self.pool
        pooled = self.pair.pooled(demo_inputs.reshape(B * D, S), demo_labels.reshape(B * D, S),
                                  demo_mask.reshape(B * D), pool, demo_lengths)                # [B*D, H]
        puzzle = masked_mean(pooled.view(B, D, -1), demo_mask)                    # [B, H]
        context = rms_norm(self.proj(puzzle).view(B, self.cfg.puzzle_emb_len, self.cfg.hidden_size))
        return EncoderOutput(context=context)
