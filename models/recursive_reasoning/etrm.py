"""ETRM: TRM's tiny recursive reasoner whose first `puzzle_emb_len` positions hold context tokens
produced by a demo encoder (instead of TRM's learned per-puzzle embedding), wrapped in TRM's
adaptive computation time (ACT) loop.

One ACT step (TRMWithEncoder.forward):
  1. slots that halted last step load the new batch's rows and reset z_H, z_L, steps;
  2. the encoder re-encodes every slot's current demos (full gradient, never cached); an optional
     batch key `context_offset` [B, P, H] is added to its output (a per-puzzle correction);
  3. the inner model runs H_cycles x (L_cycles x z_L <- net(z_L, z_H + x); z_H <- net(z_H, z_L)),
     all but the last H cycle without grad, and reads logits and (q_halt, q_continue) from z_H;
  4. steps += 1 and the halting rule decides which slots are done.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from dataset.tokens import COLOUR_OFFSET, NUM_COLOURS  # the token layout: colour c is token c + 2
from models.config import ETRMConfig  # noqa: F401 (the model's config and defaults; re-exported)
from models.answer_size import AnswerSize, answer_size
from models.cell_lookup import CellLookup
from models.encoders import ENCODERS, EncoderConfig, build_encoder
from models.encoders.demo_reader import DemoReader, DemoTokens
from models.grid_features import GridFeatureEmbedding, grid_features
from models.grid_maps import MapMatch, MapRead, grid_sizes, map_cover, map_sources
from models.layers import Attention, Block, CosSin, Embedding, Linear, LocalMix, grid_positions, rope_1d, rope_2d, trunc_normal_

@dataclass
class ETRMCarry:
    z_H: torch.Tensor                  # [B, P+S, H]
    z_L: torch.Tensor                  # [B, P+S, H]
    steps: torch.Tensor                # [B] int32, ACT steps taken on the slot's current sample
    halted: torch.Tensor               # [B] bool, the slot finished its sample last step
    min_halt_steps: torch.Tensor       # [B] int32, exploration: may not halt before this
    current_data: dict[str, torch.Tensor] = field(default_factory=dict)  # the slot's batch rows
    # host side (CPU tensors, never moved to the device: HOST_KEYS), so the encoders' packing plan
    # needs no device read: the real-token count of each demo pair of the slot's current rows
    # (the batch's `demo_lengths`, following the rows the carry keeps), and the host's copy of
    # `halted` (None = not known on the host; the trainer fills it from a copy queued a step earlier)
    demo_lengths: torch.Tensor | None = None   # [B, D] int32, CPU
    host_halted: torch.Tensor | None = None    # [B] bool, CPU


# batch keys and carry fields that stay on the host (training/evaluation.py to_device skips them)
HOST_KEYS = ("demo_lengths", "host_halted")


def merged_demo_lengths(carry: ETRMCarry, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The host's demo lengths of the rows this step runs (halted slots take the batch's rows, the
    others keep theirs), or None when the host cannot know them without reading the device."""
    new, old = batch.get("demo_lengths"), carry.demo_lengths
    if new is None or old is None or new.device.type != "cpu" or new.shape != old.shape:
        return None
    if carry.host_halted is not None:
        return torch.where(carry.host_halted[:, None], new, old)
    if np.array_equal(new.numpy(), old.numpy()):  # the same rows whatever halted (an eval batch, run step after step)
        return new
    return None


class DemoAttention(nn.Module):
    """Cross-attention from every canvas position to the demo tokens, added to the state at the
    start of every pass through the block stack (h += attn(h, demo)). The output projection starts at zero, so a model with it computes
    exactly what the model without it computes until training moves it. Keys/values come from
    `kv` (once per ACT step: the demos do not change during the recursion)."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.attn = Attention(hidden_size, num_heads, cross=True)
        nn.init.zeros_(self.attn.o_proj.weight)

    def kv(self, demo: DemoTokens, cos_sin: CosSin) -> tuple[torch.Tensor, torch.Tensor]:
        return self.attn.context_kv(demo.states, cos_sin)

    def forward(self, h: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], cos_sin: CosSin,
                key_mask: torch.Tensor) -> torch.Tensor:
        return h + self.attn(h, cos_sin=cos_sin, key_mask=key_mask, kv=kv)


class ETRMInner(nn.Module):
    """The recursive reasoner: token embedding + context tokens, one block stack, lm and Q heads
    (with demo_attention: a cross-attention to the demo tokens at the start of each pass through
    the blocks; with map_read: a read through the candidate cell maps before each block; with
    local_mix: a k x k neighbourhood mix of the canvas before each block)."""

    def __init__(self, cfg: ETRMConfig):
        super().__init__()
        self.cfg = cfg
        H, P = cfg.hidden_size, cfg.puzzle_emb_len
        self.embed_scale = math.sqrt(H)
        self.embed_tokens = Embedding(cfg.vocab_size, H, init_std=1.0 / self.embed_scale)
        self.layers = nn.ModuleList([Block(H, cfg.num_heads, cfg.expansion, cfg.rms_norm_eps) for _ in range(cfg.L_layers)])
        self.lm_head = Linear(H, cfg.vocab_size)
        self.q_head = Linear(H, 2, bias=True, init_std=0.0)
        with torch.no_grad():
            self.q_head.bias.fill_(-5.0)
        self.register_buffer("H_init", trunc_normal_(torch.empty(H), std=1.0), persistent=True)
        self.register_buffer("L_init", trunc_normal_(torch.empty(H), std=1.0), persistent=True)

        head_dim = H // cfg.num_heads
        if cfg.pos_encodings == "rope":
            cos, sin = rope_1d(torch.arange(P + cfg.seq_len), head_dim, cfg.rope_theta)
        elif cfg.pos_encodings == "rope_2d":
            side = math.isqrt(cfg.seq_len)
            if side * side != cfg.seq_len:
                raise ValueError(f"rope_2d needs a square canvas, seq_len {cfg.seq_len}")
            rows, cols = grid_positions(side)
            zeros = torch.zeros(P, dtype=rows.dtype)  # context tokens: one fixed position (identity)
            cos, sin = rope_2d(torch.cat([zeros, rows]), torch.cat([zeros, cols]), head_dim, cfg.rope_theta)
        else:
            cos = sin = None
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.side = math.isqrt(cfg.seq_len)
        if cfg.grid_features:
            self.grid_embed = GridFeatureEmbedding(H)
        if cfg.map_read:
            self.map_read = nn.ModuleList([MapRead(H, cfg.num_heads) for _ in range(cfg.L_layers)])
        if cfg.local_mix:
            self.local_mix = nn.ModuleList([LocalMix(H, self.side, cfg.local_mix) for _ in range(cfg.L_layers)])
        if cfg.demo_attention:
            self.demo_attn = DemoAttention(H, cfg.num_heads)  # once per pass: half the cost of once per block
            r, c = grid_positions(self.side)  # canvas queries: row/column, context tokens at the origin
            zeros = torch.zeros(P, dtype=r.dtype)
            q_cos, q_sin = rope_2d(torch.cat([zeros, r]), torch.cat([zeros, c]), head_dim, cfg.rope_theta)
            self.register_buffer("demo_q_cos", q_cos, persistent=False)
            self.register_buffer("demo_q_sin", q_sin, persistent=False)

    def cos_sin(self) -> CosSin | None:
        return None if self.rope_cos is None else (self.rope_cos, self.rope_sin)

    def input_embeddings(self, inputs: torch.Tensor, context: torch.Tensor,
                         lookup: torch.Tensor | None = None) -> torch.Tensor:
        """[B, S] tokens + [B, P, H] context -> [B, P+S, H]. Tokens are scaled by sqrt(H) (unit
        RMS); the context comes out of the encoder at unit RMS already and is not rescaled.
        lookup [B, S, H]: what the demo cells like each cell became (cell_lookup), added to it."""
        tokens = self.embed_scale * self.embed_tokens(inputs)
        if lookup is not None:
            tokens = tokens + lookup.to(tokens.dtype)
        if self.cfg.grid_features:  # what the cell is part of, where in it, what it sees (zero at init)
            tokens = tokens + self.grid_embed(grid_features(inputs, self.side)).to(tokens.dtype)
        context = context.to(tokens.dtype)
        if self.cfg.context_colour_table:  # cell of colour c (token c + 2) += context[:, c]
            colour = (inputs - COLOUR_OFFSET).clamp(0, NUM_COLOURS - 1)
            rows = torch.gather(context[:, :NUM_COLOURS], 1, colour.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
            tokens = tokens + rows * (inputs >= COLOUR_OFFSET).unsqueeze(-1).to(tokens.dtype)
        return torch.cat([context, tokens], dim=1)

    def net(self, h: torch.Tensor, injection: torch.Tensor, cos_sin: CosSin | None,
            maps: tuple | None = None, demo: tuple | None = None) -> torch.Tensor:
        h = h + injection
        if demo is not None:
            kv, mask = demo
            h = self.demo_attn(h, kv, (self.demo_q_cos, self.demo_q_sin), mask)
        for i, layer in enumerate(self.layers):
            if maps is not None:
                h = h + self.map_read[i](h, *maps)
            if self.cfg.local_mix:
                h = h + self.local_mix[i](h)
            h = layer(h, cos_sin=cos_sin)
        return h

    def demo_keys(self, demo: DemoTokens) -> tuple:
        """The demo keys/values, projected once per ACT step (with grad, reused by every cycle of
        the recursion), and the demo key mask."""
        cos_sin = rope_2d(demo.rows, demo.cols, self.cfg.hidden_size // self.cfg.num_heads, self.cfg.rope_theta)
        return self.demo_attn.kv(demo, cos_sin), demo.mask

    def forward(self, z_H: torch.Tensor, z_L: torch.Tensor, x: torch.Tensor, inputs: torch.Tensor | None = None,
                demo: DemoTokens | None = None, agreement: torch.Tensor | None = None):
        """One ACT step of recursion. inputs [B, S]: the query tokens (map_read anchors its maps on
        their grid); demo: the demo reader's tokens (demo_attention); agreement [B, NUM_MAPS]: the
        demos' agreement with each map (map_read). None = not this step (the zeroed-context
        ablation). Returns (z_H, z_L) detached, logits [B,S,V], q [B,2]."""
        cfg, cos_sin = self.cfg, self.cos_sin()
        if cfg.map_read and inputs is None:
            raise ValueError("map_read needs the query tokens (inputs=...)")
        maps = (map_sources(*grid_sizes(inputs, self.side), self.side), agreement) if cfg.map_read else None
        demo_kv = self.demo_keys(demo) if demo is not None else None
        with torch.no_grad():
            for _ in range(cfg.H_cycles - 1):
                for _ in range(cfg.L_cycles):
                    z_L = self.net(z_L, z_H + x, cos_sin, maps, demo_kv)
                z_H = self.net(z_H, z_L, cos_sin, maps, demo_kv)
        for _ in range(cfg.L_cycles):
            z_L = self.net(z_L, z_H + x, cos_sin, maps, demo_kv)
        z_H = self.net(z_H, z_L, cos_sin, maps, demo_kv)
        logits = self.lm_head(z_H[:, cfg.puzzle_emb_len:])
        q = self.q_head(z_H[:, 0]).float()
        return z_H.detach(), z_L.detach(), logits, q


class TRMWithEncoder(nn.Module):
    """ETRM with ACT. `model.initial_carry(batch)`, then `model(carry, batch) -> (carry, outputs)`."""

    def __init__(self, config: dict | ETRMConfig):
        super().__init__()
        self.config = config if isinstance(config, ETRMConfig) else ETRMConfig.from_dict(config)
        cfg = self.config
        if cfg.encoder_type not in ENCODERS:
            raise ValueError(f"unknown encoder_type {cfg.encoder_type!r}; valid: {sorted(ENCODERS)}")
        self.encoder = build_encoder(
            cfg.encoder_type,
            hidden_size=cfg.hidden_size,
            num_heads=cfg.num_heads,
            seq_len=cfg.seq_len,
            vocab_size=cfg.vocab_size,
            puzzle_emb_len=cfg.puzzle_emb_len,
            num_layers=cfg.encoder_num_layers,
            expansion=cfg.expansion,
            pooling=cfg.encoder_pooling_method,
            set_layers=cfg.encoder_set_layers,
            latent_dim=cfg.encoder_latent_dim,
            rope_theta=cfg.rope_theta,
            packed=cfg.encoder_packed,
            grid_features=cfg.grid_features,
        )
        if cfg.context_colour_table and not getattr(self.encoder, "colour_table", False):
            raise ValueError(f"context_colour_table=true needs an encoder whose first {NUM_COLOURS} context tokens "
                             f"are per-colour slots (colour_slots), got encoder_type={cfg.encoder_type!r}")
        self.inner = ETRMInner(cfg)
        if cfg.demo_attention:
            self.demo_reader = DemoReader(
                EncoderConfig(hidden_size=cfg.hidden_size, num_heads=cfg.num_heads, seq_len=cfg.seq_len,
                              vocab_size=cfg.vocab_size, num_layers=cfg.demo_num_layers, expansion=cfg.expansion,
                              rope_theta=cfg.rope_theta, packed=cfg.encoder_packed,
                              grid_features=cfg.grid_features))
        if cfg.map_read:
            self.map_match = MapMatch(cfg.vocab_size, math.isqrt(cfg.seq_len))
        if cfg.cell_lookup:
            self.cell_lookup = CellLookup(cfg.hidden_size, cfg.vocab_size, math.isqrt(cfg.seq_len),
                                          select_features=cfg.cell_lookup_select, table_vote=cfg.cell_lookup_table,
                                          regions=cfg.cell_lookup_box)
        if cfg.answer_size:
            self.answer_size = AnswerSize(cfg.vocab_size, math.isqrt(cfg.seq_len))

    def set_encoder_packing(self, packed: bool) -> None:
        """Switch the encoder between the packed (default) and the padded layout (same math;
        the padded one is the reproducible baseline of bench/train_step.py --compare)."""
        self.config.encoder_packed = packed
        for m in self.modules():
            if hasattr(m, "packed"):
                m.packed = packed

    @property
    def q_head(self) -> nn.Module:
        """The halting head (lives in the inner model; exposed for convenience)."""
        return self.inner.q_head

    # ------------------------------------------------------------------ carry

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> ETRMCarry:
        """Every slot starts halted, so the first forward loads the batch into all of them."""
        cfg = self.config
        B = batch["inputs"].shape[0]
        device = batch["inputs"].device
        shape = (B, cfg.puzzle_emb_len + cfg.seq_len, cfg.hidden_size)
        return ETRMCarry(
            z_H=self.inner.H_init.expand(shape).clone(),
            z_L=self.inner.L_init.expand(shape).clone(),
            steps=torch.zeros(B, dtype=torch.int32, device=device),
            halted=torch.ones(B, dtype=torch.bool, device=device),
            min_halt_steps=torch.zeros(B, dtype=torch.int32, device=device),
            current_data={k: torch.zeros_like(v) for k, v in batch.items() if k not in HOST_KEYS},
            demo_lengths=torch.zeros_like(batch["demo_lengths"]) if "demo_lengths" in batch else None,
            host_halted=torch.ones(B, dtype=torch.bool),
        )

    # ------------------------------------------------------------------ step

    def forward(self, carry: ETRMCarry, batch: dict[str, torch.Tensor]) -> tuple[ETRMCarry, dict[str, torch.Tensor]]:
        cfg = self.config
        reset = carry.halted  # [B]
        demo_lengths = merged_demo_lengths(carry, batch)  # host side: None = the encoders read the device

        # 1. halted slots take the new rows and start over; the others keep theirs
        data = {k: torch.where(reset.view(-1, *([1] * (v.ndim - 1))), batch[k], v) for k, v in carry.current_data.items()}
        z_H = torch.where(reset[:, None, None], self.inner.H_init.to(carry.z_H.dtype), carry.z_H)
        z_L = torch.where(reset[:, None, None], self.inner.L_init.to(carry.z_L.dtype), carry.z_L)
        steps = torch.where(reset, torch.zeros_like(carry.steps), carry.steps)
        if self.training and cfg.halt_exploration_prob > 0:
            explore = torch.rand(reset.shape, device=reset.device) < cfg.halt_exploration_prob
            drawn = torch.randint_like(carry.min_halt_steps, low=2, high=max(cfg.halt_max_steps, 2) + 1)
            new_min = torch.where(explore, drawn, torch.zeros_like(drawn))
            min_halt_steps = torch.where(reset, new_min, carry.min_halt_steps)
        else:
            min_halt_steps = torch.where(reset, torch.zeros_like(carry.min_halt_steps), carry.min_halt_steps)

        # 2. encode the current demos (every step, with grad)
        kl, demo, agreement, lookup, vote = None, None, None, None, None
        if cfg.context_ablation:  # the encoder is skipped: the model can only guess from the query
            B = data["inputs"].shape[0]
            context = z_H.new_zeros(B, cfg.puzzle_emb_len, cfg.hidden_size)
        else:
            enc = self.encoder(data["demo_inputs"], data["demo_labels"], data["demo_mask"], demo_lengths=demo_lengths)
            context, kl = enc.context, enc.kl
            if cfg.demo_attention:  # the demo cells the inner model attends to, re-read every step too
                demo = self.demo_reader(data["demo_inputs"], data["demo_labels"], data["demo_mask"], demo_lengths)
            if cfg.map_read:        # which cell maps the demos agree with, re-read every step too
                agreement = self.map_match(data["demo_inputs"], data["demo_labels"], data["demo_mask"], demo_lengths)
            size, boxes = None, None   # the answer's size, read from the demos by a vocabulary of size rules
            if cfg.answer_size or cfg.cell_lookup_frame:   # (and the grids' region boxes, same labelling)
                *size, boxes = answer_size(data["demo_inputs"], data["demo_labels"], data["demo_mask"],
                                           data["inputs"], self.inner.side, with_boxes=True)   # size: (size, known)
            if cfg.cell_lookup:     # what the demo cells like each query cell became, re-read every step too
                # cell_lookup_map: through the maps (+ relabelling) that explain the demos (no gradient);
                # cell_lookup_frame: the input tiled / stretched into the answer's frame is a candidate too;
                # cell_lookup_box: a box of the input (the content's, one colour's, one object size's) too
                cover, frame = None, None
                B, D = data["demo_mask"].shape
                if cfg.cell_lookup_map:
                    cover = map_cover(data["demo_inputs"], data["demo_labels"], data["demo_mask"], self.inner.side,
                                      frames=cfg.cell_lookup_frame, regions=cfg.cell_lookup_box,
                                      boxes=None if boxes is None else boxes[:B * D])
                if cfg.cell_lookup_frame:
                    frame = size[0] * size[1][:, None]   # 0 x 0 where the size is not known
                lookup, vote = self.cell_lookup(data["inputs"], data["demo_inputs"], data["demo_labels"],
                                                data["demo_mask"], cover, frame, boxes)
            if cfg.answer_size:     # the answer's frame votes on the output tokens
                frame_vote = self.answer_size.vote(*size)
                vote = frame_vote if vote is None else vote + frame_vote
        if "context_offset" in data:  # optional per-sample correction (test-time adaptation, training/tta.py)
            context = context + data["context_offset"].to(context.dtype)

        # 3. recursion
        x = self.inner.input_embeddings(data["inputs"], context, lookup)
        z_H, z_L, logits, q = self.inner(z_H, z_L, x, inputs=data["inputs"], demo=demo, agreement=agreement)
        if vote is not None:  # cell_lookup's direct path (what similar demo cells became), answer_size's frame
            logits = logits + vote.to(logits.dtype)
        q_halt, q_continue = q[:, 0], q[:, 1]

        # 4. halting
        with torch.no_grad():
            steps = steps + 1
            halted = steps >= cfg.halt_max_steps
            if self.training:  # q may stop a sample early, but not before its exploration minimum
                halted = halted | ((q_halt > 0) & (steps >= min_halt_steps))
            elif cfg.eval_halting == "q":
                halted = halted | (q_halt > 0)

        outputs = {
            "logits": logits,
            "q_halt_logits": q_halt,
            "q_continue_logits": q_continue,
            "context": context,
            "steps": steps,
        }
        if kl is not None:
            outputs["kl"] = kl
        new_carry = ETRMCarry(z_H=z_H, z_L=z_L, steps=steps, halted=halted, min_halt_steps=min_halt_steps, current_data=data,
                              demo_lengths=demo_lengths)
        return new_carry, outputs
