"""Outside ``stamp/`` no Python file branches on mask type names: what a ``mask=`` mode places
and which M a layer gets is decided by ``stamp.MaskPlan`` (issue 23, item 1).

A comparison (``==``, ``!=``, ``is``, ``is not``, ``in``, ``not in``) is a branch on the mask
type when one of its operands is ``MaskType.<member>``, a mask type name as a string literal
(alone or inside a tuple / list / set), or an expression that reads a mask type
(``<...mask...>.type``, ``<...>.get("mask")``, ``<...>["mask"]``). ``"none"`` counts only next
to such an expression (it is also an ordinary word)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from stamp import MaskType

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ["tasks", "scripts", "hydra_plugins", "train.py", "eval.py", "predict.py"]
# the mask types (and config names, e.g. mask=extra_linear_plain) but "none"
TYPE_NAMES = {t.value for t in MaskType} - {"none"} | {"extra_linear_plain"}


def python_files() -> list[Path]:
    files: list[Path] = []
    for entry in CHECKED:
        path = ROOT / entry
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(sorted(path.rglob("*.py")))
    return files


def _strings(node: ast.AST) -> list[str]:
    """String literals of ``node`` itself or of a tuple / list / set literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for element in node.elts for s in _strings(element)]
    return []


def _is_mask_type_member(node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "MaskType"
        for n in ast.walk(node)
    )


def _reads_mask_type(node: ast.AST) -> bool:
    """``mask.type``, ``self.mask_cfg.type``, ``cfg.mask.type``, ``r.get("mask")``,
    ``r["mask"]`` (also inside ``str(...)``)."""
    for n in ast.walk(node):
        if isinstance(n, ast.Attribute) and n.attr == "type" and "mask" in ast.unparse(n.value):
            return True
        if (
            isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and n.func.attr == "get"
            and n.args
            and _strings(n.args[0]) == ["mask"]
        ):
            return True
        if isinstance(n, ast.Subscript) and _strings(n.slice) == ["mask"]:
            return True
    return False


def _is_none(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def branches(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line: source`` of every comparison on a mask type in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        reading = [o for o in operands if _reads_mask_type(o)]
        names = {s for o in operands for s in _strings(o)}
        # a mask read against a named collection / value (SUPPORTED_MASKS), not `is None`
        against = [o for o in operands if o not in reading and not _is_none(o)]
        if (
            any(_is_mask_type_member(o) for o in operands)
            or names & TYPE_NAMES
            or (reading and ("none" in names or any(not _strings(o) for o in against)))
        ):
            found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_detector_finds_each_form_of_branch(tmp_path):
    sample = tmp_path / "sample.py"
    code = (
        "a = mask.type is MaskType.global_\n"  # 1: a MaskType member
        "b = cfg.mask.type not in SUPPORTED\n"  # 2: reads the mask type
        'c = record.get("mask") in ("none", None)\n'  # 3: "none" next to a mask read
        'd = kind == "multilayer"\n'  # 4: a distinctive type name
        'e = contrastive in (None, "none")\n'  # not a mask: ignored
        'f = row["mask"] == "sparse"\n'  # 6
        'g = r.get("mask") is not None\n'  # a presence test, not a branch on the type
    )
    sample.write_text(code)
    lines = [int(hit.split(":")[1]) for hit in branches(sample, tmp_path)]
    assert lines == [1, 2, 3, 4, 6]


@pytest.mark.parametrize("path", python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_branching_on_mask_type_outside_the_core(path):
    hits = branches(path)
    assert not hits, (
        "branching on the mask type outside stamp/ (ask stamp.MaskPlan, or a MaskType / "
        "MaskConfig property, instead):\n  " + "\n  ".join(hits)
    )
