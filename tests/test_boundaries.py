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
