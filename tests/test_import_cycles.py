"""No import cycle in clawd, between modules or between packages.

The graph is read statically (ast), so a cycle fails here even where Python would
import it without an error today (a function-local import, a name used only later).

What counts as an edge from module M:
- every `import clawd.x` / `from clawd.x import y` in M, at any depth: at module level,
  inside a function (it runs later, but it is still a dependency), and under
  `if TYPE_CHECKING:`. A type-only import is a dependency of the design too: it keeps
  the layers from being drawn apart, and a later runtime use would turn it into a
  real cycle without notice. (Today clawd has no type-only cycle to excuse.)
- `from clawd.pkg import sub` where `sub` is a module: an edge to `clawd.pkg.sub` only.
- M's own package's `__init__`: Python runs it before M. So a package `__init__` that
  re-exports its own modules is a cycle (`skills` -> `skills.syncer` -> `skills`):
  import a name from the module that defines it.

Packages: every folder under clawd/ is one node, every flat module under clawd/ another;
an edge joins two nodes when a module of one imports a module of the other. A cycle
there (`backup` -> `settings` -> `backup`) fails too.

And, as python-zeroconf does, every module is imported alone in a fresh `sys.modules`
(one subprocess), which catches a cycle that breaks at import time in some order.
"""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
from collections.abc import Iterator, Mapping, Set
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "clawd"


def module_files() -> dict[str, Path]:
    """Dotted module name -> its file, for every module of clawd."""
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_package(name: str, modules: Mapping[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _owner(target: str, modules: Mapping[str, Path]) -> str | None:
    """The clawd module an imported dotted name lives in (None outside clawd)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def imports_of(name: str, modules: Mapping[str, Path]) -> set[str]:
    """The clawd modules `name` depends on (see the module docstring for what counts)."""
    tree = ast.parse(modules[name].read_text(), filename=str(modules[name]))
    package = name if _is_package(name, modules) else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            submodules = {f"{module}.{a.name}" for a in node.names} & modules.keys()
            targets.update(submodules)
            if len(submodules) < len(node.names):
                targets.add(module)  # some names come from the module (or __init__) itself
    edges = {owner for t in targets if (owner := _owner(t, modules)) is not None}
    parent = name.rpartition(".")[0]
    if parent in modules and parent != "clawd":
        edges.add(parent)  # Python runs the package's __init__ first
    edges.discard(name)
    edges.discard("clawd")  # clawd/__init__.py holds only the version
    return edges


def find_cycle(graph: Mapping[str, Set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def module_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, modules) for name in modules}


def top_level(name: str) -> str:
    """The folder or flat module under clawd/ a module belongs to."""
    return name.split(".")[1]


def package_graph(modules: Mapping[str, Set[str]]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, edges in modules.items():
        if name == "clawd":
            continue
        node = graph.setdefault(top_level(name), set())
        node.update(top_level(e) for e in edges if top_level(e) != top_level(name))
    return graph


def _edges_along(cycle: list[str], modules: Mapping[str, Set[str]]) -> Iterator[str]:
    """For a package cycle: the module imports that make each step of it."""
    for here, there in itertools.pairwise(cycle):
        for name, edges in sorted(modules.items()):
            if name != "clawd" and top_level(name) == here:
                for edge in sorted(e for e in edges if top_level(e) == there):
                    yield f"  {name} -> {edge}"


def test_the_graph_sees_what_python_imports() -> None:
    # A guard on the reader itself: an empty graph would pass every test below.
    graph = module_graph()
    assert "clawd.config.settings" in graph["clawd.daemon.build"]
    assert "clawd.act.skills" in graph["clawd.act.skills.syncer"]  # the package's __init__


def test_find_cycle_reports_the_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_import_cycle() -> None:
    cycle = find_cycle(module_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_package_import_cycle() -> None:
    modules = module_graph()
    cycle = find_cycle(package_graph(modules))
    assert cycle is None, (
        "package import cycle: "
        + " -> ".join(cycle or [])
        + "\n"
        + "\n".join(_edges_along(cycle or [], modules))
    )


IMPORT_EACH_ALONE = """
import importlib, sys, traceback
names = sys.argv[1:]
keep = {n for n in sys.modules if n != "clawd" and not n.startswith("clawd.")}
failed = []
for name in names:
    for loaded in [n for n in sys.modules if n not in keep]:
        if loaded == "clawd" or loaded.startswith("clawd."):
            del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ":\\n" + traceback.format_exc())
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_alone() -> None:
    """Each module first in a fresh `sys.modules` (third-party modules stay loaded: they
    are not what is checked, and reloading them would take minutes)."""
    names = sorted(module_files())
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH_ALONE, *names],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
