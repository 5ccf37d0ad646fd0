import pytest
import torch

from models.losses import ACTLossHead
from models.pretrained import load_pretrained_decoder
from models.recursive_reasoning.etrm import TRMWithEncoder
from tests.helpers import tiny_config


def _model(seed, **kw):
    torch.manual_seed(seed)
    return TRMWithEncoder(tiny_config(**kw))


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_round_trip_from_project_checkpoint_dir(tmp_path):
    src, dst = _model(0), _model(1)
    ckpt = tmp_path / "checkpoints" / "step_10"
    ckpt.mkdir(parents=True)
    # saved through a compiled / wrapped head: prefixes must be stripped
    sd = {f"_orig_mod.model.{k}": v for k, v in src.state_dict().items()}
    torch.save(sd, ckpt / "model.pt")
    enc_before = {k: v.clone() for k, v in dst.encoder.state_dict().items()}
    report = load_pretrained_decoder(ACTLossHead(dst), str(ckpt), verbose=False)
    assert report["missing"] == [] and report["unexpected"] == []
    assert set(report["loaded"]) == set(dst.inner.state_dict())
    assert all(k.startswith("encoder.") for k in report["skipped"]) and report["skipped"]
    assert _same(src.inner.state_dict(), dst.inner.state_dict())
    assert _same(enc_before, dst.encoder.state_dict())  # the encoder is left alone


def test_trm_format_state_dict(tmp_path, capsys):
    src, dst = _model(0), _model(1)
    trm = {}
    for k, v in src.inner.state_dict().items():
        k = k.replace("layers.", "L_level.layers.").replace("embed_tokens.weight", "embed_tokens.embedding_weight")
        trm[f"_orig_mod.model.inner.{k}"] = v
    trm["_orig_mod.model.inner.puzzle_emb.weights"] = torch.zeros(10, 32)
    trm["_orig_mod.model.inner.H_level.layers.0.mlp.down_proj.weight"] = torch.zeros(3, 3)
    del trm["_orig_mod.model.inner.q_head.bias"]
    path = tmp_path / "trm.pt"
    torch.save(trm, path)
    report = load_pretrained_decoder(dst, str(path))
    assert report["missing"] == ["q_head.bias"]
    assert report["unexpected"] == ["H_level.layers.0.mlp.down_proj.weight"]
    assert "puzzle_emb.weights" in report["skipped"]
    src_sd, dst_sd = src.inner.state_dict(), dst.inner.state_dict()
    assert all(torch.equal(src_sd[k], dst_sd[k]) for k in report["loaded"])
    out = capsys.readouterr().out
    assert "missing" in out and "q_head.bias" in out


def test_shape_mismatch_raises(tmp_path):
    src, dst = _model(0, vocab_size=12), _model(1, vocab_size=14)
    torch.save(src.state_dict(), tmp_path / "model.pt")
    with pytest.raises(ValueError) as e:
        load_pretrained_decoder(dst, str(tmp_path / "model.pt"), verbose=False)
    msg = str(e.value)
    assert "embed_tokens.weight" in msg and "(12, 32)" in msg and "(14, 32)" in msg
