"""The package's layout rules: no import circle between stormfold's modules, no module over
600 lines, and the places issue 15 gave one home each stay single."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "stormfold"
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks (never imported at run time)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def import_graph() -> dict[str, set[str]]:
    """module → the stormfold modules it imports (module level and inside functions)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_nodes(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                    + ([base] if base else []))
                # "from pkg import sub" imports the submodule when there is one.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules, or None."""
    colour = {n: 0 for n in graph}  # 0 new, 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == 1:
                return stack[stack.index(nxt):] + [nxt]
            if colour[nxt] == 0:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        colour[node] = 2
        return None

    for start in sorted(graph):
        if colour[start] == 0:
            found = visit(start)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_between_stormfold_modules():
    graph = import_graph()
    assert len(graph) > 80 and "stormfold.io.movie" in graph["stormfold.io.picasso"] | {
        "stormfold.io.movie"}  # the scan sees the package
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph) or [])


@pytest.mark.parametrize("name", sorted(_modules()))
def test_no_module_is_longer_than_600_lines(name):
    n = len(_modules()[name].read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{name} has {n} lines"


def _defines(name: str) -> list[str]:
    """Modules that define a function or class called ``name`` at their top level."""
    found = []
    for module, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name
               for n in tree.body):
            found.append(module)
    return found


def test_each_concept_has_one_home():
    # Forward operators and the Gaussian kernel live in physics only.
    for cls in ("BlurDownsample", "BandedBlurDownsample", "SquaredBlurDownsample"):
        assert _defines(cls) == ["stormfold.physics.operator"], cls
    assert _defines("integrated_gaussian_1d") == ["stormfold.physics.psf"]
    assert _defines("fine_pixel_index") == ["stormfold.physics.geometry"]
    # One threshold calibration, one fine-grid target maker, one camera merge, one figure kit.
    assert _defines("Calibration") == ["stormfold.training.calibrate"]
    assert _defines("fine_targets") == ["stormfold.training.targets"]
    assert _defines("CameraOverrides") == ["stormfold.localize.camera"]
    assert _defines("scale_bar_nm") == ["stormfold.figures"]
    assert _defines("_scale_bar") == []
    assert _defines("render_histogram") == ["stormfold.postprocess.render"]
    assert not (SRC / "unrolled" / "operator.py").exists()
    assert not (SRC / "sofi" / "operator.py").exists()
