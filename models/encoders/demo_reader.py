"""The demo reader: every real demo cell as one token the inner model can attend to
(`arch.demo_attention=true`).

A pair transformer (PairEncoder: token + input/output segment embedding, 2-D rotary row/column
inside the pair's own grid) encodes each real demo pair at its own size (the packed layout of
`common.py`: only real demo slots, only their non-PAD cells, in length buckets). Its tokens are
then laid out per sample, every pair of the sample one after the other, [B, T, H] with T the
batch's longest sample rounded up to a bucket, plus each token's row and column (for the inner
model's cross-attention rotary) and a key mask. A token's pair identity is its state: tokens
attend only within their own pair, so no demo-index embedding (which would make the reading
depend on the demos' order) is needed.

`packed=False` encodes every demo slot at the full 2S layout (PAD masked as keys) and gathers
the same tokens: the same math, the reference the tests compare against.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from models.encoders.common import EncoderConfig, PairEncoder, pack_bucket, packing_plan


@dataclass
class DemoTokens:
    states: torch.Tensor   # [B, T, H] demo cell states (0 where not real)
    rows: torch.Tensor     # [B, T] long, row of the cell in its grid
    cols: torch.Tensor     # [B, T] long, column of the cell in its grid
    mask: torch.Tensor     # [B, T] bool, True = a real demo cell


class DemoReader(PairEncoder):
    def __init__(self, cfg: EncoderConfig):
        super().__init__(cfg)
        self.side, self.S = cfg.side, cfg.seq_len

    # torch.compile: the packing plan and the bucket loop run eagerly (as PairEncoder.pooled)
    @torch.compiler.disable(recursive=False)
    def forward(self, demo_inputs: torch.Tensor, demo_labels: torch.Tensor, demo_mask: torch.Tensor,
                lengths: torch.Tensor | None = None) -> DemoTokens:
        """`lengths`: the host's real-token counts of the demo pairs [B, D] (the batch's `demo_lengths`):
        the layout's length and the packing plan then need no device read."""
        B, D, S = demo_inputs.shape
        inputs, labels = demo_inputs.reshape(B * D, S), demo_labels.reshape(B * D, S)
        tokens = torch.cat([inputs, labels], dim=1)                             # [N, 2S]
        select = demo_mask.reshape(-1)
        real = (tokens != self.pad_id) & select[:, None]
        counts = real.sum(1).view(B, D)
        start = (counts.cumsum(1) - counts).view(-1)                            # each pair's first slot
        # the longest sample picks the shape: from the host's counts, else read from the device (a sync)
        longest = int(lengths.numpy().sum(1).max() if lengths is not None else counts.sum(1).max()) if B else 0
        T = pack_bucket(longest, D * 2 * S)
        if self.packed:
            groups = packing_plan(real, select, lengths)
        else:  # every slot at the full layout; the scatter below keeps the same real tokens
            index = torch.arange(2 * S, device=tokens.device).expand(B * D, -1)
            groups = [(torch.arange(B * D, device=tokens.device), index, real)]
        feats = self.feature_ids(tokens)
        H = self.embed_tokens.weight.shape[1]
        # one column more than the layout: every token of a group is scattered (static shapes, no
        # boolean indexing, which would read the device), those that are not real into column T, dropped
        states = self.embed_tokens.weight.new_zeros(B, T + 1, H)
        pos = tokens.new_zeros(B, T + 1)
        mask = torch.zeros(B, T + 1, dtype=torch.bool, device=tokens.device)
        for group, order, g_mask in groups:
            g_feats = None if feats is None else feats[group].gather(1, order[..., None].expand(-1, -1, feats.shape[-1]))
            h = self.forward_tokens(tokens[group].gather(1, order), order, g_mask, g_feats)
            if self.packed:  # real tokens come first: token j of a pair goes to slot start + j
                slot = start[group][:, None] + torch.arange(order.shape[1], device=order.device)
            else:            # padded layout: the j-th real token of the pair goes to slot start + j
                slot = start[group][:, None] + g_mask.cumsum(1) - 1
            b_idx, t_idx = (group // D)[:, None].expand_as(order), torch.where(g_mask, slot, T)
            states = states.index_put((b_idx, t_idx), h.to(states.dtype))
            pos = pos.index_put((b_idx, t_idx), order)
            mask = mask.index_put((b_idx, t_idx), g_mask)
        states, pos, mask = states[:, :T], pos[:, :T], mask[:, :T]
        cell = pos % S
        return DemoTokens(states=states, rows=cell // self.side, cols=cell % self.side, mask=mask)
