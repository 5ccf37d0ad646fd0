"""`hybrid_standard` encoder: pair transformer pooled through a learned CLS token, then a
cross-attention set encoder (P learned queries over the D demo vectors, masked)."""
from __future__ import annotations

import torch
from torch import nn

from models.encoders.common import EncoderConfig, EncoderOutput, PairEncoder, SetEncoder


def _cls_output(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return h[:, 0]


class HybridStandardEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.pair = PairEncoder(cfg, cls_token=True)
        self.set_encoder = SetEncoder(cfg)

    def encode_set(self, demo_inputs: torch.Tensor, demo_labels: torch.Tensor, demo_mask: torch.Tensor,
                   demo_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """-> [B, P, H] set representation."""
        B, D, S = demo_inputs.shape
        cls = self.pair.pooled(demo_inputs.reshape(B * D, S), demo_labels.reshape(B * D, S),
                               demo_mask.reshape(B * D), _cls_output, demo_lengths)
        demos = cls.reshape(B, D, -1)  # CLS output per demo
        return self.set_encoder(demos, demo_mask)

    def forward(self, demo_inputs: torch.Tensor, demo_labels: torch.Tensor, demo_mask: torch.Tensor,
                demo_lengths: torch.Tensor | None = None) -> EncoderOutput:
        return EncoderOutput(context=self.encode_set(demo_inputs, demo_labels, demo_mask, demo_lengths))
