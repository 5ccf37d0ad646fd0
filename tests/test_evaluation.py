"""The one evaluation module: `run_until_halted` keeps each sample's outputs at its own halting
step (the eval loop and TTA's fit both use it), ignored label tokens never count against an exact
answer, and the project's packages import each other without a cycle."""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dataset.tokens import IGNORE_LABEL_ID
from training.evaluation import exact_match, run_until_halted

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("dataset", "models", "training", "evaluators")


@dataclass
class Carry:
    steps: torch.Tensor
    halted: torch.Tensor


class ScriptedHead(nn.Module):
    """Sample i halts at ACT step halt_at[i]; at step t every sample predicts the token t and
    its q_halt logit is t, so the kept outputs tell which step they came from."""

    def __init__(self, halt_at: list[int], max_steps: int = 5):
        super().__init__()
        self.halt_at = torch.tensor(halt_at)
        self.model = type("M", (), {"config": type("C", (), {"halt_max_steps": max_steps})(),
                                    "initial_carry": lambda _, batch: Carry(torch.zeros(len(halt_at), dtype=torch.int32),
                                                                            torch.zeros(len(halt_at), dtype=torch.bool))})()
        self.calls = 0

    def forward(self, carry, batch):
        self.calls += 1
        t = carry.steps + 1
        preds = torch.full_like(batch["inputs"], 0) + t[:, None].to(batch["inputs"].dtype)
        logits = torch.nn.functional.one_hot(preds, 8).float() * t[:, None, None]
        carry = Carry(t, t >= self.halt_at)
        return carry, None, None, {"preds": preds, "q_halt_logits": t.float(), "logits": logits}, None


def test_each_sample_keeps_its_own_halting_steps_outputs():
    head = ScriptedHead([1, 3, 2])
    labels = torch.tensor([[1, 1, IGNORE_LABEL_ID], [3, 2, 3], [2, IGNORE_LABEL_ID, IGNORE_LABEL_ID]])
    batch = {"inputs": torch.zeros(3, 3, dtype=torch.int64), "labels": labels}
    loss_fn = lambda logits, lab: torch.where(lab == IGNORE_LABEL_ID, 0.0, 1.0 / logits.amax(-1))  # noqa: E731
    out = run_until_halted(head, batch, "float32", loss_fn=loss_fn)
    assert out["steps"].tolist() == [1, 3, 2] and out["q_halt_logits"].tolist() == [1.0, 3.0, 2.0]
    assert out["preds"][:, 0].tolist() == [1, 3, 2]
    # sample 1 predicts 3 everywhere but its label has a 2: not exact; ignored tokens never count
    assert out["exact"].tolist() == [True, False, True]
    assert torch.allclose(out["loss"], torch.tensor([1.0, 1 / 3, 0.5], dtype=torch.float64))
    assert head.calls == 3  # stops as soon as every sample has halted


def test_exact_match_ignores_exactly_the_ignored_label_tokens():
    preds = torch.tensor([[5, 7], [5, 7], [5, 7]])
    labels = torch.tensor([[5, IGNORE_LABEL_ID], [5, 0], [5, -1]])
    assert exact_match(preds, labels).tolist() == [True, False, False]


def _imports(path: Path, name: str) -> set[str]:
    """Every module (or module.attribute) one file imports, at module level or inside functions."""
    package = name.rsplit(".", 1)[0] if path.name != "__init__.py" else name
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            found.update([module] + [f"{module}.{a.name}" for a in node.names])
    return found


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def test_the_packages_import_each_other_without_a_cycle():
    """Module-level and function-level imports alike: an import moved into a function to dodge a
    cycle (as training/tta.py once did with the trainer) is still a cycle."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        graph[name] = {m for m in _imports(path, name) if m in files and m != name}
    for name, deps in graph.items():
        if name.startswith("dataset"):
            assert not any(d.startswith("models") for d in deps), f"{name} imports models: dataset must not"
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_test_modules_share_helpers_through_tests_helpers_only():
    """A test module importing another test module runs (and couples to) that module's tests."""
    for path in sorted((REPO / "tests").glob("*.py")):
        name = _module_name(path)
        imported = {m for m in _imports(path, name) if m.startswith("tests.test_") and m.count(".") == 1}
        assert not imported, f"{path.name} imports {sorted(imported)}: move the shared helper to tests/helpers.py"
