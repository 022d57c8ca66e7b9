"""The shape of the code: imports run one way, and library code changes no process-wide state.

Both are read from the source with ``ast``, every import counted (inside
functions and under TYPE_CHECKING too), so a cycle that only bites at run
time, or a write to ``os.environ`` in a rarely taken branch, still fails here.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _modules() -> dict[str, Path]:
    """Every module of geovision/ and cli/ (installed as geovision.cli), by dotted name."""
    found = {}
    for path in [*(ROOT / "geovision").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[0] == "cli":
            parts = ["geovision", *parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imported(module: str, tree: ast.AST, modules: dict[str, Path]) -> set[str]:
    """The project modules ``tree`` imports anywhere in it (``from pkg import mod`` is ``pkg.mod``)."""
    package = module if modules[module].name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package up
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imported(m, ast.parse(p.read_text()), modules) for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import():
    a = "import os\n\ndef f():\n    from geovision.b import g\n"
    b = "from geovision.c import h\n"
    c = "from geovision import a\n"
    modules = {"geovision.a": Path("a.py"), "geovision.b": Path("b.py"), "geovision.c": Path("c.py")}
    graph = {m: _imported(m, ast.parse(src), modules) for m, src in zip(modules, (a, b, c))}
    assert cycles(graph) == [["geovision.a", "geovision.b", "geovision.c"]]
    graph["geovision.c"] = set()
    assert cycles(graph) == []


def test_no_import_cycle_among_geovision_and_cli_modules():
    graph = import_graph()
    assert "geovision.backends.loader" in graph["geovision.detect"]  # the graph is read, not empty
    assert cycles(graph) == []


#: The layers of docs/pipeline.md's table, top down, by module (dotted name, or a package and all under it).
#: A module imports only from its own layer and the layers below it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("front end", ("geovision.cli.",)),
    ("public API", ("geovision",)),
    ("training", ("geovision.training.",)),
    (
        "jobs",
        tuple(
            f"geovision.{m}"
            for m in (
                "detect",
                "batch",
                "cluster",
                "compare",
                "evaluate",
                "pixel_eval",
                "quicklook",
                "report",
                "qgis_package",
            )
        ),  # fmt: skip
    ),
    ("models", ("geovision.registry",)),
    ("backends", ("geovision.backends.",)),
    (
        "stages",
        tuple(
            f"geovision.{m}"
            for m in (
                "config",
                "raster",
                "tiling",
                "merge",
                "blend",
                "vectorize",
                "regularize",
                "writers",
                "labels",
                "style",
            )
        ),  # fmt: skip
    ),
    ("base", ("geovision.errors", "geovision.geometry")),
]
#: runs inside QGIS's own Python and talks to geovision through its command line only
PLUGIN = "geovision.qgis_plugin."


def layer_of(module: str) -> int | None:
    """The rank of ``module``'s layer (0 is the top), None for the QGIS plugin."""
    if (module + ".").startswith(PLUGIN):
        return None
    for rank, (_, members) in enumerate(LAYERS):
        if any(module == m or (m.endswith(".") and (module + ".").startswith(m)) for m in members):
            return rank
    raise AssertionError(f"{module} is in no layer of docs/pipeline.md")


def test_every_module_is_in_one_layer_and_imports_only_from_its_own_layer_or_below():
    graph = import_graph()
    upward = []
    for module, deps in graph.items():
        rank = layer_of(module)
        for dep in deps:
            if rank is None:
                assert (dep + ".").startswith(PLUGIN), f"the QGIS plugin imports {dep}"
            elif (dep_rank := layer_of(dep)) is not None and dep_rank < rank:
                upward.append(f"{module} ({LAYERS[rank][0]}) imports {dep} ({LAYERS[dep_rank][0]})")
    assert upward == []


def test_the_cli_uses_the_public_api_only_and_nothing_imports_the_cli():
    graph = import_graph()
    cli = [m for m in graph if m.startswith("geovision.cli")]
    assert len(cli) >= 10  # one module a command, and the shared options
    for m in cli:
        assert graph[m] <= {"geovision", *cli}, (m, graph[m] - {"geovision", *cli})
    assert not any(d in cli for m, deps in graph.items() if m not in cli for d in deps)
    pipeline = ["geovision.detect", "geovision.batch", "geovision.merge", "geovision.vectorize", "geovision.writers"]
    for m in pipeline:
        assert not {d for d in graph[m] if d.startswith("geovision.training")}, m


def test_the_layer_table_in_docs_names_every_module_in_its_row():
    rows = {}
    for line in (ROOT / "docs" / "pipeline.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 3 and cells[1] in {name for name, _ in LAYERS}:
            rows[cells[1]] = cells[2]
    assert set(rows) == {name for name, _ in LAYERS}
    for module, path in _modules().items():
        rank = layer_of(module)
        if rank is None or path.name == "__init__.py" and module != "geovision":
            continue
        rel = path.relative_to(ROOT).as_posix().removeprefix("geovision/")
        folder = rel.rpartition("/")[0] + "/"
        row = rows[LAYERS[rank][0]]
        assert f"`{rel}`" in row or f"`{folder}`" in row, f"{rel} not in the row of {LAYERS[rank][0]}"


def test_every_parameter_a_library_message_names_has_its_cli_flag():
    """Library errors name Python parameters in backquotes; the CLI says each as its flag."""
    import re

    from geovision.cli.options import cli_text, flag_for

    named = set()
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                for const in ast.walk(node.exc):
                    if isinstance(const, ast.Constant) and isinstance(const.value, str):
                        named |= set(re.findall(r"`([^`]+)`", const.value))
    assert {"overwrite=True", "review_confidence", "align=False"} <= named  # the finder reads messages
    from geovision.training.spec import APPLIES

    named |= set(APPLIES)  # the training settings a run refuses are named from their table
    from geovision.cli.main import main

    with click.Context(main):  # as in a command: the flags are those of the command line
        assert {n for n in named if flag_for(n) is None} == set()
        assert (flag_for("class_field"), flag_for("encoder_depth"), flag_for("no_such_thing")) == (
            "--class-field",
            "--encoder-depth",
            None,
        )
    assert cli_text("x exists; pass `overwrite=True`; give `shift=(dx, dy)` or `align=False`") == (
        "x exists; pass --overwrite; give --shift DX DY or --no-align"
    )


#: the runtimes only backends/ (and training) may import
RUNTIMES = {"torch", "torchvision", "ultralytics", "segmentation_models_pytorch", "onnxruntime"}


def test_only_backends_and_training_import_torch_ultralytics_or_onnxruntime():
    offenders = []
    for module, path in _modules().items():
        if module.startswith(("geovision.backends", "geovision.training")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            offenders += [f"{module}: {n}" for n in names if n.split(".")[0] in RUNTIMES]
    assert offenders == []


#: calls that switch something for the whole process, or for the user's machine
SWITCHES = {
    "os.environ.update",
    "os.environ.setdefault",
    "os.environ.pop",
    "os.environ.clear",
    "os.putenv",
    "os.unsetenv",
    "matplotlib.use",
    "logging.disable",
    "logging.basicConfig",
    "settings.update",
    "warnings.simplefilter",
    "warnings.filterwarnings",
}


class _Changes(ast.NodeVisitor):
    """Finds writes to os.environ and process-wide switches, with the function they are in;
    warning filters inside ``with warnings.catch_warnings():`` end with the block and are not counted."""

    def __init__(self, name: str) -> None:
        self.name, self.functions, self.scoped, self.found = name, ["<module>"], 0, []

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.functions.append(node.name)
        self.generic_visit(node)
        self.functions.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_With(self, node: ast.With) -> None:
        scoped = any("catch_warnings" in ast.unparse(item.context_expr) for item in node.items)
        self.scoped += scoped
        self.generic_visit(node)
        self.scoped -= scoped

    def _add(self, node: ast.AST, what: str) -> None:
        self.found.append(f"{self.name}:{self.functions[-1]}:{node.lineno}: {what}")

    def visit_Assign(self, node: ast.Assign | ast.AugAssign | ast.Delete) -> None:
        if "os.environ[" in ast.unparse(node):
            self._add(node, ast.unparse(node))
        self.generic_visit(node)

    visit_AugAssign = visit_Delete = visit_Assign

    def visit_Call(self, node: ast.Call) -> None:
        call = ast.unparse(node.func)
        if call in SWITCHES and not (self.scoped and call.startswith("warnings.")):
            self._add(node, call)
        self.generic_visit(node)


def _global_changes(path: Path) -> list[str]:
    """Places in a file that change state of the whole process or of the user's machine."""
    finder = _Changes(path.name)
    finder.visit(ast.parse(path.read_text()))
    return finder.found


def test_the_change_finder_sees_environment_writes_and_switches(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import os, logging, matplotlib\n"
        "def f():\n"
        "    os.environ['OMP_NUM_THREADS'] = '1'\n"
        "    os.environ.setdefault('X', '1')\n"
        "    matplotlib.use('Agg')\n"
        "    logging.disable(logging.WARNING)\n"
        "    import warnings\n"
        "    with warnings.catch_warnings():\n"
        "        warnings.simplefilter('ignore')\n"  # scoped: not counted
        "    warnings.simplefilter('ignore')\n"
    )
    assert [c.split(": ")[1] for c in _global_changes(bad)] == [
        "os.environ['OMP_NUM_THREADS'] = '1'",
        "os.environ.setdefault",
        "matplotlib.use",
        "logging.disable",
        "warnings.simplefilter",
    ]


#: the one explicit, scoped and documented place: ultralytics reads YOLO_OFFLINE once, at import,
#: so it is set for the import alone and everything is put back (tested below)
ALLOWED = ("yolo.py:_import_environment:",)


def test_library_code_changes_no_process_wide_state_outside_its_scoped_place():
    found = [c for p in _modules().values() for c in _global_changes(p)]
    assert any(c.startswith(ALLOWED) for c in found)  # the finder does see the scoped place
    assert [c for c in found if not c.startswith(ALLOWED)] == []


def test_importing_ultralytics_leaves_the_environment_as_it_was():
    pytest.importorskip("ultralytics")
    code = (
        "import os, json\n"
        "from geovision.backends.yolo import import_ultralytics\n"
        "import_ultralytics()\n"
        "import ultralytics.utils as u\n"
        "ours = ('YOLO_OFFLINE', 'YOLO_VERBOSE', 'OMP_NUM_THREADS')\n"
        "print(json.dumps([[k for k in ours if k in os.environ], u.ONLINE]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("YOLO_OFFLINE", "YOLO_VERBOSE", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[[], false]"  # nothing left behind, and offline all the same


def test_every_command_has_its_function_and_every_user_error_its_type_in_the_public_api():
    import inspect

    import geovision
    import geovision.errors as errors

    for name in ("detect", "run_batch", "compare", "evaluate", "quicklook", "train", "export_onnx", "list_models"):
        assert callable(getattr(geovision, name)) and name in geovision.__all__, name
    kinds = {n for n, k in vars(errors).items() if inspect.isclass(k) and issubclass(k, errors.GeovisionError)}
    assert kinds <= set(geovision.__all__), kinds - set(geovision.__all__)
    assert all(hasattr(geovision, n) for n in geovision.__all__)
