"""Guards on the shape of the code: host-free core, light WebUI glue, ruff clean."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from webui_double import REPO_ROOT

WEBUI_MODULES = {"modules", "launch", "scripts"}
HEAVY_MODULES = {"torch", "torchvision", "diffusers", "transformers", "accelerate", "onnxruntime", "insightface",
                 "mediapipe", "cv2", "dlib", "peft"}
WEBUI_HOST = Path("portrait_core") / "hosts" / "webui_host.py"


def imported_modules(tree: ast.AST):
    """(top-level module name, line, inside a function?) for every absolute import, including
    importlib.import_module("...") and __import__("...") with a literal name."""
    found = []

    def visit(node, in_function):
        if isinstance(node, ast.Import):
            found.extend((alias.name.split(".")[0], node.lineno, in_function) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], node.lineno, in_function))
        elif isinstance(node, ast.Call) and dynamic_import_name(node):
            found.append((dynamic_import_name(node).split(".")[0], node.lineno, in_function))
        nested = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, nested)

    visit(tree, False)
    return found


def dynamic_import_name(call: ast.Call) -> str | None:
    function = call.func
    name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)
    if name in {"import_module", "__import__"} and call.args and isinstance(call.args[0], ast.Constant):
        return str(call.args[0].value)
    return None


def python_files(folder: str):
    return sorted((REPO_ROOT / folder).rglob("*.py"))


def webui_import_violations(path: Path, source: str) -> list[str]:
    """Where a core file imports the WebUI: anywhere outside webui_host.py, at module level inside it."""
    relative = path.relative_to(REPO_ROOT) if path.is_absolute() else path
    allowed_lazily = relative == WEBUI_HOST
    return [f"{relative}:{line} imports {name}"
            for name, line, in_function in imported_modules(ast.parse(source))
            if name in WEBUI_MODULES and not (allowed_lazily and in_function)]


def test_the_scanner_catches_every_way_of_importing_the_webui():
    sneaky = ("import modules.shared\nfrom launch import run_pip\nimport importlib\n"
              "def f():\n    importlib.import_module('scripts')\n")
    assert len(webui_import_violations(Path("portrait_core/ui.py"), sneaky)) == 3
    assert webui_import_violations(WEBUI_HOST, "def f():\n    from modules import processing\n") == []
    assert len(webui_import_violations(WEBUI_HOST, "from modules import processing\n")) == 1


def test_core_never_imports_the_webui_except_webui_host_lazily():
    violations = [v for path in python_files("portrait_core")
                  for v in webui_import_violations(path, path.read_text(encoding="utf-8"))]
    assert violations == []


def test_scripts_import_nothing_heavy_at_module_level():
    heavy = [f"{path.relative_to(REPO_ROOT)}:{line} imports {name}"
             for path in python_files("scripts")
             for name, line, in_function in imported_modules(ast.parse(path.read_text(encoding="utf-8")))
             if name in HEAVY_MODULES and not in_function]
    assert heavy == []


def test_install_py_stands_alone():
    # The WebUI runs install.py before the extension folder is on sys.path.
    names = {name for name, _, _ in imported_modules(ast.parse((REPO_ROOT / "install.py").read_text("utf-8")))}
    assert "portrait_core" not in names
    assert not names & HEAVY_MODULES


def css_selector_names(css: str) -> list[str]:
    """Every #id and .class named in the selectors of a stylesheet (declarations and comments skipped)."""
    without_comments = re.sub(r"/\*.*?\*/", "", css, flags=re.DOTALL)
    selectors = re.findall(r"([^{}]+)\{", re.sub(r"\{[^{}]*\}", "{", without_comments + "{}"))
    return [name for selector in selectors for name in re.findall(r"[#.](-?[A-Za-z_][\w-]*)", selector)]


def test_stylesheet_touches_only_portrait_elements():
    assert css_selector_names(".gradio-container .portrait-x, #portrait-y { color: red; }") == [
        "gradio-container", "portrait-x", "portrait-y"]
    names = css_selector_names((REPO_ROOT / "style.css").read_text(encoding="utf-8"))
    assert names, "style.css has no selectors"
    assert [name for name in names if not name.startswith("portrait-")] == []


def test_ruff_is_clean():
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed in this environment")
    command = [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", str(REPO_ROOT)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# -- layers: who may import whom ---------------------------------------------------------------------------

# Each part of portrait_core may import only parts of a lower layer or its own (ARCHITECTURE.md: adapters over
# services over the domain over the core). Adapters never import one another: what two doors share lives in
# services. The composition roots (adapters.standalone here, scripts/portrait_studio.py in the WebUI) wire
# the doors together; the CLI's `serve` reaches the standalone app only through it.
LAYERS = {
    "portrait_core": 0, "errors": 0, "log": 0, "config": 0, "store": 0, "params": 0, "jobs": 0,
    "core": 1,
    "models": 2,
    "faces": 3,
    "hosts": 4, "prepare": 4,
    "generate": 5, "training": 5,
    "services": 6,
    "adapters": 7, "adapters.http": 7, "adapters.ui": 7, "adapters.cli": 7,
    "adapters.standalone": 8,
    "__main__": 9,
}
ADAPTER_IMPORTS_ALLOWED = {("adapters.cli", "adapters.standalone"), ("adapters.standalone", "adapters.http"),
                           ("adapters.standalone", "adapters.ui"), ("__main__", "adapters.cli")}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """The layered part a module belongs to: `portrait_core.adapters.http.api` -> `adapters.http`."""
    parts = module.split(".")
    if len(parts) == 1:
        return "portrait_core"
    if parts[1] == "adapters" and len(parts) > 2:
        return f"adapters.{parts[2]}"
    return parts[1]


def portrait_imports(path: Path, source: str) -> list[tuple[str, int, bool]]:
    """(imported portrait_core module, line, inside a function?) for every import in `source`; relative imports
    are resolved, and `from portrait_core.adapters import ui` counts as importing `portrait_core.adapters.ui`."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []

    def visit(node, in_function):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno, in_function) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((candidate if _is_module(candidate) else base, node.lineno, in_function))
        nested = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, nested)

    visit(ast.parse(source), False)
    return [(name, line, lazy) for name, line, lazy in found if name.split(".")[0] == "portrait_core"]


def _is_module(dotted: str) -> bool:
    target = REPO_ROOT.joinpath(*dotted.split("."))
    return target.with_suffix(".py").is_file() or (target / "__init__.py").is_file()


def layer_violations(path: Path, source: str) -> list[str]:
    source_unit = unit_of(module_name(path))
    found = []
    for name, line, _ in portrait_imports(path, source):
        target = unit_of(name)
        if target == source_unit or (source_unit, target) in ADAPTER_IMPORTS_ALLOWED:
            continue
        both_adapters = source_unit.startswith(("adapters", "__main__")) and target.startswith("adapters")
        if both_adapters:
            found.append(f"{path.relative_to(REPO_ROOT)}:{line}: {source_unit} imports another door, {target}")
        elif LAYERS[target] > LAYERS[source_unit]:
            found.append(f"{path.relative_to(REPO_ROOT)}:{line}: {source_unit} (layer {LAYERS[source_unit]}) "
                         f"imports {target} (layer {LAYERS[target]})")
    return found


def test_the_layer_scanner_catches_upward_and_sideways_imports():
    api = REPO_ROOT / "portrait_core" / "adapters" / "http" / "api.py"
    assert layer_violations(api, "from portrait_core.adapters.ui.train import read_uploads\n")
    assert layer_violations(api, "def f():\n    from portrait_core.adapters import ui\n")
    assert layer_violations(REPO_ROOT / "portrait_core" / "core" / "masks.py", "from ..services import runtime\n")
    assert layer_violations(REPO_ROOT / "portrait_core" / "services" / "training.py",
                            "import portrait_core.adapters.http.api\n")
    assert layer_violations(api, "from portrait_core.services.runtime import PortraitServices\n") == []


def test_every_part_imports_only_what_lies_below_it():
    assert set(LAYERS) >= {unit_of(module_name(path)) for path in python_files("portrait_core")}, \
        "a new part of portrait_core needs its layer in LAYERS"
    violations = [v for path in python_files("portrait_core")
                  for v in layer_violations(path, path.read_text(encoding="utf-8"))]
    assert violations == []


def test_no_import_cycles_at_module_level():
    """A cycle of module-level imports breaks as soon as someone imports the 'wrong' module first."""
    graph = {}
    for path in python_files("portrait_core"):
        graph[module_name(path)] = {name for name, _, lazy in portrait_imports(path, path.read_text("utf-8"))
                                    if not lazy and name != module_name(path)}
    cycles, state = [], {}

    def visit(module, trail):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*trail[trail.index(target):], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []
