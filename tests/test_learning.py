"""ETRM learns to read its demos: a short run through the real pipeline (generator -> builder ->
pretrain_etrm.py -> ARC evaluator) on generated `fill` puzzles (the background takes a colour
drawn per puzzle, so only the demos tell which) beats the same run with the context zeroed,
which can only guess. The two trainings run side by side (one thread each); a few minutes on 2
CPU cores. Run the full benchmark with `python -m bench.learning`."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from bench import learning

STEPS = 400


@pytest.mark.slow
def test_encoder_beats_zeroed_context_on_held_out_puzzles(tmp_path):
    args = learning.parse_args([
        "--minutes", "0", "--max-steps", str(STEPS), "--num-train", "150", "--num-eval", "30", "--families", "fill",
        "--num-aug", "100", "--eval-variants", "2", "--threads", "1", "--seed", "1", "--out", str(tmp_path)])
    puzzles, built = learning.prepare_data(tmp_path, args.num_train, args.num_eval, args.seed, args.families,
                                           args.num_aug, args.train_queries, log=lambda *_: None)
    truths = learning.eval_truths(puzzles)
    blind = learning.rule_blind_bound(puzzles)["all"]["pass@2"]
    rows = [{"name": "etrm", "encoder": "colour_slots", "ablation": False},
            {"name": "ablation", "encoder": "colour_slots", "ablation": True}]
    runs = tmp_path / "runs"
    with ThreadPoolExecutor(2) as pool:
        etrm, ablation = pool.map(lambda r: learning.run_row(r, built, runs, args, truths, log=lambda *_: None), rows)
    msg = (f"held-out pass@2: encoder {etrm['pass@2']:.3f} (train exact {etrm['train_exact']:.3f}), "
           f"zeroed context {ablation['pass@2']:.3f}, rule-blind bound {blind:.3f}")
    print(msg)
    assert etrm["steps"] == STEPS and ablation["steps"] == STEPS
    assert ablation["pass@2"] <= blind + 0.15, msg          # without demos: no better than a guess
    assert etrm["pass@2"] >= ablation["pass@2"] + 0.3, msg  # with them: clearly better
    assert etrm["enc_var"] > 10 * max(ablation["enc_var"], 1e-6), msg
