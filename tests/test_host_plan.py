"""The encoders' packing plan made on the host (the batch's `demo_lengths`, following the rows
the ACT carry keeps) computes what the plan read from the device computes, without reading the
device: training steps over a stream of batches (slots carried across batches), and an eval batch."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.host_syncs import SyncCounter
from dataset.loader import EvalLoader, TrainLoader, load_split
from models.losses import ACTLossHead
from models.recursive_reasoning.etrm import TRMWithEncoder


def head_for(split, encoder_type: str, **options) -> ACTLossHead:
    torch.manual_seed(0)
    cfg = dict(batch_size=8, seq_len=split.seq_len, vocab_size=split.vocab_size, max_demos=split.max_demos,
               puzzle_emb_len=4, hidden_size=32, num_heads=2, H_cycles=2, L_cycles=1, halt_max_steps=3,
               halt_exploration_prob=0.5, encoder_type=encoder_type, encoder_num_layers=1, forward_dtype="float32")
    cfg.update(options)
    model = TRMWithEncoder(cfg)
    for name, p in model.named_parameters():  # the demo paths' zero-initialised outputs would hide them
        if ("demo_attn" in name or "map_read" in name or "cell_lookup" in name) and not p.detach().any():
            torch.nn.init.normal_(p, std=0.2)
    return ACTLossHead(model)


def run_steps(head, batches, host: bool) -> tuple[list[torch.Tensor], int]:
    """ACT training steps over `batches` (forward only); host=False drops `demo_lengths` (the device plan).
    -> (outputs, device reads of the packing plans: all but the component labelling's convergence
    tests, which test_the_recipe_reads_the_device_once_per_labelling_per_step counts)."""
    torch.manual_seed(1)
    outs, carry = [], None
    with SyncCounter() as counter:
        counter.phase = "train"
        for batch in batches:
            if not host:
                batch = {k: v for k, v in batch.items() if k != "demo_lengths"}
            if carry is None:
                carry = head.initial_carry(batch)
            else:  # what the trainer does: the halted mask, copied to the host after the step
                carry = dataclasses.replace(carry, host_halted=carry.halted.clone() if host else None)
            carry, loss, _, outputs, _ = head(carry, batch)
            outs += [outputs["context"].detach(), outputs["logits"].detach(), loss.detach()]
    return outs, sum(n for site, n in counter.counts["train"].items() if "models/grid_features.py" not in site)


@pytest.mark.parametrize("encoder_type,options", [("standard", {}), ("hybrid_variational", {}),
                                                   ("standard", {"demo_attention": True, "map_read": True}),
                                                   ("colour_slots", {"puzzle_emb_len": 12, "context_colour_table": True,
                                                                     "cell_lookup": True})])
def test_host_plan_follows_the_carried_rows(tiny_data, encoder_type, options):
    """Also the demo reader's layout and plan, and MapMatch's real demo slots (arch.demo_attention, map_read)."""
    split = load_split(str(tiny_data), "train")
    loader = TrainLoader(split, 8, seed=3)
    batches = [next(loader) for _ in range(8)]
    head = head_for(split, encoder_type, **options)
    head.train()
    device_outs, device_reads = run_steps(head, batches, host=False)
    host_outs, host_reads = run_steps(head, batches, host=True)
    assert device_reads > 0 and host_reads == 0
    for a, b in zip(host_outs, device_outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options", [{}, {"demo_attention": True, "map_read": True}])
def test_eval_batch_plan_needs_no_device_read(tiny_data, options):
    split = load_split(str(tiny_data), "eval")
    batch = EvalLoader(split, 8, max_variants=1).batch(0)
    head = head_for(split, "standard", **options)
    head.eval()
    with torch.no_grad(), SyncCounter() as counter:
        counter.phase = "eval"
        carry = head.initial_carry(batch)
        for _ in range(3):
            carry, *_ = head(carry, batch)
    assert counter.total("eval") == 0


@pytest.mark.parametrize("halting", ["max", "q"])
def test_eval_reads_the_device_once_per_evaluation(tiny_data, halting, tmp_path):
    """run_evaluation over several batches: one device read in all (the final all-reduce), and the
    same predictions as running every ACT step (eval_halting=q: its early stop is read one step late)."""
    from evaluators.arc import ARC
    from training.distributed import DistInfo
    from training.evaluation import run_evaluation, run_until_halted

    split = load_split(str(tiny_data), "eval")
    loader = EvalLoader(split, 8, max_variants=1, max_eval_groups=12)
    head = head_for(split, "standard")
    head.model.config.eval_halting = halting
    if halting == "q":  # some samples halt early on the Q head, at different steps
        with torch.no_grad():
            head.model.inner.q_head.bias.fill_(0.0)
            head.model.inner.q_head.weight.normal_(0.0, 0.5)
    head.eval()
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    with SyncCounter() as counter:
        counter.phase = "eval"
        results = run_evaluation(head, loader, [ARC(split)], info, "float32", None, 0, show_progress=False)
    assert len(loader) >= 2 and counter.total("eval") == 1, dict(counter.counts["eval"])
    # the reference: every ACT step, each sample's outputs kept at its first halt
    exact = 0
    for batch in loader:
        out = run_until_halted(head, batch, "float32")
        exact += int((out["exact"] & batch["valid"]).sum())
    assert results["eval/exact_accuracy"] * results["eval/count"] == pytest.approx(exact)


@pytest.mark.parametrize("row", ["standard", "demo_attention", "map_read"])
def test_the_trainer_reads_the_device_once_per_log_interval(tiny_data, tmp_path, row):
    """bench.host_syncs on the real trainer: 8 steps, log_interval 4, final checkpoint and eval:
    one read per log step (the checkpoint at a log step reuses it), at most one per eval batch."""
    from bench.host_syncs import ROWS, TINY_ARCH, measure
    r = measure(tiny_data, tmp_path / "run", TINY_ARCH, 8, 8, 4, 2, "cpu", ROWS[row])
    assert r["steps"] == 8 and r["log_steps"] == 2
    assert r["train_syncs"] == 2, r["train_sites"]
    assert r["eval_syncs_per_batch"] <= 1.0, r["eval_sites"]


def test_the_recipe_reads_the_device_once_per_labelling_per_step(tiny_data, tmp_path):
    """The small-scale recipe's grid reads (the cell lookup's features, the answer's size) label
    connected components, whose convergence test is a device read: one per call, one call per
    module per step (its demos and query labelled together, 4- and 8-connected together), on top
    of the one read per log step."""
    from bench.host_syncs import LABELLING_READS_PER_FORWARD, ROWS, TINY_ARCH, measure
    r = measure(tiny_data, tmp_path / "run", TINY_ARCH, 8, 8, 4, 1, "cpu", ROWS["recipe"])
    assert r["steps"] == 8 and r["log_steps"] == 2
    labelling = sum(n for site, n in r["train_sites"].items() if "models/grid_features.py" in site)
    assert r["train_syncs"] - labelling == 2, r["train_sites"]
    assert labelling == LABELLING_READS_PER_FORWARD["recipe"] * 8 == 2 * 8, r["train_sites"]
