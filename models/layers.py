"""Shared building blocks: init helpers, RMSNorm, rotary embeddings, attention, SwiGLU and the
post-norm transformer block. The inner reasoning model and every encoder are built from these.

Conventions
- Linear layers have no bias unless asked and are initialised from a truncated normal with
  std 1/sqrt(fan_in) (LeCun normal), as in TRM. Parameters are float32; the trainer autocasts.
- Rotary embeddings use the "rotate half" layout: head dims (i, i + head_dim/2) form a pair.
  A rotary table is a (cos, sin) pair of shape [L, head_dim].
- Key padding masks are bool [B, L], True = a real token that may be attended to.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

CosSin = tuple[torch.Tensor, torch.Tensor]


# ----------------------------------------------------------------------------- init helpers

def trunc_normal_(tensor: torch.Tensor, std: float = 1.0, bound: float = 2.0) -> torch.Tensor:
    """In-place truncated normal on [-bound*std, bound*std], rescaled so that the *resulting*
    standard deviation is `std` (a plain truncation at 2 sigma shrinks it to ~0.88 std)."""
    if std == 0:
        with torch.no_grad():
            return tensor.zero_()
    # std of a standard normal truncated to [-b, b]
    pdf = math.exp(-0.5 * bound**2) / math.sqrt(2 * math.pi)
    mass = math.erf(bound / math.sqrt(2))
    truncated_std = math.sqrt(1 - 2 * bound * pdf / mass)
    s = std / truncated_std
    with torch.no_grad():
        return nn.init.trunc_normal_(tensor, mean=0.0, std=s, a=-bound * s, b=bound * s)


class Linear(nn.Linear):
    """nn.Linear with LeCun truncated-normal init and zero bias. `init_std` overrides the std."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, init_std: float | None = None):
        self._init_std = init_std
        super().__init__(in_features, out_features, bias=bias)

    def reset_parameters(self) -> None:
        std = self._init_std if self._init_std is not None else 1.0 / math.sqrt(self.in_features)
        trunc_normal_(self.weight, std=std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class Embedding(nn.Embedding):
    """nn.Embedding with truncated-normal init (std `init_std`)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float):
        self._init_std = init_std
        super().__init__(num_embeddings, embedding_dim)

    def reset_parameters(self) -> None:
        trunc_normal_(self.weight, std=self._init_std)


# ----------------------------------------------------------------------------- norm

def rms_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm without a learned scale, computed in float32, returned in the input dtype
    (torch's fused rms_norm: x * rsqrt(mean(x^2) + eps))."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), eps=eps)
    return F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


# ----------------------------------------------------------------------------- rotary

def _inv_freq(dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))


def rope_1d(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> CosSin:
    """Rotary table for integer positions [..., L] -> (cos, sin) [..., L, head_dim]."""
    angles = positions.float()[..., None] * _inv_freq(head_dim, theta).to(positions.device)  # [..., L, head_dim/2]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rope_2d(rows: torch.Tensor, cols: torch.Tensor, head_dim: int, theta: float = 10000.0) -> CosSin:
    """Rotary table for 2-D positions: half of the rotary pairs turn with the row, half with the
    column (each half uses the frequency ladder of a head_dim/2 rotary). rows, cols: [..., L]
    -> (cos, sin) [..., L, head_dim]."""
    if head_dim % 4 != 0:
        raise ValueError(f"2-D rotary needs head_dim divisible by 4, got {head_dim}")
    f = _inv_freq(head_dim // 2, theta).to(rows.device)  # [head_dim/4]
    angles = torch.cat([rows.float()[..., None] * f, cols.float()[..., None] * f], dim=-1)
    angles = torch.cat([angles, angles], dim=-1)  # [..., L, head_dim]
    return angles.cos(), angles.sin()


def grid_positions(side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) of each cell of a flattened side x side canvas, row-major. Each [side*side]."""
    idx = torch.arange(side * side)
    return idx // side, idx % side


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin in three passes over x (mul, cat, addcmul); cos/sin are
    already shaped to broadcast against x. Both halves of a rotary table share their angles, so
    rotate_half(x) * sin == cat(x2, x1) * cat(-sin1, sin1)."""
    half = x.shape[-1] // 2
    sin_signed = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)  # table-sized, cheap
    swapped = torch.cat([x[..., half:], x[..., :half]], dim=-1)
    return torch.addcmul(x * cos, swapped, sin_signed)


def apply_rotary(x: torch.Tensor, cos_sin: CosSin) -> torch.Tensor:
    """x: [B, heads, L, head_dim]; cos/sin: [L, head_dim] (shared by the batch) or [B, L, head_dim]
    (per-sample positions, e.g. packed tokens gathered from a canvas)."""
    cos, sin = cos_sin
    if cos.dim() == 3:
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return _rotary(x, cos.to(x.dtype), sin.to(x.dtype))


def apply_rotary_qk(qk: torch.Tensor, cos_sin: CosSin) -> torch.Tensor:
    """Rotate queries and keys together in the projection's own layout (one set of passes for
    both). qk: [B, L, 2, heads, head_dim]; cos/sin: [L, head_dim] or [B, L, head_dim]."""
    cos, sin = cos_sin
    cos, sin = cos.to(qk.dtype), sin.to(qk.dtype)
    if cos.dim() == 3:
        cos, sin = cos[:, :, None, None, :], sin[:, :, None, None, :]
    else:
        cos, sin = cos[:, None, None, :], sin[:, None, None, :]
    return _rotary(qk, cos, sin)


# ----------------------------------------------------------------------------- attention

def _safe_key_mask(key_mask: torch.Tensor) -> torch.Tensor:
    """Rows with no real key at all (e.g. a masked-out demo slot) would give NaN from softmax;
    let them attend to everything instead. Their output is garbage but finite and is masked
    out downstream. No Python branching on tensor values (torch.compile friendly)."""
    return key_mask | ~key_mask.any(dim=-1, keepdim=True)


class Attention(nn.Module):
    """Non-causal multi-head attention (F.scaled_dot_product_attention).

    Self-attention: qkv_proj packs [q | k | v] along the output dim (TRM's layout).
    Cross-attention (cross=True): q_proj on the queries, kv_proj on the context."""

    def __init__(self, hidden_size: int, num_heads: int, cross: bool = False):
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size {hidden_size} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.cross = cross
        if cross:
            self.q_proj = Linear(hidden_size, hidden_size)
            self.kv_proj = Linear(hidden_size, 2 * hidden_size)
        else:
            self.qkv_proj = Linear(hidden_size, 3 * hidden_size)
        self.o_proj = Linear(hidden_size, hidden_size)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:  # [B, L, H] -> [B, heads, L, head_dim]
        B, L, _ = t.shape
        return t.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        cos_sin: CosSin | None = None,
        key_mask: torch.Tensor | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x: [B, Lq, H]; context: [B, Lk, H] (cross only); cos_sin: rotary table for q and k;
        kv: cross only, keys and values already projected by `context_kv` (context is then
        unused); key_mask: [B, Lk] bool, True = attend."""
        if self.cross:
            q = self._heads(self.q_proj(x))
            k, v = kv if kv is not None else self.context_kv(context, cos_sin)
            if cos_sin is not None:
                q = apply_rotary(q, cos_sin)
        else:
            B, L, _ = x.shape
            qkv = self.qkv_proj(x).view(B, L, 3, self.num_heads, self.head_dim)
            qk = qkv[:, :, :2]
            if cos_sin is not None:
                qk = apply_rotary_qk(qk, cos_sin)
            q, k, v = qk[:, :, 0].transpose(1, 2), qk[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)
        return self.attend(q, k, v, key_mask)

    def context_kv(self, context: torch.Tensor, cos_sin: CosSin | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys (rotated by cos_sin) and values of a context [B, Lk, H], as heads;
        project once and pass as `kv` when the same context is attended to many times."""
        k, v = (self._heads(t) for t in self.kv_proj(context).chunk(2, dim=-1))
        return (k if cos_sin is None else apply_rotary(k, cos_sin)), v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """Heads [B, heads, L, head_dim] -> output projection [B, Lq, H]; key_mask [B, Lk]."""
        return self.o_proj(attend(q, k, v, key_mask))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention over heads [B, heads, L, head_dim] -> [B, Lq, heads * head_dim]
    (heads merged, no output projection); key_mask [B, Lk], True = attend."""
    attn_mask = None
    if key_mask is not None:
        attn_mask = _safe_key_mask(key_mask)[:, None, None, :]  # [B, 1, 1, Lk]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    B, _, Lq, _ = out.shape
    return out.transpose(1, 2).reshape(B, Lq, -1)


# ----------------------------------------------------------------------------- MLP / block

def swiglu_hidden_size(hidden_size: int, expansion: float) -> int:
    """2/3 * expansion * d rounded up to a multiple of min(256, d) (1536 for d=512, exp 4)."""
    multiple = min(256, hidden_size)
    inter = round(expansion * hidden_size * 2 / 3)
    return -(-inter // multiple) * multiple


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, expansion: float):
        super().__init__()
        inter = swiglu_hidden_size(hidden_size, expansion)
        self.gate_up_proj = Linear(hidden_size, 2 * inter)  # [gate | up], TRM's layout
        self.down_proj = Linear(inter, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    """Post-norm transformer block: h = norm(h + attn(h)); h = norm(h + mlp(h))."""

    def __init__(self, hidden_size: int, num_heads: int, expansion: float, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.self_attn = Attention(hidden_size, num_heads)
        self.mlp = SwiGLU(hidden_size, expansion)

    def forward(self, h: torch.Tensor, cos_sin: CosSin | None = None, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = rms_norm(h + self.self_attn(h, cos_sin=cos_sin, key_mask=key_mask), self.eps)
        return rms_norm(h + self.mlp(h), self.eps)


class CrossBlock(nn.Module):
    """Post-norm cross-attention block: queries attend over a context, then a SwiGLU."""

    def __init__(self, hidden_size: int, num_heads: int, expansion: float, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.cross_attn = Attention(hidden_size, num_heads, cross=True)
        self.mlp = SwiGLU(hidden_size, expansion)

    def forward(self, q: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        q = rms_norm(q + self.cross_attn(q, context=context, key_mask=key_mask), self.eps)
        return rms_norm(q + self.mlp(q), self.eps)


class LocalMix(nn.Module):
    """h [B, P+S, H] -> update [B, P+S, H] (zero on the P context tokens in front): every canvas cell
    (S = side x side, row-major) mixes the states of its k x k neighbourhood through a depthwise
    convolution (one k x k kernel per channel; zero padding beyond the canvas), then a channel
    projection that starts at zero, so a model with it computes what the model without it computes
    until the projection has learned something.

    Why: attention with 2-D rotary positions can reach a neighbour, but must learn to; a
    neighbourhood read is there from the first step. Inside the recursion (every block of every
    cycle of every ACT step) it is a learned cellular automaton: a rule repeated until nothing
    changes (things fall until they hit something, lines grow until a wall, regions fill) is many
    local updates in a row."""

    def __init__(self, hidden_size: int, side: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"local_mix kernel_size must be odd and >= 1, got {kernel_size}")
        self.side = side
        self.conv = nn.Conv2d(hidden_size, hidden_size, kernel_size, padding=kernel_size // 2, groups=hidden_size,
                              bias=False)
        self.o_proj = Linear(hidden_size, hidden_size, init_std=0.0)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        S = self.side * self.side
        grid = rearrange(h[:, h.shape[1] - S:], "b (r c) d -> b d r c", r=self.side)
        mixed = self.o_proj(rearrange(self.conv(grid), "b d r c -> b (r c) d"))
        return torch.cat([mixed.new_zeros(h.shape[0], h.shape[1] - S, h.shape[2]), mixed], dim=1)
