"""How the trainer composes DDP and torch.compile, and what it compiles (issue 21):
- the training module is torch.compile(DDP(head)) (dynamo's DDPOptimizer overlap needs that
  order), DDP without per-forward buffer broadcasts, and the model's buffers are constants;
- checkpoints hold the bare model's keys (no `_orig_mod.` / `module.` prefixes) and load back;
- with compile=true the eval head is compiled once and reused by every evaluation.

torch.compile is replaced by a wrapper that records its argument and nests it as `_orig_mod`
(what a compiled module's state_dict keys carry), so no compilation runs on CPU."""
from __future__ import annotations

import torch
import torch.distributed as dist
import pytest
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from models.recursive_reasoning.etrm import TRMWithEncoder
from tests.helpers import compose_cfg, compose_tiny, make_batch, small_overrides, tiny_config
from training import checkpoint, trainer


class FakeCompiled(nn.Module):
    """torch.compile's result minus the compiling: the module nested as `_orig_mod`."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self._orig_mod = module

    def forward(self, *args, **kwargs):
        return self._orig_mod(*args, **kwargs)

    def __getattr__(self, name):  # as torch's OptimizedModule: the compiled module's attributes
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._orig_mod, name)


@pytest.fixture
def compiled(monkeypatch) -> list:
    calls = []

    def fake_compile(module, *args, **kwargs):
        calls.append(module)
        return FakeCompiled(module)

    monkeypatch.setattr(torch, "compile", fake_compile)
    return calls


@pytest.fixture
def one_rank_group(tmp_path):
    """A gloo process group of one in this process: the trainer then wraps DDP as under torchrun."""
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_ddp_is_compiled_and_checkpoints_hold_the_bare_keys(tiny_data, tmp_path, compiled, one_rank_group):
    run_dir = tmp_path / "run"
    cfg = compose_tiny(small_overrides(tiny_data, run_dir, max_steps=2, compile="true", ema="false", evaluators="[]"))
    trainer.train(cfg)
    train_modules = [m for m in compiled if isinstance(m, DistributedDataParallel)]
    assert len(train_modules) == 1, compiled
    ddp = train_modules[0]
    assert not isinstance(ddp.module, FakeCompiled)  # compile(DDP(head)), not DDP(compile(head))
    assert getattr(ddp, "forward_sync_buffers", getattr(ddp, "broadcast_buffers", None)) is False
    saved = torch.load(checkpoint.latest_checkpoint(run_dir) / "model.pt", map_location="cpu")
    bare = ddp.module.model.state_dict()
    assert set(saved) == set(bare)
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in saved)
    ddp.module.model.load_state_dict(saved)  # strict: the keys load back as they are


def test_eval_head_compiled_once_and_reused(tiny_data, tmp_path, compiled, monkeypatch):
    """Three evaluations (every step of 3) of the EMA model: one compile of the eval head."""
    cfg = compose_tiny(small_overrides(tiny_data, tmp_path / "run", max_steps=3, compile="true",
                                       eval_interval=1e-6, max_eval_groups=1))
    evals = []
    real = trainer.evaluate_with_tta

    def record(head, *args, **kwargs):
        evals.append(head)
        return real(head, *args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate_with_tta", record)
    trainer.train(cfg)
    assert len(evals) == 3 and all(h is evals[0] for h in evals)
    assert isinstance(evals[0], FakeCompiled)
    eval_compiles = [m for m in compiled if m is evals[0]._orig_mod]
    assert len(eval_compiles) == 1
    assert len(compiled) == 2  # the training module and the eval head, nothing per evaluation
    # a checkpoint evaluation of a compile=true run predicts with the compiled head too
    from training import evaluate
    monkeypatch.setattr(evaluate, "evaluate_with_tta", record)
    ckpt = checkpoint.latest_checkpoint(tmp_path / "run")
    evaluate.evaluate_checkpoint(compose_cfg("cfg_evaluate_etrm", [f"checkpoint={ckpt}", f"run_dir={tmp_path / 'again'}"]))
    assert len(compiled) == 3 and len(evals) == 4 and evals[-1] is not evals[0] and isinstance(evals[-1], FakeCompiled)


def test_tta_adapts_the_module_and_predicts_compiled(tiny_data, tmp_path, compiled):
    """compile=true with test-time adaptation: the bare head is adapted (a copy), the adapted head predicts compiled."""
    from training.tta import AdaptedHead
    cfg = compose_tiny(small_overrides(tiny_data, tmp_path / "run", max_steps=1, compile="true", tta="context",
                                       **{"tta.steps": 1, "tta.global_batch_size": 8, "tta.fit_variants": 0}))
    trainer.train(cfg)
    adapted = [m for m in compiled if isinstance(m, AdaptedHead)]
    assert len(adapted) == 1 and not isinstance(adapted[0].head, FakeCompiled)


def test_buffers_are_constants():
    """DDP runs with broadcast_buffers=False: no forward (train or eval, every model option on) writes a buffer."""
    torch.manual_seed(0)
    model = TRMWithEncoder(tiny_config(demo_attention=True, map_read=True, grid_features=True, pos_encodings="rope_2d"))
    before = {k: v.clone() for k, v in model.named_buffers()}
    assert before  # rotary tables, segment ids, H_init/L_init, grid-feature offsets
    batch = make_batch()
    for mode in (model.train, model.eval):
        mode()
        carry = model.initial_carry(batch)
        for _ in range(2):
            carry, out = model(carry, batch)
        out["logits"].float().sum().backward()
    for k, v in model.named_buffers():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)
