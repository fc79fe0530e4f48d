"""The tree is the architecture: subpackages in layers whose imports only go down, no import cycles
(counting imports inside functions), no use of another module's _private names, and C units whose
headers do not include each other in a circle."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import echo_core

PACKAGE = Path(echo_core.__file__).resolve().parent
#: Layer of each subpackage (and top-level module): a module may import only from lower layers, or
#: from its own subpackage (where the no-cycle rule still holds).
LAYERS = {
    "native": 0, "_native": 0, "_build": 0,
    "host": 1,
    "results": 2,
    "servers": 3, "lab": 3,
    "load": 4, "analysis": 4,
    "measure": 5,
    "profiling": 6, "chaos": 6,
    "cli": 7,
    "": 8, "__main__": 8,  # the package's public API and `python -m echo_core`
}


def _modules():
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _imports(name, path):
    """(imported module, imported name or None, line) for every echo_core import in the file, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "echo_core":
                    yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(parts + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "echo_core":
                continue
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                yield (sub, None, node.lineno) if sub in MODULES else (module, alias.name, node.lineno)


def _graph():
    return {name: {m for m, _, _ in _imports(name, path) if m != name and m in MODULES}
            for name, path in MODULES.items()}


def _layer(module):
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else ""]


def test_every_subpackage_has_a_layer():
    assert {m.split(".")[1] for m in MODULES if "." in m} <= set(LAYERS)


def test_imports_only_go_down_the_layers():
    upward = [f"{a} imports {b}" for a, targets in _graph().items() for b in targets
              if _layer(b) > _layer(a) or (_layer(b) == _layer(a) and a.split(".")[:2] != b.split(".")[:2])]
    assert not upward, upward


def test_no_import_cycles_counting_imports_inside_functions():
    cycles = _cycles(_graph())
    assert not cycles, cycles


def test_no_module_uses_another_modules_private_names():
    leaves = {name.rpartition(".")[2] for name in MODULES}
    found = []
    for name, path in MODULES.items():
        for module, imported, line in _imports(name, path):
            if imported and imported.startswith("_") and not imported.startswith("__") and module != "echo_core._native":
                found.append(f"{path.name}:{line} imports {module}.{imported}")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in leaves
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append(f"{path.name}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not found, found


def test_the_checks_catch_what_they_forbid():
    """The rules above would fail on a cycle and an upward import (the checker itself is checked)."""
    assert _layer("echo_core.cli.main") > _layer("echo_core.host.machine")
    tree = ast.parse("from echo_core.cli.main import main\nfrom echo_core.host.cpus import _x\n")
    names = [(n.module, [a.name for a in n.names]) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert names == [("echo_core.cli.main", ["main"]), ("echo_core.host.cpus", ["_x"])]


def _cycles(deps):
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(deps.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(deps):
        if node not in state:
            visit(node, [node])
    return cycles


def test_c_units_include_each_other_one_way_only():
    """A unit is X.c with its X.h; unit A depends on B when A's files include B.h.  No circle."""
    deps = {}
    for path in (PACKAGE / "csrc").rglob("*.[ch]"):
        unit = path.with_suffix("").name
        included = re.findall(r'^#include\s+"(?:[\w./]*/)?(\w+)\.h"', path.read_text(encoding="utf-8"), flags=re.M)
        deps.setdefault(unit, set()).update(u for u in included if u != unit)
    assert not _cycles(deps)


def test_c_units_call_each_other_one_way_only(tmp_path):
    """Compiled, each .c defines functions and calls others' (nm: T vs U): the calls between units form
    no circle either (headers can hide a cycle: a shared header declaring two units' functions)."""
    defined, called = {}, {}
    for path in sorted((PACKAGE / "csrc").rglob("*.c")):
        obj = tmp_path / (path.stem + ".o")
        subprocess.run(["gcc", "-c", "-O0", "-std=gnu11", "-D_GNU_SOURCE", "-DNDEBUG", "-I", str(PACKAGE / "csrc"),
                        str(path), "-o", str(obj)], check=True, capture_output=True, text=True)
        for line in subprocess.run(["nm", str(obj)], check=True, capture_output=True, text=True).stdout.splitlines():
            kind, name = line.split()[-2:]
            (defined if kind in "TDBR" else called if kind == "U" else {}).setdefault(path.stem, set()).add(name)
    owner = {name: unit for unit, names in defined.items() for name in names}
    deps = {unit: {owner[n] for n in names if n in owner and owner[n] != unit} for unit, names in called.items()}
    assert {"uring_serve", "uring_core", "server_epoll", "loadgen"} <= set(defined)  # every unit compiled
    assert not _cycles(deps), _cycles(deps)


#: The only imports allowed inside functions: the CLI loads the plotting layers (pandas, matplotlib:
#: ~0.5 s) for the commands that draw, so that `serve`, which every Server child process runs, starts
#: fast.  The cycle and layer checks above count them like any other import.
DEFERRED_FOR_STARTUP = {("echo_core.cli.profile", "echo_core.analysis"), ("echo_core.cli.profile", "echo_core.profiling"),
                        ("echo_core.cli.sweep", "echo_core.analysis")}


def test_no_echo_core_import_hides_inside_a_function():
    """With the layers acyclic, every dependency is declared at the top of its module (but for
    DEFERRED_FOR_STARTUP)."""
    hidden = []
    for name, path in MODULES.items():
        for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                hidden += [f"{path.name}:{n.lineno}" for n in ast.walk(fn)
                           if isinstance(n, (ast.Import, ast.ImportFrom))
                           and any(m.startswith("echo_core") and (name, m) not in DEFERRED_FOR_STARTUP for m in
                                   ([n.module or ""] if isinstance(n, ast.ImportFrom) else [a.name for a in n.names]))]
    assert not hidden, hidden


def test_serve_starts_without_the_plotting_libraries():
    """`python -m echo_core serve` (every Server child) must not import pandas or matplotlib."""
    code = ("import sys; import echo_core.cli.main; "
            "print(','.join(m for m in ('pandas', 'matplotlib', 'seaborn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert out == "", out
