"""The Hydra tree: every job line composes exactly as its command would, the tiny config is the
same tree shrunk, and bad names fail at start-up with the valid choices."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import verify
from tests.helpers import compose_cfg
from training import build, run_identity

REPO = Path(__file__).resolve().parents[1]
JOBS = REPO / "jobs-etrm-semi-final.txt"
JOB_LINES = [line for line in JOBS.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_job_file_has_the_six_semi_final_runs():
    names = [next(o for o in verify.parse_job_line(line)[1] if o.startswith("+run_name=")) for line in JOB_LINES]
    assert [n.split("=", 1)[1].strip('"')[:3] for n in names] == ["SF1", "SF2", "SF3", "SF4", "SF5", "SF6"]


@pytest.mark.parametrize("line", JOB_LINES, ids=lambda l: l.split("+run_name=")[1].split()[0].strip('"'))
def test_every_job_line_composes_with_its_settings(line):
    config_name, overrides = verify.parse_job_line(line)
    cfg = compose_cfg(config_name, overrides)
    job = dict(o.lstrip("+").split("=", 1) for o in overrides)
    assert cfg.project_name == "etrm-semi-final"
    assert cfg.arch.name == "recursive_reasoning.etrm@TRMWithEncoder"
    assert cfg.arch.loss.name == "losses@ACTLossHead"
    assert cfg.arch.encoder_type == job["arch.encoder_type"]
    assert cfg.arch.encoder_num_layers == int(job["arch.encoder_num_layers"])
    assert cfg.arch.halt_exploration_prob == float(job["arch.halt_exploration_prob"])
    assert cfg.arch.halt_max_steps == 16 and cfg.epochs == 1000 and cfg.eval_interval == 200
    assert cfg.global_batch_size == int(job["global_batch_size"])
    _, run_name, run_dir = run_identity.run_identity(cfg, config_name)
    assert run_dir == Path("runs") / "etrm-semi-final" / run_name == Path("runs") / "etrm-semi-final" / job["run_name"]


def test_base_config_matches_the_documented_defaults():
    cfg = compose_cfg("cfg_pretrain_etrm_arc_agi_1", [])
    assert "project_name" not in cfg and "run_name" not in cfg
    assert cfg.data_paths == ["data/arc1concept-encoder-aug-1000"]
    assert OmegaConf.to_container(cfg.evaluators) == [{"name": "arc@ARC"}]
    assert (cfg.global_batch_size, cfg.lr, cfg.grad_clip_norm) == (256, 1e-4, 1.0)
    arch = cfg.arch
    assert (arch.H_cycles, arch.L_cycles, arch.L_layers, arch.hidden_size, arch.num_heads, arch.puzzle_emb_len) == \
        (3, 6, 2, 512, 8, 16)
    assert (arch.encoder_type, arch.loss.loss_type, arch.loss.kl_weight) == ("standard", "stablemax_cross_entropy", 1e-4)


def test_default_run_identity_covers_the_config_name_and_the_resolved_config():
    """Without +run_name the run dir is named from a hash of the config name and the resolved config,
    so an edited YAML value (not only a command-line override) or another config starts a new run."""
    tiny = compose_cfg("cfg_pretrain_etrm_tiny", [])
    a = run_identity.run_identity(tiny, "cfg_pretrain_etrm_tiny")
    assert a == run_identity.run_identity(compose_cfg("cfg_pretrain_etrm_tiny", []), "cfg_pretrain_etrm_tiny")
    assert a[0] == "etrm" and a[2].parts[:2] == ("runs", "etrm") and a[1].startswith("standard-")
    edited = compose_cfg("cfg_pretrain_etrm_tiny", [])
    edited.lr = 2e-3  # as if the YAML had been edited: no override names it
    assert run_identity.run_identity(edited, "cfg_pretrain_etrm_tiny")[2] != a[2]
    full = compose_cfg("cfg_pretrain_etrm_arc_agi_1", ["data_paths=[data/arc1-tiny-encoder-aug-8]"])
    assert run_identity.run_identity(full, "cfg_pretrain_etrm_arc_agi_1")[2] != a[2]
    # keys that may change on a resume keep the run (and its checkpoints)
    longer = compose_cfg("cfg_pretrain_etrm_tiny", ["epochs=600", "max_eval_groups=8", "wandb_mode=offline"])
    assert run_identity.run_identity(longer, "cfg_pretrain_etrm_tiny") == a


def test_resuming_with_a_changed_config_is_refused_naming_the_keys(tmp_path):
    old = compose_cfg("cfg_pretrain_etrm_tiny", [])
    ckpt = tmp_path / "step_5"
    ckpt.mkdir()
    (ckpt / "config.yaml").write_text(OmegaConf.to_yaml(old, resolve=True))
    same_but_longer = compose_cfg("cfg_pretrain_etrm_tiny", ["epochs=100", "eval_interval=10"])
    assert run_identity.check_resume_compatible(same_but_longer, ckpt) == []
    changed = compose_cfg("cfg_pretrain_etrm_tiny", ["lr=2e-3", "arch.hidden_size=32"])
    with pytest.raises(ValueError, match=r"arch\.hidden_size: 64 -> 32; lr: 0\.001 -> 0\.002(.|\n)*allow_config_change"):
        run_identity.check_resume_compatible(changed, ckpt)
    allowed = compose_cfg("cfg_pretrain_etrm_tiny", ["lr=2e-3", "allow_config_change=true"])
    assert run_identity.check_resume_compatible(allowed, ckpt) == [("lr", 0.001, 0.002)]


def test_tiny_config_is_the_same_tree_shrunk():
    base, tiny = compose_cfg("cfg_pretrain_etrm_arc_agi_1", []), compose_cfg("cfg_pretrain_etrm_tiny", [])
    assert set(base) == set(tiny) and set(base.arch) == set(tiny.arch)
    assert tiny.arch.hidden_size < base.arch.hidden_size and tiny.build_if_missing.max_grid_size <= 10


@pytest.mark.parametrize("override, match", [
    ("arch.name=recursive_reasoning.nope@TRMWithEncoder", "valid modules"),
    ("arch.name=recursive_reasoning.etrm@Nope", "valid classes"),
    ("arch.loss.name=losses@Nope", "valid classes"),
    ("arch.encoder_type=nope", "hybrid_standard"),
    ("arch.loss.loss_type=nope", "softmax_cross_entropy"),
])
def test_bad_names_fail_at_start_up_with_the_choices(override, match):
    cfg = compose_cfg("cfg_pretrain_etrm_tiny", [override])
    fake_split = type("Split", (), {"seq_len": 36, "vocab_size": 12, "max_demos": 3, "side": 6})()
    with pytest.raises(ValueError, match=match):
        build.build_model(cfg, build.model_kwargs(cfg, fake_split, 2))


def test_missing_dataset_names_its_path_and_the_build_command(tmp_path):
    cfg = compose_cfg("cfg_pretrain_etrm_tiny", [f"data_paths=[{tmp_path / 'absent'}]"])
    with pytest.raises(FileNotFoundError, match=r"absent(.|\n)*dataset\.build_arc_dataset"):
        build.load_data(cfg)


def test_data_derived_keys_cannot_be_set_by_hand():
    cfg = compose_cfg("cfg_pretrain_etrm_tiny", ["+arch.seq_len=900"])
    fake_split = type("Split", (), {"seq_len": 36, "vocab_size": 12, "max_demos": 3, "side": 6})()
    with pytest.raises(ValueError, match="arch.seq_len comes from the dataset"):
        build.model_kwargs(cfg, fake_split, 2)


def test_a_model_built_for_another_canvas_says_so():
    split = type("Split", (), {"seq_len": 100, "vocab_size": 12, "side": 10})()
    with pytest.raises(ValueError, match="grid size"):
        build.check_data_fits({"seq_len": 900, "vocab_size": 12}, split, "checkpoint x")


def test_only_the_configs_own_dataset_is_ever_built(tmp_path, monkeypatch):
    """A mistyped data path used to be built (as the tiny ARC dataset) and trained on."""
    built = []
    monkeypatch.setattr(build.subprocess, "run", lambda cmd, **kw: built.append(cmd) or type("P", (), {"returncode": 0}))
    default = tmp_path / "tiny-default"
    spec = [f"build_if_missing.output_dir={default}", f"data_paths=[{default}]"]
    build.ensure_dataset(compose_cfg("cfg_pretrain_etrm_tiny", spec), is_main=True)
    assert len(built) == 1 and built[0][built[0].index("--output-dir") + 1] == str(default)
    typo = tmp_path / "tiny-defualt"
    with pytest.raises(FileNotFoundError, match=r"data_paths: dataset directory .*tiny-defualt does not exist(.|\n)*"
                                                r"dataset\.build_arc_dataset(.|\n)*built automatically"):
        build.ensure_dataset(compose_cfg("cfg_pretrain_etrm_tiny", spec[:1] + [f"data_paths=[{typo}]"]), is_main=True)
    with pytest.raises(FileNotFoundError, match="data_paths_test"):
        build.ensure_dataset(compose_cfg("cfg_pretrain_etrm_tiny", spec + [f"data_paths_test=[{typo}]"]), is_main=True)
    assert len(built) == 1 and not typo.exists()


# ------------------------------------------------------------------------------------ the fixture
# tests/fixtures/resolved_configs.json: the resolved config of every SF1-SF6 job line and of the
# seed configs, captured before the config was reorganised (arch schema from ETRMConfig, data and
# experiment groups). Keys may be added since; every captured key must keep its value.
FIXTURE = json.loads((REPO / "tests" / "fixtures" / "resolved_configs.json").read_text())
_UNSET = "<unset>"
# captured keys whose value was changed on purpose, and why (nothing a run computes)
INTENDED_CHANGES = {("*", "summary_note"): "its pointer to a README section now points to docs/BENCHMARKS.md",
                    ("cfg_evaluate_etrm", "wandb_mode"): "removed: an evaluation never logged to W&B",
                    # issue 21: a metrics read (host sync) per log step, 1 -> 10 on the GPU configs (tiny keeps 1)
                    **{(name, "log_interval"): "10: one host read per 10 steps (issue 21)"
                       for name in ("SF1", "SF2", "SF3", "SF4", "SF5", "SF6", "cfg_pretrain_etrm_arc_agi_1")}}


def _flat(d, prefix=""):
    if isinstance(d, dict) and d:
        return {k: v for key, sub in d.items() for k, v in _flat(sub, f"{prefix}.{key}" if prefix else key).items()}
    return {prefix: d}


@pytest.mark.parametrize("name", sorted(FIXTURE))
def test_every_job_line_and_seed_config_resolves_as_before(name):
    entry = FIXTURE[name]
    if "line" in entry:  # the job file's current line for this run, composed as verify does
        line = next(line for line in JOB_LINES if f'+run_name="{name}' in line)
        cfg = compose_cfg(*verify.parse_job_line(line))
    else:
        cfg = compose_cfg(entry["config_name"], [])
    before, now = _flat(entry["config"]), _flat(OmegaConf.to_container(cfg, resolve=True))
    changed = {k: (v, now.get(k, _UNSET)) for k, v in before.items()
               if now.get(k, _UNSET) != v and ("*", k) not in INTENDED_CHANGES and (name, k) not in INTENDED_CHANGES}
    assert not changed, (f"{name}: captured values changed (key: before -> now): {changed}; "
                         f"keys added since the capture: {sorted(set(now) - set(before))}")


def test_a_run_started_before_the_model_keys_were_listed_still_resumes(tmp_path):
    """SF runs in flight wrote config.yaml without arch.encoder_set_layers & co. (they ran with the
    model defaults): the same job line must resume them, not be refused as a changed config."""
    ckpt = tmp_path / "step_5"
    ckpt.mkdir()
    (ckpt / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(FIXTURE["SF1"]["config"])))
    cfg = compose_cfg(*verify.parse_job_line(next(line for line in JOB_LINES if '+run_name="SF1' in line)))
    assert "encoder_set_layers" in cfg.arch and "encoder_set_layers" not in FIXTURE["SF1"]["config"]["arch"]
    assert run_identity.check_resume_compatible(cfg, ckpt) == []
    changed = compose_cfg(*verify.parse_job_line(next(line for line in JOB_LINES if '+run_name="SF1' in line)))
    changed.arch.encoder_set_layers = 3
    with pytest.raises(ValueError, match=r"arch\.encoder_set_layers: '<unset>' -> 3"):
        run_identity.check_resume_compatible(changed, ckpt)


def test_the_bench_paper_preset_is_the_configs_model():
    """One source of model defaults: the benches' `paper` preset is the ARC config's model, except
    what a timing needs fixed (no halting exploration, float32 parameters under autocast)."""
    from bench.common import model_config
    from models.config import ETRMConfig

    paper = model_config("paper", 2)
    arch = compose_cfg("cfg_pretrain_etrm_arc_agi_1", []).arch
    differ = {k for k in arch if k not in ("name", "loss") and paper[k] != arch[k]}
    assert differ == {"halt_exploration_prob", "forward_dtype"}
    assert ETRMConfig.from_dict(paper).L_cycles == arch.L_cycles == 6
