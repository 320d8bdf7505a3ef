"""The package's shape, checked: layers import one way, no cycles, small modules and functions.

Layers are folders of ``mnist_np`` (and three top-level modules that sit
between them); each may import only the layers listed for it in
:data:`ALLOWED`, so ``nn`` and ``data`` never see training, tracking or
configs, and only ``tracking`` talks to MLflow, only ``experiment`` to Hydra.
The imports are read from the source (every ``import``, also inside
functions), never by importing it.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

from mnist_np.common.paths import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "mnist_np"
# layer -> the layers it may import (besides itself). Direction: common -> nn, data -> train -> tracking -> experiment.
ALLOWED: dict[str, set[str]] = {
    "common": set(),
    "speedups": {"common"},
    "nn": {"common"},
    "data": {"common"},
    "preprocess": {"common"},
    "train": {"common", "nn"},
    "plots": {"common", "nn", "speedups"},
    "inference": {"common", "nn", "data", "preprocess"},
    "tracking": {"common", "speedups", "nn", "train"},
    "experiment": {"common", "speedups", "nn", "data", "train", "plots", "tracking"},
}
# Inside experiment/, one folder per concern, imported one way: search -> sweep -> run -> config.
CONCERNS: dict[str, set[str]] = {
    "config": set(),
    "run": {"config"},
    "sweep": {"config", "run"},
    "search": {"config", "run", "sweep"},
}
# Third-party packages only one layer may import.
OWNERS = {"mlflow": "tracking", "hydra": "experiment", "omegaconf": "experiment", "hydra_plugins": "experiment",
          "optuna": "experiment"}
TEST_ONLY = ("playwright", "pytest")  # drivers of tests: they live under tests/helpers
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str | None:
    """``mnist_np.nn.model`` -> ``nn``; the root package itself has none."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(module: str) -> list[tuple[str, int]]:
    """Every module ``module`` imports (absolute names, package ``__init__`` for packages), with the line."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from mnist_np.experiment.sweep import session as sweep` imports the module
            # mnist_np.experiment.sweep.session; `from mnist_np.data import DataError` the package's __init__.
            submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            found += [(name, node.lineno) for name in submodules]
            if len(submodules) < len(node.names):
                found.append((base, node.lineno))
    return found


def internal_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for module in MODULES:
        for name, _ in imports(module):
            if name in MODULES and name != module:
                graph[module].add(name)
    return graph


def test_every_module_belongs_to_a_known_layer() -> None:
    unknown = sorted({layer_of(m) for m in MODULES} - set(ALLOWED) - {None})
    assert unknown == [], f"add these layers to ALLOWED (and the docs' layout): {unknown}"


def test_layers_import_one_way() -> None:
    upward = []
    for module in MODULES:
        mine = layer_of(module)
        for name, line in imports(module):
            if not name.startswith("mnist_np.") or mine is None:
                continue
            theirs = layer_of(name)
            if theirs is not None and theirs != mine and theirs not in ALLOWED[mine]:
                upward.append(f"{module}:{line} ({mine}) imports {name} ({theirs})")
    assert upward == []


def concern_of(module: str) -> str | None:
    """``mnist_np.experiment.sweep.summary`` -> ``sweep``; None outside experiment's folders."""
    parts = module.split(".")
    return parts[2] if len(parts) >= 3 and parts[1] == "experiment" else None


def test_experiment_concerns_import_one_way() -> None:
    unknown = sorted({c for m in MODULES if (c := concern_of(m)) is not None} - set(CONCERNS))
    assert unknown == [], f"add these folders of experiment/ to CONCERNS (and the docs' layout): {unknown}"
    loose = sorted(m for m in MODULES if layer_of(m) == "experiment" and concern_of(m) is None
                   and m != "mnist_np.experiment")
    assert loose == [], f"every module of experiment/ belongs to one of its folders: {loose}"
    upward = []
    for module in MODULES:
        mine = concern_of(module)
        for name, line in imports(module):
            theirs = concern_of(name)
            if mine is not None and theirs is not None and theirs != mine and theirs not in CONCERNS[mine]:
                upward.append(f"{module}:{line} ({mine}) imports {name} ({theirs})")
    assert upward == []


def test_each_folder_lists_its_modules() -> None:
    """A package's ``__init__`` docstring names each of its modules once, in a line of its own; nothing it lacks."""
    wrong = []
    for init in sorted(PACKAGE.rglob("__init__.py")):
        if init.parent.parent == PACKAGE.parent or init.parent == PACKAGE:
            continue  # the root package's docstring speaks of layers
        folder = module_name(init)
        modules = {p.stem for p in init.parent.glob("*.py") if p.name != "__init__.py"}
        packages = {p.parent.name for p in init.parent.glob("*/__init__.py")}
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        listed = re.findall(rf"^- :mod:`~?{re.escape(folder)}\.(\w+)`", doc, re.M)
        if sorted(listed) != sorted(modules | packages):
            wrong.append(f"{init.relative_to(PROJECT_ROOT)}: lists {sorted(listed)}, holds "
                         f"{sorted(modules | packages)}")
    assert wrong == []


def test_third_party_frameworks_stay_in_their_layer() -> None:
    strays = []
    for module in MODULES:
        for name, line in imports(module):
            top = name.split(".")[0]
            owner = OWNERS.get(top)
            if (owner is not None and layer_of(module) != owner) or top in TEST_ONLY:
                strays.append(f"{module}:{line} imports {name}")
    assert strays == []


def test_no_import_cycles() -> None:
    graph = internal_graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def _sources() -> list[Path]:
    return [*MODULES.values(), *sorted((PROJECT_ROOT / "scripts").glob("*.py"))]


def test_modules_and_functions_are_small() -> None:
    big_modules = [f"{p.relative_to(PROJECT_ROOT)}: {n} lines" for p in _sources()
                   if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    big_functions = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    big_functions.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} {node.name}: {length} lines")
    assert big_modules == [] and big_functions == []


def test_the_checks_see_the_real_package() -> None:
    """The rules above would pass vacuously on an empty or unparsed tree."""
    graph = internal_graph()
    assert ({"mnist_np.nn.model", "mnist_np.train.loop", "mnist_np.tracking.tracker", "mnist_np.experiment.run.single"}
            <= set(MODULES))
    assert "mnist_np.nn.model" in graph["mnist_np.train.loop"]
    assert "mnist_np.train.loop" in graph["mnist_np.tracking.tracker"]
    assert any(name == "mlflow" or name.startswith("mlflow.") for name, _ in imports("mnist_np.tracking.client"))


@pytest.mark.parametrize("upward", [
    ("mnist_np.nn.model", "from mnist_np.train.loop import fit", test_layers_import_one_way),
    ("mnist_np.tracking.tracker", "from mnist_np.experiment.run.single import run", test_layers_import_one_way),
    ("mnist_np.experiment.run.single", "from mnist_np.experiment.sweep.info import SweepInfo",
     test_experiment_concerns_import_one_way),
    ("mnist_np.experiment.sweep.summary", "from mnist_np.experiment.search.study import OBJECTIVES",
     test_experiment_concerns_import_one_way),
    ("mnist_np.experiment.config.compose", "from mnist_np.experiment.run.single import run",
     test_experiment_concerns_import_one_way),
])
def test_an_upward_import_is_caught(upward: tuple, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    module, line, check = upward
    fake = tmp_path / MODULES[module].relative_to(PROJECT_ROOT)
    fake.parent.mkdir(parents=True)
    fake.write_text(MODULES[module].read_text() + f"\n{line}\n")
    monkeypatch.setitem(MODULES, module, fake)
    with pytest.raises(AssertionError, match=line.split()[1]):
        check()
