"""The layout stays a picture of the pipeline: every project module imports, no module
imports itself back through others (top-level, in-function and relative imports all
count), the packages' ``__init__`` files load no torch, and the README's folder map
names the folders that are there."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from utils.paths import project_root

#: The project's Python packages (``bench`` is a folder of scripts importable as modules).
PACKAGES = ("extract_GPS_images", "loss", "metrics", "utils", "visualization", "bench")


def project_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of :data:`PACKAGES`."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The project module that ``import name`` loads last (``a.b.f`` -> ``a.b``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that module ``name`` imports anywhere in its file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            # ``from a import b`` imports the module a.b when there is one, else a's b
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        found.update(o for t in targets if (o := _owner(t, modules)) and o != name)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    modules = project_modules(root)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle ``[a, b, ..., a]`` of ``graph``, or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_in_function_and_relative_imports(tmp_path: Path) -> None:
    (tmp_path / "utils" / "sub").mkdir(parents=True)
    for package in PACKAGES:
        (tmp_path / package).mkdir(exist_ok=True)
    (tmp_path / "utils" / "sub" / "__init__.py").write_text("")
    (tmp_path / "utils" / "a.py").write_text("def f():\n    from utils.sub import b\n")
    (tmp_path / "utils" / "sub" / "b.py").write_text("from ..a import f\n")
    graph = import_graph(tmp_path)
    assert graph["utils.a"] == {"utils.sub.b"} and graph["utils.sub.b"] == {"utils.a"}
    assert find_cycle(graph) == ["utils.a", "utils.sub.b", "utils.a"]


def test_no_import_circle_among_the_project_modules() -> None:
    graph = import_graph(project_root())
    assert len(graph) > 80, sorted(graph)  # the walk saw the whole project
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


IMPORT_ALL = """
import importlib, json, sys
packages, modules = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for name in packages:
    importlib.import_module(name)
heavy = [m for m in ("torch", "tensorflow") if m in sys.modules]
for name in modules:
    importlib.import_module(name)
print(json.dumps({"heavy_after_packages": heavy, "imported": len(modules)}))
"""


def test_every_module_imports_and_the_packages_load_no_torch() -> None:
    modules = project_modules(project_root())
    # a package's __init__ stays light: `python -m utils.study.run --help` imports utils.study
    # (loss/ is the losses: torch is what it is made of)
    packages = sorted(n for n, p in modules.items() if p.name == "__init__.py" and n != "loss")
    assert {"utils", "utils.batching", "utils.study", "utils.maps", "visualization"} <= set(
        packages
    )
    names = sorted(n for n in modules if not n.endswith("__main__"))
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, json.dumps(packages), json.dumps(names)],
        cwd=project_root(),
        env={**os.environ, "PYTHONPATH": str(project_root())},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"heavy_after_packages": [], "imported": len(names)}, report


# ------------------------------------------------------------------- README folder map
def folder_map() -> dict[str, str]:
    """Path -> description of the README's folder map (continuation lines joined)."""
    text = (project_root() / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Folder map\s*```\n(.*?)```", text, re.S)
    assert block, "README.md has no folder map"
    entries: dict[str, str] = {}
    last = None
    for line in block.group(1).splitlines():
        if line.startswith(" ") and last:
            entries[last] += " " + line.strip()
        elif line.strip():
            last, _, rest = line.partition(" ")
            entries[last] = rest.strip()
    return entries


def test_the_folder_map_names_existing_paths() -> None:
    ignored = (project_root() / ".gitignore").read_text().split()
    missing = [p for p in folder_map() if not (project_root() / p).exists() and p not in ignored]
    assert not missing, f"README folder map names missing paths {missing}"


def test_every_package_and_notebook_is_in_the_folder_map() -> None:
    root = project_root()
    named = set(folder_map())
    wanted = {f"{p}/" for p in PACKAGES} | {"docs/", "tests/"}
    wanted |= {p.name for p in root.glob("*.ipynb")}
    wanted |= {
        f"{p.parent.relative_to(root).as_posix()}/"
        for package in PACKAGES
        for p in (root / package).rglob("__init__.py")
    }
    assert not wanted - named, f"add to README's folder map: {sorted(wanted - named)}"
