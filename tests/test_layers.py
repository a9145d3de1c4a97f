"""The package's shape: imports point down only (function-level imports included), the lab sits
above the library, and no file under asr_tf/ or tools/ passes 400 lines."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "asr_tf"
MAX_LINES = 400


def _module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path, name, modules):
    """The asr_tf modules that ``path`` (module ``name``) imports anywhere in its body: ``from
    pkg import mod`` is an edge to ``pkg.mod`` where that is a module, else to ``pkg``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("asr_tf"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package of this module
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if base.startswith("asr_tf"):
                found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                             for a in node.names)
    return found


def import_graph():
    """{module: set of asr_tf modules it imports}, over asr_tf/ (packages' __init__ included)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path, name, modules) if m in modules and m != name}
            for name, path in modules.items()}


def find_cycle(graph):
    """One import circle as a list of modules (first == last), or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt, node]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_a_planted_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_circle_in_asr_tf():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("layer, above", [
    ("asr_tf.lab", ()),  # nothing that trains, evaluates, exports or serves imports the lab
    ("asr_tf.run", ("asr_tf.lab",)),  # the run layer: only the lab and the tools above it
])
def test_layers_are_imported_from_above_only(layer, above):
    for name, imported in import_graph().items():
        if name == layer or name.startswith(layer + ".") or name.startswith(above):
            continue
        bad = sorted(m for m in imported if m == layer or m.startswith(layer + "."))
        assert not bad, f"{name} imports {bad} from above it"


def test_no_file_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in [*PACKAGE.rglob("*.py"), *(ROOT / "tools").glob("*.py")]
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"
