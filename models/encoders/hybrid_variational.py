"""`hybrid_variational` encoder: hybrid_standard followed by a VAE bottleneck. The set encoder's
P outputs are mean-pooled to one vector -> (mu, logvar) -> z -> linear back to P x H.
Returns kl [B] = KL(q(z | demos) || N(0, I)); z = mu in eval."""
from __future__ import annotations

import torch

from models.encoders.common import EncoderConfig, EncoderOutput, VariationalBottleneck
from models.encoders.hybrid_standard import HybridStandardEncoder


class HybridVariationalEncoder(HybridStandardEncoder):
    def __init__(self, cfg: EncoderConfig):
        super().__init__(cfg)
        self.bottleneck = VariationalBottleneck(cfg)

    def forward(self, demo_inputs: torch.Tensor, demo_labels: torch.Tensor, demo_mask: torch.Tensor,
                demo_lengths: torch.Tensor | None = None) -> EncoderOutput:
        pooled = self.encode_set(demo_inputs, demo_labels, demo_mask, demo_lengths).mean(dim=1)  # [B, H]
        context, kl = self.bottleneck(pooled)
        return EncoderOutput(context=context, kl=kl)
