"""The house rules of the package layout: no import cycles, a model file that stands alone,
and config tables that agree with the code they describe."""

import ast
import inspect
from pathlib import Path

from krony.config import INIT_METHODS, INIT_OPTIONS, STRUCTURE_NAMES
from krony.layers import STRUCTURES
from krony.layers.kronecker_init import INITS

PACKAGE = Path(__file__).resolve().parents[1] / "krony"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(inside_functions: bool = False) -> dict[str, set[str]]:
    """{module: krony modules it imports at load time} (and, with `inside_functions`, in any
    function too). The exported remote code (`hf_remote`) imports no krony module by design."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py") if "hf_remote" not in p.parts}
    graph = {}
    for name, path in modules.items():
        deps = set()
        tree = ast.parse(path.read_text())
        for node in (ast.walk(tree) if inside_functions else tree.body):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("krony"):
                deps.add(node.module)
                deps |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("krony")}
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def test_no_import_cycles_counting_imports_inside_functions():
    graph = top_level_imports(inside_functions=True)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in graph[node]:
            if state.get(dep) == 1:  # dep is on the current path: it imports back
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_model_stands_alone():
    assert top_level_imports()["krony.model"] == {"krony.config", "krony.targets"}  # GPTConfig; its family name


def test_config_and_schemes_import_no_torch():
    for name in ("krony.config", "krony.schemes", "krony.validate"):
        source = (PACKAGE / (name.split(".")[1] + ".py")).read_text()
        assert "import torch" not in source, name


def test_structure_names_are_the_registered_structures():
    assert tuple(STRUCTURES) == STRUCTURE_NAMES


def test_init_options_table_matches_the_init_functions():
    assert tuple(INITS) == INIT_METHODS
    for name, fn in INITS.items():
        params = [p for p in inspect.signature(fn).parameters if p not in ("W", "a_dims", "factors")]
        assert tuple(params) == INIT_OPTIONS[name], name
