"""Losses and the ACT loss head.

ACTLossHead wraps the model: head(carry, batch) -> (carry, loss, metrics, outputs, all_halted).
`loss` is a SUM over the batch (the trainer divides by the global batch size). Metrics are
detached float32 sums over the samples that halted this step (plus `count`), and batch sums of
the loss terms; the trainer all-reduces and divides by `count`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dataset.tokens import IGNORE_LABEL_ID
from models.config import LOSS_DEFAULTS


def _stablemax_s(x: torch.Tensor) -> torch.Tensor:
    """s(x) = x + 1 for x >= 0, 1 / (1 - x) for x < 0 (positive, monotone, linear growth)."""
    return torch.where(x < 0, 1.0 / (1.0 - torch.clamp_max(x, 0.0)), x + 1.0)


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    s = _stablemax_s(x)
    return torch.log(s / s.sum(dim=dim, keepdim=True))


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_LABEL_ID) -> torch.Tensor:
    """Per-token -log p(label) with p = s(logits) / sum s(logits), in float64.
    logits [..., V], labels [...] -> loss [...] (float64), 0 where labels == ignore_index."""
    logp = log_stablemax(logits.to(torch.float64), dim=-1)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels)).long()
    picked = torch.gather(logp, -1, safe.unsqueeze(-1)).squeeze(-1)
    return torch.where(valid, -picked, torch.zeros_like(picked))


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_LABEL_ID) -> torch.Tensor:
    """Per-token softmax cross-entropy in float32, 0 where labels == ignore_index."""
    loss = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.long().reshape(-1),
        ignore_index=ignore_index, reduction="none",
    )
    return loss.view(labels.shape)


LOSS_FUNCTIONS = {
    "stablemax_cross_entropy": stablemax_cross_entropy,
    "softmax_cross_entropy": softmax_cross_entropy,
}


def token_weights(labels: torch.Tensor, inputs: torch.Tensor, changed_cell_weight: float) -> torch.Tensor:
    """Per-token loss weights [B, S] (float32, 0 where ignored) that sum to 1 per sample: every
    scored token weighs 1, plus `changed_cell_weight` where the label differs from the query input
    at that position. Most ARC outputs repeat most of their input, so copying is learned first and
    the cells the rule changes carry a vanishing share of a plain per-token mean; this gives them
    a larger share (0 = the plain mean, TRM's loss)."""
    scored = (labels != IGNORE_LABEL_ID).float()
    w = scored * (1.0 + changed_cell_weight * (labels != inputs).float())
    return w / w.sum(-1, keepdim=True).clamp_min(1.0)


def sample_accuracies(preds: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample [B]: the share of scored cells predicted right, and the share of the cells the
    rule changes (label != input there) predicted right, which copying the input scores 0 on (the
    share of all cells when the rule changes none)."""
    scored = labels != IGNORE_LABEL_ID
    right = scored & (preds == labels)
    token = right.sum(-1).float() / scored.sum(-1).clamp_min(1)
    changed = scored & (labels != inputs)
    n_changed = changed.sum(-1)
    return token, torch.where(n_changed > 0, (right & changed).sum(-1).float() / n_changed.clamp_min(1), token)


def context_contrast_loss(context: torch.Tensor, puzzle: torch.Tensor, variant: torch.Tensor, valid: torch.Tensor,
                          temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE over the batch's contexts [B, L, D]: a sample's positives are the other samples of
    the same puzzle under the same variant (the same rule read from other demos: the builder's
    leave-one-out queries, or other examples of a pool), its negatives every other puzzle's samples;
    the same puzzle under another variant (a transformed rule) is neither. Returns (the sum over the
    samples that have a positive of -mean log p(positive), how many such samples): 0 and 0 when none."""
    z = F.normalize(context.float().flatten(1), dim=-1)
    sim = z @ z.T / temperature
    same_puzzle = puzzle[:, None] == puzzle[None, :]
    pairs = valid[:, None] & valid[None, :] & ~torch.eye(len(z), dtype=torch.bool, device=z.device)
    positive = pairs & same_puzzle & (variant[:, None] == variant[None, :])
    candidates = pairs & (positive | ~same_puzzle)
    log_p = sim - torch.logsumexp(sim.masked_fill(~candidates, float("-inf")), dim=-1, keepdim=True)
    n_pos = positive.sum(-1)
    has = n_pos > 0
    per_row = -torch.where(positive, log_p, 0.0).sum(-1) / n_pos.clamp_min(1)
    return torch.where(has, per_row, 0.0).sum(), has.sum()


class ACTLossHead(nn.Module):
    def __init__(self, model: nn.Module, loss_type: str = "stablemax_cross_entropy", kl_weight: float = 1e-4,
                 changed_cell_weight: float = LOSS_DEFAULTS["changed_cell_weight"],
                 context_contrast_weight: float = LOSS_DEFAULTS["context_contrast_weight"],
                 context_contrast_temperature: float = LOSS_DEFAULTS["context_contrast_temperature"]):
        super().__init__()
        if loss_type not in LOSS_FUNCTIONS:
            raise ValueError(f"unknown loss_type {loss_type!r}; valid choices: {sorted(LOSS_FUNCTIONS)}")
        if changed_cell_weight < 0:
            raise ValueError(f"changed_cell_weight must be >= 0, got {changed_cell_weight}")
        if context_contrast_weight < 0 or context_contrast_temperature <= 0:
            raise ValueError(f"context_contrast_weight must be >= 0 and context_contrast_temperature > 0, got "
                             f"{context_contrast_weight} and {context_contrast_temperature}")
        self.changed_cell_weight = float(changed_cell_weight)
        # why: the encoder is trained only through what the inner model takes from it, and rules the
        # inner model cannot yet execute give it nothing to separate (docs/RESULTS.md, issue 18); the
        # same rule read from other demos should give the same context, another puzzle's another one
        self.context_contrast_weight = float(context_contrast_weight)
        self.context_contrast_temperature = float(context_contrast_temperature)
        self.model = model
        self.loss_type = loss_type
        self.loss_fn = LOSS_FUNCTIONS[loss_type]
        self.kl_weight = kl_weight

    def initial_carry(self, batch):
        return self.model.initial_carry(batch)

    def forward(self, carry, batch):
        new_carry, outputs = self.model(carry, batch)
        data = new_carry.current_data
        labels = data["labels"]
        logits = outputs["logits"]
        valid_row = data["valid"].bool() if "valid" in data else torch.ones_like(new_carry.halted)

        with torch.no_grad():
            preds = logits.argmax(-1)
            outputs["preds"] = preds
            token_mask = labels != IGNORE_LABEL_ID
            n_tokens = token_mask.sum(-1)
            divisor = n_tokens.clamp_min(1).unsqueeze(-1)
            correct = token_mask & (preds == labels)
            seq_correct = correct.sum(-1) == n_tokens
            q_halt = outputs["q_halt_logits"]

            done = new_carry.halted & valid_row & (n_tokens > 0)  # samples counted in the metrics
            metrics = {
                "count": done.sum(),
                "accuracy": torch.where(done, (correct.float() / divisor).sum(-1), 0.0).sum(),
                "exact_accuracy": (done & seq_correct).sum(),
                "q_halt_accuracy": (done & ((q_halt >= 0) == seq_correct)).sum(),
                "steps": torch.where(done, new_carry.steps, 0).sum(),
            }
            # per sample, for statistics by puzzle (training/curriculum.py)
            outputs["sample_done"] = done
            outputs["sample_accuracy"], outputs["sample_changed_accuracy"] = sample_accuracies(preds, labels, data["inputs"])

        row_w = valid_row.to(torch.float32)
        if self.changed_cell_weight:
            weights = token_weights(labels, data["inputs"], self.changed_cell_weight)
            lm_loss = ((self.loss_fn(logits, labels) * weights).sum(-1).float() * row_w).sum()
        else:
            lm_loss = ((self.loss_fn(logits, labels) / divisor).sum(-1).float() * row_w).sum()
        q_halt_loss = (F.binary_cross_entropy_with_logits(q_halt.float(), seq_correct.float(), reduction="none") * row_w).sum()
        loss = lm_loss + 0.5 * q_halt_loss
        metrics["lm_loss"] = lm_loss.detach()
        metrics["q_halt_loss"] = q_halt_loss.detach()
        if "kl" in outputs and self.kl_weight > 0:
            kl_loss = (outputs["kl"].float() * row_w).sum()
            loss = loss + self.kl_weight * kl_loss
            metrics["kl_loss"] = kl_loss.detach()
        else:  # logged every step all the same, so dashboards of every encoder share the key
            metrics["kl_loss"] = lm_loss.new_zeros(())
        if self.context_contrast_weight > 0:
            # a sum like the other terms (rows without a positive add 0): logged per sample of the batch
            contrast, _ = context_contrast_loss(outputs["context"], data["puzzle_index"], data["variant_index"],
                                                valid_row, self.context_contrast_temperature)
            loss = loss + self.context_contrast_weight * contrast
            metrics["contrast_loss"] = contrast.detach()

        metrics = {k: v.detach().float() for k, v in metrics.items()}
        return new_carry, loss, metrics, outputs, new_carry.halted.all()
