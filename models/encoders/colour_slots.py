"""`colour_slots` encoder: the `cell_perceiver` demo tokens, summarised per input colour.

Context = [10 colour slots ; P - 10 perceiver tokens]. Slot v is the mean of the (transformed)
per-cell pair tokens of every demo cell whose input colour is v (what v became, and how cells
of colour v moved), plus a learned identity embedding of v; a learned "absent" vector when no
demo shows v. The remaining P - 10 tokens are learned queries cross-attending over all demo
tokens (as in cell_perceiver), for rules that are not about colours. With
`arch.context_colour_table=true` the inner model also adds slot v to the input embedding of
every query cell of colour v, so "what does my colour become" needs no attention hop.

Needs puzzle_emb_len > 10. PAD cells, EOS cells and masked demo slots feed no slot; demo order
does not matter.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from dataset.tokens import COLOUR_OFFSET, NUM_COLOURS  # colour c is token c + 2
from models.encoders.cell_perceiver import CellPerceiverEncoder
from models.encoders.common import EncoderConfig, EncoderOutput, SetEncoder
from models.layers import Linear, rms_norm, trunc_normal_



class ColourSlotEncoder(CellPerceiverEncoder):
    colour_table = True  # the first NUM_COLOURS context tokens are indexed by input colour

    def __init__(self, cfg: EncoderConfig):
        if cfg.puzzle_emb_len <= NUM_COLOURS:
            raise ValueError(f"colour_slots needs puzzle_emb_len > {NUM_COLOURS} (10 colour slots + perceiver tokens), "
                             f"got {cfg.puzzle_emb_len}")
        super().__init__(cfg)
        H = cfg.hidden_size
        self.set_encoder = SetEncoder(replace(cfg, puzzle_emb_len=cfg.puzzle_emb_len - NUM_COLOURS))
        self.slot_identity = nn.Parameter(trunc_normal_(torch.empty(NUM_COLOURS, H), std=1.0))
        self.slot_absent = nn.Parameter(trunc_normal_(torch.empty(H), std=1.0))
        self.slot_proj = Linear(H, H)

    def forward(self, demo_inputs: torch.Tensor, demo_labels: torch.Tensor, demo_mask: torch.Tensor,
                demo_lengths: torch.Tensor | None = None) -> EncoderOutput:
        h, mask = self.tokens(demo_inputs, demo_labels, demo_mask, demo_lengths)          # [B, N, H], [B, N]
        colour = demo_inputs.reshape(h.shape[0], -1) - COLOUR_OFFSET        # [B, N]
        is_colour = mask & (colour >= 0) & (colour < NUM_COLOURS)
        onehot = torch.nn.functional.one_hot(colour.clamp(0, NUM_COLOURS - 1), NUM_COLOURS).to(h.dtype)
        onehot = onehot * is_colour.unsqueeze(-1).to(h.dtype)               # [B, N, 10]
        counts = onehot.sum(1)                                              # [B, 10]
        slots = torch.einsum("bnk,bnh->bkh", onehot, h) / counts.clamp_min(1.0).unsqueeze(-1)
        present = (counts > 0).unsqueeze(-1)
        slots = torch.where(present, self.slot_proj(slots), self.slot_absent.to(h.dtype))
        slots = rms_norm(slots + self.slot_identity.to(h.dtype))
        return EncoderOutput(context=torch.cat([slots, self.set_encoder(h, mask)], dim=1))
