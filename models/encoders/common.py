"""Pieces shared by the demo encoders: config, output type, the per-pair transformer, pooling,
the cross-attention set encoder and the variational bottleneck.

Every encoder maps (demo_inputs [B, D, S], demo_labels [B, D, S], demo_mask [B, D] bool) to
EncoderOutput(context [B, P, H], kl [B] | None). PAD tokens and masked-out demo slots never
influence the context: PAD keys are masked in attention and excluded from pooling, and masked
demo slots are excluded from aggregation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.grid_features import GridFeatureEmbedding, grid_features
from models.layers import Attention, Block, CrossBlock, Embedding, Linear, grid_positions, rms_norm, rope_2d, trunc_normal_

POOLING_METHODS = ("mean", "attention")


@dataclass
class EncoderConfig:
    hidden_size: int
    num_heads: int
    seq_len: int                 # S = side * side tokens per grid
    vocab_size: int = 12
    puzzle_emb_len: int = 16     # P context tokens produced
    num_layers: int = 2          # pair-encoder transformer blocks
    expansion: float = 4.0
    pooling: str = "mean"        # standard encoder: "mean" | "attention"
    set_layers: int = 2          # hybrid encoders: cross-attention set-encoder layers
    latent_dim: int = 0          # variational: latent size (0 -> hidden_size)
    rope_theta: float = 10000.0
    pad_id: int = 0
    packed: bool = True          # encode each real demo pair at its own size (see PairEncoder)
    grid_features: bool = False  # add the per-cell grid features of models/grid_features.py to each cell token

    def __post_init__(self):
        side = math.isqrt(self.seq_len)
        if side * side != self.seq_len:
            raise ValueError(f"seq_len {self.seq_len} is not a square canvas")
        if self.pooling not in POOLING_METHODS:
            raise ValueError(f"unknown pooling {self.pooling!r}; valid: {list(POOLING_METHODS)}")

    @property
    def side(self) -> int:
        return math.isqrt(self.seq_len)


@dataclass
class EncoderOutput:
    context: torch.Tensor            # [B, P, H]
    kl: torch.Tensor | None = None   # [B] KL(q || N(0, I)) per sample, variational only


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x [..., L, H] over L where mask [..., L] is True; 0 where nothing is True."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(-2) / m.sum(-2).clamp_min(1.0)


# Packed lengths are rounded up to one of these (then capped at the padded length), so a batch
# runs a handful of shapes (few torch.compile recompiles) while wasting at most ~25% of a bucket.
PACK_BUCKETS = (32, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024, 1280, 1536, 1792, 2048)


def pack_bucket(n: int, cap: int) -> int:
    """Smallest bucket length >= n, at most `cap` (the padded length)."""
    for b in PACK_BUCKETS:
        if b >= n:
            return min(b, cap)
    return min(-(-n // 256) * 256, cap)


def host_to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on `device`; to a GPU through pinned memory, so the copy is queued, not waited for."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@torch.compiler.disable  # a data-dependent shape
def selected_rows(select: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Indices [n] (on select's device) of the rows select [N] marks: from the host's `lengths`
    (a CPU tensor, > 0 on exactly those rows: packing_plan) without reading the device, else
    select.nonzero() (one host sync)."""
    if lengths is None:
        return select.nonzero().squeeze(1)
    return host_to_device(np.flatnonzero(lengths.numpy().reshape(-1) > 0), select.device)


# data-dependent shapes: runs eagerly under torch.compile (no graph to capture)
@torch.compiler.disable
def packing_plan(real: torch.Tensor, select: torch.Tensor, lengths: torch.Tensor | None = None
                 ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """How to encode rows of a padded layout at their own length. real: [N, L] bool (real tokens);
    select: [N] bool (rows that matter). -> one (rows [n], order [n, b], mask [n, b]) per bucket
    length b: the selected rows of that bucket, the indices of their tokens in the padded layout
    (real tokens first, in layout order, then the tail) and which of those are real.

    The lengths pick the shapes, so they must be known on the host: `lengths` (a CPU tensor [N],
    each selected row's real-token count, 0 for the others: a real demo pair has cells) gives
    them without reading the device (the batch's `demo_lengths`, carried by the ACT carry); without
    it they are read from the device (one host sync)."""
    if lengths is not None:
        host = lengths.numpy().reshape(-1)
        rows_host = np.flatnonzero(host > 0)
        lengths_host = host[rows_host]
    else:
        rows_host = select.nonzero().squeeze(1).cpu().numpy()
        lengths_host = real[torch.from_numpy(rows_host).to(real.device)].sum(1).cpu().numpy()
    buckets = np.array([pack_bucket(int(n), real.shape[1]) for n in lengths_host], dtype=np.int64)
    plan = []
    for b in sorted(set(buckets.tolist())):
        group = host_to_device(rows_host[buckets == b], real.device)
        g_real = real[group]
        # real tokens first, in layout order (stable sort of the PAD flag), then the tail;
        # contiguous whether or not b cuts the row (a stride change would recompile forward_tokens)
        order = torch.argsort((~g_real).to(torch.uint8), dim=1, stable=True)[:, :b].contiguous()
        plan.append((group, order, g_real.gather(1, order)))
    return plan


class PairEncoder(nn.Module):
    """Transformer over one demo pair: the input grid's S tokens then the output grid's S tokens.

    Positions: 2-D rotary (row, col) inside each grid, the same for input and output cells, which
    are told apart by a learned segment embedding. Attention offsets therefore depend only on
    row/column differences, so a grid keeps its meaning whatever the canvas size. PAD tokens are
    masked as keys. With `cls_token`, a learned CLS token is prepended (identity rotation).

    Two layouts, the same math (to float tolerance):
    - padded (`forward`, and `pooled` with packed=False): every pair at 2S tokens, PAD masked;
    - packed (`pooled` with packed=True, the default): only the real demo slots are encoded, each
      as its non-PAD tokens only (in canvas order, each keeping its own rotary position and
      segment), grouped into buckets of similar length (PACK_BUCKETS) with the bucket's tail
      masked. PAD tokens are never attended to, and pooling ignores them, so dropping them
      changes nothing but the cost (on ARC-AGI-1 ~95% of the padded encoder tokens are PAD)."""

    def __init__(self, cfg: EncoderConfig, cls_token: bool = False):
        super().__init__()
        H = cfg.hidden_size
        self.pad_id = cfg.pad_id
        self.packed = cfg.packed
        self.embed_scale = math.sqrt(H)
        self.embed_tokens = Embedding(cfg.vocab_size, H, init_std=1.0 / self.embed_scale)
        self.embed_segment = Embedding(2, H, init_std=1.0 / self.embed_scale)  # 0 input, 1 output
        self.cls = nn.Parameter(trunc_normal_(torch.empty(H), std=1.0)) if cls_token else None
        self.layers = nn.ModuleList([Block(H, cfg.num_heads, cfg.expansion) for _ in range(cfg.num_layers)])
        self.side = cfg.side
        self.grid_embed = GridFeatureEmbedding(H) if cfg.grid_features else None

        rows, cols = grid_positions(cfg.side)
        rows, cols = rows.repeat(2), cols.repeat(2)
        if cls_token:
            rows = torch.cat([torch.zeros(1, dtype=rows.dtype), rows])
            cols = torch.cat([torch.zeros(1, dtype=cols.dtype), cols])
        cos, sin = rope_2d(rows, cols, H // cfg.num_heads, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("segment_ids", torch.arange(2).repeat_interleave(cfg.seq_len), persistent=False)

    def feature_ids(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """[N, 2S] pairs (input | output) -> the grid feature ids of each cell [N, 2S, F] (each grid's
        own), or None without `grid_features`."""
        if self.grid_embed is None:
            return None
        return torch.cat(grid_features(tokens.view(tokens.shape[0], 2, -1), self.side).unbind(1), dim=1)

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded layout. inputs, labels: [N, S] -> hidden [N, L, H], key mask [N, L] (L = 2S,
        +1 with CLS)."""
        tokens = torch.cat([inputs, labels], dim=1)  # [N, 2S]
        mask = tokens != self.pad_id
        h = self.embed_scale * (self.embed_tokens(tokens) + self.embed_segment(self.segment_ids)[None])
        if self.grid_embed is not None:
            h = h + self.grid_embed(self.feature_ids(tokens))
        if self.cls is not None:
            N = tokens.shape[0]
            h = torch.cat([self.cls.to(h.dtype).expand(N, 1, -1), h], dim=1)
            mask = torch.cat([mask.new_ones(N, 1), mask], dim=1)
        cos_sin = (self.rope_cos, self.rope_sin)
        for layer in self.layers:
            h = layer(h, cos_sin=cos_sin, key_mask=mask)
        return h, mask

    def forward_tokens(self, tokens: torch.Tensor, index: torch.Tensor, mask: torch.Tensor,
                       feats: torch.Tensor | None = None) -> torch.Tensor:
        """Packed layout for a group of pairs. tokens, index, mask: [n, l]; `index` is each token's
        place in the padded [input | output] layout (0..2S-1), which gives its segment and its
        rotary position; mask = real token; feats: their grid feature ids [n, l, F] (grid_features).
        -> hidden [n, l (+1 with CLS), H]."""
        h = self.embed_scale * (self.embed_tokens(tokens) + self.embed_segment(self.segment_ids[index]))
        if self.grid_embed is not None:
            h = h + self.grid_embed(feats)
        pos = index
        if self.cls is not None:
            n = tokens.shape[0]
            h = torch.cat([self.cls.to(h.dtype).expand(n, 1, -1), h], dim=1)
            mask = torch.cat([mask.new_ones(n, 1), mask], dim=1)
            pos = torch.cat([index.new_zeros(n, 1), index + 1], dim=1)
        cos_sin = (self.rope_cos[pos], self.rope_sin[pos])  # [n, l, head_dim]: per-token positions
        for layer in self.layers:
            h = layer(h, cos_sin=cos_sin, key_mask=mask)
        return h

    # torch.compile: this frame (the data-dependent packing plan and the bucket loop) runs eagerly;
    # the frames it calls (forward_tokens, pool) are still compiled, each once per bucket shape
    # until automatic dynamic shapes makes n and l symbolic. One break instead of one per bucket.
    @torch.compiler.disable(recursive=False)
    def pooled(self, inputs: torch.Tensor, labels: torch.Tensor, select: torch.Tensor, pool,
               lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Encode pairs and pool each to one vector. inputs, labels: [N, S]; select: [N] bool, the
        pairs that matter (real demo slots); pool(h [n, L, H], key mask [n, L]) -> [n, H].
        -> [N, H]. Packed: unselected rows are 0 and are never computed. Padded: every row is
        computed (unselected ones are garbage, to be masked out by the caller). `lengths`: the host's
        real-token counts of the rows (packing_plan), None = read them from the device."""
        if not self.packed:
            h, mask = self.forward(inputs, labels)
            return pool(h, mask)
        tokens = torch.cat([inputs, labels], dim=1)              # [N, 2S]
        feats = self.feature_ids(tokens)
        out = None
        for group, order, mask in packing_plan(tokens != self.pad_id, select, lengths):
            g_feats = None if feats is None else feats[group].gather(1, order[..., None].expand(-1, -1, feats.shape[-1]))
            h = self.forward_tokens(tokens[group].gather(1, order), order, mask, g_feats)
            if self.cls is not None:
                mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
            pooled = pool(h, mask)
            if out is None:
                out = pooled.new_zeros(tokens.shape[0], pooled.shape[-1])
            out = out.index_copy(0, group, pooled)
        if out is None:  # no real pair at all
            out = self.embed_tokens.weight.new_zeros(tokens.shape[0], self.embed_tokens.weight.shape[1])
        return out


class AttentionPool(nn.Module):
    """Learned-query attention pooling over the non-PAD tokens: [N, L, H] -> [N, H]."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.query = nn.Parameter(trunc_normal_(torch.empty(1, 1, hidden_size), std=1.0))
        self.attn = Attention(hidden_size, num_heads, cross=True)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = self.query.to(h.dtype).expand(h.shape[0], -1, -1)
        return rms_norm(self.attn(q, context=h, key_mask=mask)[:, 0])


class SetEncoder(nn.Module):
    """P learned queries cross-attend (masked) over a set of D demo vectors: [B, D, H] -> [B, P, H].
    No positions on the demos, so the result is invariant to demo order."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        H = cfg.hidden_size
        self.queries = nn.Parameter(trunc_normal_(torch.empty(cfg.puzzle_emb_len, H), std=1.0))
        self.layers = nn.ModuleList([CrossBlock(H, cfg.num_heads, cfg.expansion) for _ in range(cfg.set_layers)])

    def forward(self, demos: torch.Tensor, demo_mask: torch.Tensor) -> torch.Tensor:
        q = self.queries.to(demos.dtype).expand(demos.shape[0], -1, -1)
        for layer in self.layers:
            q = layer(q, demos, key_mask=demo_mask)
        return q


class VariationalBottleneck(nn.Module):
    """[B, H] -> mu, logvar [B, latent] -> z (sampled in training, mu in eval) -> [B, P, H].
    The logvar projection starts at zero (std 1); logvar is clamped to [-10, 10]."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        H, latent = cfg.hidden_size, cfg.latent_dim or cfg.hidden_size
        self.P, self.H = cfg.puzzle_emb_len, H
        self.mu = Linear(H, latent, bias=True)
        self.logvar = Linear(H, latent, bias=True, init_std=0.0)
        self.decode = Linear(latent, cfg.puzzle_emb_len * H)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = self.mu(pooled).float()
        logvar = self.logvar(pooled).float().clamp(-10.0, 10.0)
        if self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        else:
            z = mu
        kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(-1)  # [B]
        context = rms_norm(self.decode(z.to(pooled.dtype)).view(-1, self.P, self.H))
        return context, kl
