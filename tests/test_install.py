"""install.py: what it installs, warns about and leaves alone, against fake environments and a recording `launch`."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
from webui_double import REPO_ROOT, double_on_path

STOCK_TORCH = "2.1.2"  # what A1111 1.10.1 installs by default


def load_install_module():
    spec = importlib.util.spec_from_file_location("portrait_studio_install", REPO_ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


install = load_install_module()


def wanted(*lines: str, nodeps: bool = False):
    return install.parse_requirement_lines(lines, nodeps=nodeps)


def make_extension(root: Path, requirements: str, nodeps: str = "", pins: str = "") -> Path:
    (root / "constraints").mkdir(parents=True)
    (root / "requirements.txt").write_text(requirements, encoding="utf-8")
    (root / "requirements-nodeps.txt").write_text(nodeps, encoding="utf-8")
    (root / install.HOST_PINS_FILE).write_text(pins, encoding="utf-8")
    return root


def run_main(root: Path, installed: dict[str, str], argv=(), environ=None):
    """install.main() as the WebUI runs it; returns (exit code, [(pip command, desc)])."""
    with double_on_path([], environ):
        import launch

        code = install.main(list(argv), installed=installed, extension_root=root)
        return code, list(launch.pip_calls)


# --- decisions ---------------------------------------------------------------------------------

def test_missing_package_is_installed_with_the_range_as_written():
    actions = install.plan_installs(wanted("diffusers>=0.29,<0.32"), {}, {})
    assert [(a.kind, a.spec, a.reason) for a in actions] == [
        (install.ActionKind.INSTALL, "diffusers>=0.29,<0.32", "missing")]
    assert actions[0].message() == "[Portrait Studio] installing diffusers>=0.29,<0.32 (missing)"


def test_satisfied_requirement_needs_no_action():
    assert install.plan_installs(wanted("diffusers>=0.29,<0.32"), {"diffusers": "0.31.0"}, {}) == []


def test_installed_version_outside_the_range_is_replaced_when_the_host_does_not_pin_it():
    [action] = install.plan_installs(wanted("diffusers>=0.29,<0.32"), {"diffusers": "0.33.1"}, {})
    assert action.kind is install.ActionKind.INSTALL
    assert action.reason == "have 0.33.1"


def test_host_pinned_package_outside_our_range_is_kept_with_a_warning_naming_both_versions():
    [action] = install.plan_installs(wanted("numpy==1.26.2"), {"numpy": "2.0.1"}, {"numpy": "1.26.2"})
    assert action.kind is install.ActionKind.KEEP_HOST_VERSION
    assert "keeping host's numpy 2.0.1" in action.message()
    assert "numpy==1.26.2" in action.message()


def test_missing_host_pinned_package_gets_the_hosts_version_so_the_webui_will_not_move_it():
    [action] = install.plan_installs(wanted("pydantic>=1.10,<2"), {}, {"pydantic": "1.10.17"})
    assert action.kind is install.ActionKind.INSTALL
    assert action.spec == "pydantic==1.10.17"


def test_torch_is_never_installed_even_if_a_requirement_names_it():
    actions = install.plan_installs(wanted("torch>=2.3"), {"torch": STOCK_TORCH}, {})
    assert [a.kind for a in actions] == [install.ActionKind.LEAVE_HOST_MANAGED]
    assert "not touching torch" in actions[0].message()
    assert install.plan_installs(wanted("torch"), {}, {})[0].kind is install.ActionKind.LEAVE_HOST_MANAGED


def test_distribution_names_are_compared_normalised():
    installed = {"dlib_bin": "19.24.6", "Face-Recognition-Models": "0.3.0", "opencv_contrib_python": "4.11.0.86",
                 "huggingface-hub": "0.26.0"}
    requirements = wanted("dlib-bin>=19.24", "face_recognition_models==0.3.0",
                          "opencv-contrib-python>=4.8,<4.12", "huggingface_hub>=0.23,<1.0")
    assert install.plan_installs(requirements, installed, {}) == []


def test_requirement_lines_skip_comments_and_other_platforms_and_reject_garbage():
    parsed = wanted("# a comment", "", "peft>=0.10,<0.14  # why", 'pywin32>=300; sys_platform == "nonexistent"')
    assert [w.spec for w in parsed] == ["peft>=0.10,<0.14"]
    with pytest.raises(ValueError, match="not a requirement"):
        wanted("not a requirement !!")


def test_pip_command_quotes_the_spec_for_the_shell_and_adds_no_deps():
    action = install.plan_installs(wanted("onnx==1.17.0", nodeps=True), {}, {})[0]
    assert install.pip_command(action, Path("c.txt")) == 'install "onnx==1.17.0" --no-deps'
    action = install.plan_installs(wanted("peft>=0.10,<0.14"), {}, {})[0]
    assert install.pip_command(action, Path("c.txt")) == 'install "peft>=0.10,<0.14" -c "c.txt"'


# --- main() with a recording launch.run_pip ----------------------------------------------------------

def test_missing_package_gives_one_pip_call_with_the_right_spec(tmp_path, capsys):
    root = make_extension(tmp_path, "diffusers>=0.29,<0.32\nnumpy==1.26.2\n", pins="numpy==1.26.2\n")
    code, calls = run_main(root, {"numpy": "1.26.2", "torch": STOCK_TORCH})
    assert code == 0
    assert len(calls) == 1
    command, desc = calls[0]
    assert re.fullmatch(r'install "diffusers>=0\.29,<0\.32" -c ".+"', command)
    assert "diffusers" in desc
    assert "[Portrait Studio] installing diffusers>=0.29,<0.32 (missing)" in capsys.readouterr().out


def test_everything_satisfied_means_no_pip_call_and_no_output(tmp_path, capsys):
    root = make_extension(tmp_path, "diffusers>=0.29,<0.32\n", nodeps="onnx==1.17.0\n")
    code, calls = run_main(root, {"diffusers": "0.31.0", "onnx": "1.17.0"})
    assert (code, calls) == (0, [])
    assert capsys.readouterr().out == ""


def test_host_pin_outside_our_range_warns_and_calls_no_pip(tmp_path, capsys):
    root = make_extension(tmp_path, "numpy==1.26.2\n", pins="numpy==1.26.2\n")
    code, calls = run_main(root, {"numpy": "2.0.1"})
    assert (code, calls) == (0, [])
    assert "WARNING: keeping host's numpy 2.0.1; Portrait Studio wants numpy==1.26.2" in capsys.readouterr().out


def test_nodeps_requirements_are_installed_with_no_deps(tmp_path):
    root = make_extension(tmp_path, "", nodeps="insightface==2.1\n")
    _, calls = run_main(root, {})
    assert [command for command, _ in calls] == ['install "insightface==2.1" --no-deps']


@pytest.mark.parametrize(("argv", "environ"), [(["--skip-install"], None),
                                               ([], {"COMMANDLINE_ARGS": "--skip-install"})])
def test_skip_install_means_nothing_is_checked_or_installed(tmp_path, capsys, argv, environ):
    root = make_extension(tmp_path, "diffusers>=0.29,<0.32\n")
    code, calls = run_main(root, {}, argv=argv, environ=environ)
    assert (code, calls) == (0, [])
    assert "--skip-install" in capsys.readouterr().out


def test_pip_is_told_to_keep_torch_and_every_host_pin_where_they_are(tmp_path):
    root = make_extension(tmp_path, "diffusers>=0.29,<0.32\n", pins="numpy==1.26.2\nPillow==9.5.0\n")
    seen_constraints = []

    def record_constraints(command, desc=None, live=False):
        seen_constraints.append(Path(re.search(r'-c "([^"]+)"', command).group(1)).read_text(encoding="utf-8"))

    with double_on_path([]):
        import launch

        launch.run_pip = record_constraints
        install.main([], installed={"numpy": "1.26.4", "pillow": "9.5.0", "torch": "2.1.2+cu121",
                                    "requests": "2.31.0"}, extension_root=root)
    assert seen_constraints == ["numpy==1.26.4\npillow==9.5.0\ntorch==2.1.2+cu121\n"]


def test_a_failed_install_is_reported_the_rest_still_installed_and_the_exit_code_says_so(tmp_path, capsys):
    root = make_extension(tmp_path, "peft>=0.10,<0.14\ndiffusers>=0.29,<0.32\n")
    attempted = []

    def failing_for_peft(command, desc=None, live=False):
        attempted.append(command)
        if "peft" in command:
            raise RuntimeError("Couldn't install peft.\nError code: 1")

    with double_on_path([]):
        import launch

        launch.run_pip = failing_for_peft
        code = install.main([], installed={}, extension_root=root)
    assert code == 1
    assert [("peft" in command, "--no-deps" in command) for command in attempted] == [
        (True, False), (True, True), (False, False)], "peft alone was tried once more, then diffusers"
    assert "ERROR: could not install peft>=0.10,<0.14" in capsys.readouterr().out


def test_the_webuis_setuptools_is_never_moved_even_outside_our_range():
    actions = install.plan_installs(wanted("setuptools>=68,<81"), {"setuptools": "84.2.1"}, {})
    assert [(a.kind, a.installed) for a in actions] == [(install.ActionKind.KEEP_HOST_VERSION, "84.2.1")]
    frozen = install.frozen_versions({"setuptools": "69.5.1", "pip": "24.0", "requests": "2.31.0"}, {})
    assert frozen == {"setuptools": "69.5.1", "pip": "24.0"}


def refusing_constrained_installs(calls):
    """run_pip as pip answers when the host's torch wants a newer setuptools than the frozen one."""
    def run_pip(command, desc=None, live=False):
        calls.append(command)
        if "--no-deps" not in command:
            raise RuntimeError("ResolutionImpossible: torch 2.13.0 depends on setuptools>=77.0.3")
    return run_pip


def test_a_package_pip_refuses_only_because_of_the_hosts_torch_is_installed_alone(tmp_path, capsys):
    # peft is installed in this environment with all it needs: after the lone install, nothing is missing.
    root = make_extension(tmp_path, "peft>=0.10,<0.14\n")
    calls = []
    with double_on_path([]):
        import launch

        launch.run_pip = refusing_constrained_installs(calls)
        code = install.main([], installed={}, extension_root=root)
    assert code == 0, capsys.readouterr().out
    assert len(calls) == 2 and "-c " in calls[0] and "--no-deps" in calls[1]
    assert "installed peft>=0.10,<0.14 on its own" in capsys.readouterr().out


def test_a_lone_install_that_lacks_a_dependency_is_a_failure_naming_it(tmp_path, capsys, monkeypatch):
    site = tmp_path / "site"
    info = site / "needy_pkg-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: needy-pkg\nVersion: 1.0\n"
                                   "Requires-Dist: no-such-package-xyz>=1\n"
                                   "Requires-Dist: numpy\n"
                                   "Requires-Dist: pytest ; extra == 'test'\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    root = make_extension(tmp_path / "extension", "needy-pkg>=1\n")
    calls = []
    with double_on_path([]):
        import launch

        launch.run_pip = refusing_constrained_installs(calls)
        code = install.main([], installed={}, extension_root=root)
    out = capsys.readouterr().out
    assert code == 1
    assert "it needs no-such-package-xyz>=1 (have none)" in out and "numpy" not in out.split("it needs")[1][:60]


def test_without_the_host_pins_file_nothing_is_installed(tmp_path, capsys):
    root = make_extension(tmp_path, "diffusers>=0.29,<0.32\n")
    (root / install.HOST_PINS_FILE).unlink()
    code, calls = run_main(root, {})
    assert (code, calls) == (1, [])
    assert "installing nothing" in capsys.readouterr().out


def test_outside_the_webui_it_explains_instead_of_failing_obscurely(tmp_path, capsys, monkeypatch):
    monkeypatch.delitem(sys.modules, "launch", raising=False)
    root = make_extension(tmp_path, "diffusers>=0.29,<0.32\n")
    assert install.main([], installed={}, extension_root=root) == 1
    assert "`launch` module is not importable" in capsys.readouterr().out


# --- the real requirement files against a stock A1111 1.10.1 environment -----------------------------

def stock_webui_environment() -> dict[str, str]:
    pins = install.parse_host_pins(install.read_lines(REPO_ROOT / install.HOST_PINS_FILE))
    return {**pins, "torch": STOCK_TORCH, "torchvision": "0.16.2"}


def test_real_requirements_fit_a_stock_webui_without_a_warning():
    requirements = install.read_requirements(REPO_ROOT)
    actions = install.plan_installs(requirements, stock_webui_environment(), stock_webui_environment())
    problems = [a.message() for a in actions if a.kind is not install.ActionKind.INSTALL]
    assert problems == []


def test_real_requirements_install_only_what_a_stock_webui_lacks_and_never_torch():
    host = stock_webui_environment()
    requirements = install.read_requirements(REPO_ROOT)
    installed_names = {a.name for a in install.plan_installs(requirements, host, host)}
    assert installed_names, "a stock WebUI lacks diffusers and the face libraries"
    assert installed_names.isdisjoint(host), "a package the WebUI already holds would be reinstalled"
    assert all(w.name not in install.HOST_MANAGED for w in requirements), "requirements must not name torch"


def test_numpy_and_opencv_moved_by_another_installer_get_one_warning_with_the_restoring_command(tmp_path, capsys):
    root = make_extension(tmp_path, "requests>=2\n", pins="numpy==1.26.2\nPillow==9.5.0\n")
    moved = {"numpy": "2.2.6", "opencv-python": "5.0.0.86", "pillow": "9.5.0", "requests": "2.31.0"}
    code, calls = run_main(root, moved)
    out = capsys.readouterr().out
    assert code == 0 and calls == []
    [warning] = [line for line in out.splitlines() if "WARNING" in line]
    assert warning.endswith('-m pip install "numpy==1.26.2" "opencv-python<4.12"'), warning
    code, _ = run_main(root, {**moved, "numpy": "1.26.2", "opencv-python": "4.11.0.86"})
    assert "WARNING" not in capsys.readouterr().out
