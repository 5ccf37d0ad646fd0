"""The faults a cluster produces (issue 19): a multi-node restart, a stop signal, a damaged or
failed checkpoint, a run dir not shared by every node, W&B without a route out, TTA's RNG.

Subprocess runs are bounded by timeouts and their process groups killed in a `finally`."""
from __future__ import annotations

import datetime
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.helpers import (RANDOM_DRAWS, _descendants, assert_same_end, compose_tiny, read_metrics, run_cli,
                           small_overrides)
from training import checkpoint, distributed, metrics_logger, preemption, trainer, tta

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def wait_for(predicate, timeout_s: float, what: str, procs=()) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        assert all(p.poll() is None for p in procs), f"a process ended while waiting for {what}"
        time.sleep(0.05)


def trim_metrics(run_dir: Path, up_to: int) -> None:
    """Keep the metrics a run had written up to its checkpoint (what a crash would leave)."""
    kept = [r for r in read_metrics(run_dir) if r["step"] <= up_to]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))


# ---------------------------------------------------------------------------------------------
# defect 1: the group's store prefix is agreed by all ranks, whatever earlier groups left there


def test_every_rank_agrees_on_a_fresh_group_token_despite_a_dead_groups_keys():
    port = free_port()
    server = dist.TCPStore("127.0.0.1", port, None, is_master=True, timeout=datetime.timedelta(seconds=30),
                           wait_for_workers=False)
    timeout = datetime.timedelta(seconds=20)
    # a dead group of 3 left its token, its ranks' announcements and rank 0's answer behind
    server.set(distributed.GENERATION_KEY, "dead")
    server.set("etrm/dead/ready", json.dumps({"1": "old1", "2": "old2"}))
    got: dict[int, str] = {}

    def rank(r: int) -> None:
        store = dist.TCPStore("127.0.0.1", port, None, is_master=False, timeout=timeout)
        got[r] = distributed.agree_on_generation(store, r, 3, timeout, poll_s=0.05)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (1, 2)]
    for t in threads:  # the other ranks start first: they can only read the dead group's token
        t.start()
    time.sleep(0.5)
    rank(0)
    for t in threads:
        t.join(timeout=30)
    assert got[0] != "dead" and got == {0: got[0], 1: got[0], 2: got[0]}


@pytest.mark.slow
def test_two_node_restart_after_sigkill_finishes_and_matches(tiny_data, tmp_path):
    """Two torchrun agents (--nnodes 2, c10d on localhost, gloo): one node's worker is SIGKILLed
    after the first checkpoint; with --max-restarts 1 on both the job finishes by itself and ends
    where an uninterrupted run ends, although the nodes' restart counts now differ (0 and 1)."""
    steps = 20
    clean, run_dir = tmp_path / "clean", tmp_path / "restart"
    extra = dict(max_steps=steps, checkpoint_interval=5, dist_timeout_minutes=1, **RANDOM_DRAWS)
    run_cli(small_overrides(tiny_data, clean, **extra), nproc=2)
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "faults",
           "--max-restarts", "1", "--monitor-interval", "1", "pretrain_etrm.py", "--config-name",
           "cfg_pretrain_etrm_tiny", *small_overrides(tiny_data, run_dir, **extra)]
    logs = [open(tmp_path / f"agent{n}.log", "wb") for n in (0, 1)]
    agents = [subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
              for log in logs]
    try:
        first = run_dir / "checkpoints" / "step_5" / checkpoint.MARKER
        wait_for(first.exists, 300, "the first checkpoint", agents)
        healthy, failing = ([p for p in _descendants(a.pid) if b"pretrain_etrm.py" in Path(f"/proc/{p}/cmdline").read_bytes()]
                            for a in agents)
        assert healthy and failing, "a worker is missing"
        # On GPUs a rank whose peer died blocks in its NCCL collective: its agent sees it healthy and
        # restarts it for the other node's re-rendezvous without counting a restart. Gloo on CPU
        # notices the dead peer at once instead (both nodes would count), so the healthy worker is
        # held stopped while its agent takes that decision.
        os.kill(healthy[0], signal.SIGSTOP)
        os.kill(failing[0], signal.SIGKILL)
        time.sleep(5)
        os.kill(healthy[0], signal.SIGCONT)
        assert not (run_dir / "checkpoints" / f"step_{steps}").exists(), "the run ended before the kill"
        codes = [a.wait(timeout=240) for a in agents]
    finally:
        for a in agents:
            kill_group(a)
        for log in logs:
            log.close()
    out = "".join((tmp_path / f"agent{n}.log").read_text(errors="replace") for n in (0, 1))
    assert codes == [0, 0], out[-4000:]
    assert "resumed from" in out
    assert checkpoint.latest_checkpoint(run_dir).name == f"step_{steps}"
    assert_same_end(clean, run_dir, steps)


# ---------------------------------------------------------------------------------------------
# defect 2: a stop signal -> a checkpoint at the agreed step, exit 75; save before evaluating


def test_signal_in_process_checkpoints_that_step_and_exits_75(tiny_data, tmp_path, monkeypatch):
    """SIGTERM arrives during step 6 (checkpoint_interval 4): the checkpoint is step_6, not the
    periodic step_4; the run exits with EXIT_PREEMPTED; the rerun ends as the uninterrupted run."""
    clean, stopped = tmp_path / "clean", tmp_path / "stopped"
    extra = dict(max_steps=10, checkpoint_interval=4, **RANDOM_DRAWS)
    trainer.train(compose_tiny(small_overrides(tiny_data, clean, **extra)))
    real, calls = trainer.grad_norms, {"n": 0}

    def signal_during_step_6(model):
        calls["n"] += 1
        if calls["n"] == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(model)

    monkeypatch.setattr(trainer, "grad_norms", signal_during_step_6)
    with pytest.raises(preemption.Preempted) as stop:
        trainer.train(compose_tiny(small_overrides(tiny_data, stopped, **extra)))
    assert stop.value.code == preemption.EXIT_PREEMPTED == 75 and stop.value.step == 6
    assert [p.name for p in checkpoint.list_checkpoints(stopped)] == ["step_4", "step_6"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers put back
    monkeypatch.setattr(trainer, "grad_norms", real)
    trainer.train(compose_tiny(small_overrides(tiny_data, stopped, **extra)))
    assert_same_end(clean, stopped, 10)


def test_checkpoint_is_written_before_the_evaluation(tiny_data, tmp_path, monkeypatch):
    """An evaluation that crashes must not take the steps before it with it."""
    def crash(*a, **k):
        raise RuntimeError("evaluation crashed")

    monkeypatch.setattr(trainer, "evaluate_with_tta", crash)
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="evaluation crashed"):
        trainer.train(compose_tiny(small_overrides(tiny_data, run_dir, max_steps=4)))
    assert [p.name for p in checkpoint.list_checkpoints(run_dir)] == ["step_4"]


@pytest.mark.slow
def test_sigterm_to_two_rank_workers_checkpoints_then_rerun_matches(tiny_data, tmp_path):
    """SIGTERM to both workers of a 2-rank torchrun run mid-training: one checkpoint at the step the
    ranks agreed on (no periodic checkpoint is configured), workers exit 75, the rerun ends equal."""
    steps = 30
    clean, run_dir = tmp_path / "clean", tmp_path / "stopped"
    extra = dict(max_steps=steps, **RANDOM_DRAWS)
    run_cli(small_overrides(tiny_data, clean, **extra), nproc=2)
    proc = run_cli(small_overrides(tiny_data, run_dir, **extra), nproc=2, wait=False)
    try:
        metrics = run_dir / "metrics.jsonl"
        wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, 300, "3 steps", [proc])
        workers = [p for p in _descendants(proc.pid) if b"pretrain_etrm.py" in Path(f"/proc/{p}/cmdline").read_bytes()
                   and p != proc.pid]
        assert len(workers) == 2
        for w in workers:
            os.kill(w, signal.SIGTERM)
        out, _ = proc.communicate(timeout=240)
    finally:
        kill_group(proc)
    out = out.decode(errors="replace")
    assert "exitcode: 75" in out, out[-3000:]
    saved = checkpoint.list_checkpoints(run_dir)
    assert len(saved) == 1 and 3 <= int(saved[0].name[5:]) < steps, (saved, out[-3000:])
    assert f"checkpoint at step {saved[0].name[5:]}, then exit" in out
    trim_metrics(run_dir, int(saved[0].name[5:]))
    run_cli(small_overrides(tiny_data, run_dir, **extra), nproc=2)
    assert_same_end(clean, run_dir, steps)


# ---------------------------------------------------------------------------------------------
# defects 3, 4: damaged and failed checkpoints, rank 0 decides, a run dir not shared


def test_truncated_rank_file_falls_back_to_the_previous_checkpoint(tiny_data, tmp_path, caplog):
    clean, damaged = tmp_path / "clean", tmp_path / "damaged"
    extra = dict(max_steps=12, checkpoint_interval=4, **RANDOM_DRAWS)
    trainer.train(compose_tiny(small_overrides(tiny_data, clean, **extra)))
    shutil.copytree(clean, damaged)
    shutil.rmtree(damaged / "checkpoints" / "step_12")
    rank_file = damaged / "checkpoints" / "step_8" / "rank_0.pt"
    rank_file.write_bytes(rank_file.read_bytes()[: rank_file.stat().st_size // 2])  # marker still there
    trim_metrics(damaged, 4)
    caplog.set_level("WARNING", logger="etrm")
    trainer.train(compose_tiny(small_overrides(tiny_data, damaged, **extra)))
    warned = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warned) == 1 and "step_8" in warned[0] and "rank_0.pt" in warned[0], warned
    assert (damaged / "checkpoints" / "step_8.unreadable" / "rank_0.pt").exists()  # kept, not deleted
    assert [r["step"] for r in read_metrics(damaged) if "train/lr" in r] == list(range(1, 13))
    assert_same_end(clean, damaged, 12)


def test_a_failed_write_leaves_the_previous_checkpoint_and_says_why(tiny_data, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    real_save = torch.save

    def full_disk_at_step_8(obj, path, *a, **k):
        if "step_8" in str(path) and str(path).endswith("model.pt"):
            real_save(obj, path, *a, **k)  # part of the file made it before the disk filled
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(checkpoint.torch, "save", full_disk_at_step_8)
    with pytest.raises(checkpoint.CheckpointWriteError) as err:
        trainer.train(compose_tiny(small_overrides(tiny_data, run_dir, max_steps=8, checkpoint_interval=4,
                                                   checkpoint_keep_last=1)))
    assert "No space left on device" in str(err.value) and "step_4" in str(err.value)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_4"]
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert checkpoint.load_checkpoint(run_dir / "checkpoints" / "step_4", rank=0)["trainer_state"]["step"] == 4


@pytest.mark.slow
def test_a_run_dir_not_shared_by_every_rank_is_refused(tiny_data, tmp_path):
    """Each rank gets its own folder (as a node-local path would): refused before any training."""
    run_dir = str(tmp_path / "local_${oc.env:LOCAL_RANK}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "pretrain_etrm.py",
           "--config-name", "cfg_pretrain_etrm_tiny", *small_overrides(tiny_data, "X", dist_timeout_minutes=1)]
    cmd = [c if not c.startswith("run_dir=") else f"run_dir={run_dir}" for c in cmd]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=180)
    finally:
        kill_group(proc)
    out = out.decode(errors="replace")
    assert proc.returncode != 0 and "is not shared by every rank: rank 1" in out, out[-3000:]
    assert not (tmp_path / "local_0" / "checkpoints").exists()


# ---------------------------------------------------------------------------------------------
# defect 5: TTA's re-seeding does not leak into training; defect 6: W&B


def test_tta_adaptation_leaves_the_global_rng_as_it_found_it(monkeypatch):
    def adapt_that_reseeds(head, *a, **k):
        torch.manual_seed(1234)
        torch.rand(3)
        return head, {}

    monkeypatch.setattr(tta, "adapt", adapt_that_reseeds)
    monkeypatch.setattr(tta, "run_evaluation", lambda *a, **k: {})
    settings = types.SimpleNamespace(active=True, save_weights=False, predict="adapted", puzzles="all")
    torch.manual_seed(7)
    torch.rand(5)
    expected_state = torch.get_rng_state()
    tta.evaluate_with_tta(None, None, None, [], None, "float32", None, 0, settings)
    assert torch.equal(torch.get_rng_state(), expected_state)


class FakeWandb(types.ModuleType):
    """Records what wandb.init / define_metric / log receive (no network, no files)."""

    def __init__(self, fail_online: bool = False):
        super().__init__("wandb")
        self.inits, self.logged, self.defined, self.fail_online = [], [], [], fail_online

    def init(self, **kw):
        if kw["mode"] == "online" and self.fail_online:
            raise RuntimeError("CommError: network unreachable")
        self.inits.append(kw)
        fake = self
        return types.SimpleNamespace(define_metric=lambda *a, **k: fake.defined.append((a, k)),
                                     log=lambda data, **k: fake.logged.append((data, k)), finish=lambda: None)


@pytest.mark.parametrize("reachable, fail_online", [(False, False), (True, True)])
def test_wandb_goes_offline_keeps_its_id_and_logs_on_the_trainer_step(tmp_path, monkeypatch, reachable, fail_online):
    fake = FakeWandb(fail_online)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr(metrics_logger, "wandb_reachable", lambda timeout_s=3.0: reachable)
    for step in (8, 5):  # a restart from an older checkpoint replays steps below the last logged
        logger = metrics_logger.MetricsLogger(tmp_path, "p", "n", {}, "online", enabled=True)
        logger.log({"train/loss": 1.0}, step)
        logger.close()
    assert [kw["mode"] for kw in fake.inits] == ["offline", "offline"]
    assert fake.inits[0]["id"] == fake.inits[1]["id"] == (tmp_path / "wandb_run_id").read_text()
    assert fake.inits[0]["resume"] == "allow"
    # no W&B `step=` (points below the last logged step would be dropped): trainer/step is the x-axis
    assert fake.logged == [({"train/loss": 1.0, "trainer/step": 8}, {}), ({"train/loss": 1.0, "trainer/step": 5}, {})]
    assert (("*",), {"step_metric": "trainer/step"}) in fake.defined


# ---------------------------------------------------------------------------------------------
# the Slurm script and verify


def test_verify_accepts_the_sbatch_script_and_names_what_a_copy_lacks(tmp_path):
    import verify

    script = REPO / "scripts" / "slurm" / "etrm.sbatch"
    checks, nodes = verify.check_sbatch(script)
    assert nodes == 2 and all(ok for _, ok, _ in checks), checks
    broken = tmp_path / "broken.sbatch"
    broken.write_text(script.read_text().replace("#SBATCH --requeue\n", "")
                      .replace(",SIGUSR1,SIGUSR2", "").replace("--kill-on-bad-exit=1 ", ""))
    failed = {name for name, ok, _ in verify.check_sbatch(broken)[0] if not ok}
    assert failed == {"#SBATCH --requeue", "torchrun --signals-to-handle forwards that signal to the workers",
                      "srun --kill-on-bad-exit"}
