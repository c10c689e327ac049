"""The package's layering (docs/ARCHITECTURE.md): a module never imports from a layer above its own."""

from __future__ import annotations

import ast
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[1] / "qwen-vl-finetune" / "qwenvl"
# layer -> the qwenvl layers it must not import
FORBIDDEN = {
    "scoring": {"model", "data", "train", "inference", "evaluation", "quickstart"},
    "model": {"data", "train", "inference", "evaluation", "quickstart"},
    "data": {"train", "inference", "evaluation", "quickstart"},
    "inference": {"train", "evaluation", "quickstart"},
    # GRPO's server rollouts are inference: train uses the inference layer's client (never the other way round).
    "train": {"evaluation", "quickstart"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


# Known exceptions, each with its reason (none today: GRPO's rewards and the benchmarks share the answer checking of
# qwenvl.scoring, the bottom layer).
ALLOWED: set[tuple[str, str]] = set()


def test_no_module_imports_from_a_layer_above():
    violations = []
    for layer, forbidden in FORBIDDEN.items():
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            for line, module in _imports(path):
                parts = module.split(".")
                if (str(path.relative_to(PACKAGE.parent)), module) in ALLOWED:
                    continue
                if parts[0] == "qwenvl" and len(parts) > 1 and parts[1] in forbidden:
                    violations.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    assert violations == []


def test_the_checker_sees_function_level_imports(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from qwenvl.inference.hf import HFBackend\n")
    assert _imports(sample) == [(2, "qwenvl.inference.hf")]
