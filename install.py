"""Portrait Studio's WebUI installer: installs what is missing, never moves a host pin or torch.

The WebUI runs this file as a plain script before it starts (unless started with --skip-install),
with PYTHONPATH set to the WebUI folder so that `launch` imports. The extension folder is not on
sys.path here, so nothing from portrait_core may be imported.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

PREFIX = "[Portrait Studio]"
EXTENSION_ROOT = Path(__file__).resolve().parent
REQUIREMENTS_FILE = "requirements.txt"
NODEPS_REQUIREMENTS_FILE = "requirements-nodeps.txt"
HOST_PINS_FILE = Path("constraints") / "host-pins-a1111-1.10.1.txt"
# The WebUI owns these: a wrong wheel here is a multi-GB CUDA download or a broken GPU setup.
HOST_MANAGED = frozenset({"torch", "torchvision", "torchaudio", "xformers"})
# The WebUI's own build tools (it pins setuptools 69.5.1 in requirements_versions.txt, and imports
# pkg_resources, gone from 81 on): never moved, even when the host's torch asks for a newer one.
HOST_TOOLS = frozenset({"setuptools", "pip", "wheel"})


@dataclass(frozen=True)
class Wanted:
    """One line of our requirement files."""

    requirement: Requirement
    spec: str  # as written in the file, without its environment marker: what pip is given
    nodeps: bool = False

    @property
    def name(self) -> str:
        return canonicalize_name(self.requirement.name)


class ActionKind(Enum):
    INSTALL = "install"
    KEEP_HOST_VERSION = "keep-host-version"
    LEAVE_HOST_MANAGED = "leave-host-managed"


@dataclass(frozen=True)
class Action:
    """What install.py does about one requirement that is not simply satisfied."""

    kind: ActionKind
    name: str
    spec: str
    reason: str
    installed: str | None = None
    nodeps: bool = False

    def message(self) -> str:
        """The one line printed for this action."""
        if self.kind is ActionKind.INSTALL:
            flags = " --no-deps" if self.nodeps else ""
            return f"{PREFIX} installing {self.spec}{flags} ({self.reason})"
        if self.kind is ActionKind.KEEP_HOST_VERSION:
            return (f"{PREFIX} WARNING: keeping host's {self.name} {self.installed}; Portrait Studio wants "
                    f"{self.spec} ({self.reason})")
        return f"{PREFIX} WARNING: not touching {self.name} ({self.reason})"


def parse_requirement_lines(lines: Iterable[str], *, nodeps: bool = False) -> list[Wanted]:
    """Requirements from requirement-file lines; comments, blanks and lines for other platforms dropped."""
    wanted = []
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement as error:
            raise ValueError(f"cannot read requirement line {raw.strip()!r}: {error}") from error
        if requirement.marker is None or requirement.marker.evaluate():
            spec = "".join(line.split(";", 1)[0].split())
            wanted.append(Wanted(requirement, spec, nodeps=nodeps))
    return wanted


def parse_host_pins(lines: Iterable[str]) -> dict[str, str]:
    """`name==version` lines of the host pins file as {canonical name: version}."""
    pins = {}
    for wanted in parse_requirement_lines(lines):
        exact = [spec.version for spec in wanted.requirement.specifier if spec.operator == "=="]
        if exact:
            pins[wanted.name] = exact[0]
    return pins


def version_satisfies(version: str, wanted: Wanted) -> bool:
    """True when an installed version lies inside the wanted range (pre-releases count)."""
    try:
        return wanted.requirement.specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def plan_one(wanted: Wanted, installed: Mapping[str, str], host_pins: Mapping[str, str]) -> Action | None:
    """The action one requirement needs, or None when it is already satisfied."""
    spec = wanted.spec
    have = installed.get(wanted.name)
    if wanted.name in HOST_MANAGED:
        return Action(ActionKind.LEAVE_HOST_MANAGED, wanted.name, spec,
                      "the WebUI manages it; remove it from Portrait Studio's requirements", have)
    if have is not None and version_satisfies(have, wanted):
        return None
    if (wanted.name in host_pins or wanted.name in HOST_TOOLS) and have is not None:
        return Action(ActionKind.KEEP_HOST_VERSION, wanted.name, spec,
                      "the WebUI pins it; some Portrait Studio features may fail", have)
    if have is None:
        pinned = host_pins.get(wanted.name)
        if pinned is not None and version_satisfies(pinned, wanted):
            # Install what the WebUI itself would hold, so its next start does not move it again.
            return Action(ActionKind.INSTALL, wanted.name, f"{wanted.requirement.name}=={pinned}",
                          "missing; the version the WebUI pins", nodeps=wanted.nodeps)
        return Action(ActionKind.INSTALL, wanted.name, spec, "missing", nodeps=wanted.nodeps)
    return Action(ActionKind.INSTALL, wanted.name, spec, f"have {have}", have, nodeps=wanted.nodeps)


def plan_installs(requirements: Iterable[Wanted], installed_versions: Mapping[str, str],
                  host_pins: Mapping[str, str]) -> list[Action]:
    """Decide, for every requirement, whether to install it, warn about it, or leave it alone.

    `installed_versions` and `host_pins` are keyed by canonical distribution name.
    Satisfied requirements produce no action.
    """
    installed = {canonicalize_name(name): version for name, version in installed_versions.items()}
    pins = {canonicalize_name(name): version for name, version in host_pins.items()}
    actions = [plan_one(wanted, installed, pins) for wanted in requirements]
    return [action for action in actions if action is not None]


def frozen_versions(installed_versions: Mapping[str, str], host_pins: Mapping[str, str]) -> dict[str, str]:
    """Packages pip must not move while installing ours: the host's pins and torch, at what is installed."""
    protected = {canonicalize_name(name) for name in host_pins} | HOST_MANAGED | HOST_TOOLS
    return {name: version for name, version in installed_versions.items()
            if canonicalize_name(name) in protected}


def moved_off_pins(installed_versions: Mapping[str, str], host_pins: Mapping[str, str]) -> list[str]:
    """`name==pin` for each host-pinned package installed at another version, plus an opencv that needs
    numpy 2 (4.12 and later). Another extension's installer does this (ControlNet's, on every start)."""
    installed = {canonicalize_name(name): version for name, version in installed_versions.items()}
    restore = [f"{name}=={pinned}" for name, pinned in sorted(host_pins.items())
               if installed.get(canonicalize_name(name)) not in (None, pinned)]
    for opencv in ("opencv-python", "opencv-python-headless", "opencv-contrib-python"):
        have = installed.get(opencv)
        try:
            if have is not None and Version(have) >= Version("4.12"):
                restore.append(f"{opencv}<4.12")
        except InvalidVersion:
            continue
    return restore


def warn_if_moved(installed_versions: Mapping[str, str], host_pins: Mapping[str, str]) -> None:
    restore = moved_off_pins(installed_versions, host_pins)
    if restore:
        command = " ".join(f'"{spec}"' for spec in restore)
        print(f"{PREFIX} WARNING: packages the WebUI pins have moved ({', '.join(restore)} would put them back); "
              "another extension's installer may have upgraded them, and numpy 2 breaks this WebUI's gradio. "
              f"Restore them with: \"{sys.executable}\" -m pip install {command}", flush=True)


def installed_distributions() -> dict[str, str]:
    """{canonical name: version} of what the running Python has installed (first on sys.path wins)."""
    versions: dict[str, str] = {}
    for distribution in metadata.distributions():
        name = distribution.metadata["Name"]
        if name:
            versions.setdefault(canonicalize_name(name), distribution.version)
    return versions


def pip_command(action: Action, constraints_file: Path | None) -> str:
    """The argument string for `launch.run_pip`, which runs it through a shell: quote every value."""
    parts = ["install", f'"{action.spec}"']
    if action.nodeps:
        parts.append("--no-deps")
    elif constraints_file is not None:
        parts += ["-c", f'"{constraints_file}"']
    return " ".join(parts)


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def read_requirements(root: Path) -> list[Wanted]:
    return (parse_requirement_lines(read_lines(root / REQUIREMENTS_FILE))
            + parse_requirement_lines(read_lines(root / NODEPS_REQUIREMENTS_FILE), nodeps=True))


def unmet_requirements(name: str) -> list[str]:
    """The requirements of the installed distribution `name` that this environment does not satisfy."""
    importlib.invalidate_caches()
    installed = installed_distributions()
    unmet = []
    for line in metadata.distribution(name).requires or []:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # another platform's, or an optional extra's
        have = installed.get(canonicalize_name(requirement.name))
        if have is None or not version_satisfies(have, Wanted(requirement, str(requirement))):
            unmet.append(f"{requirement} (have {have or 'none'})")
    return unmet


def install_without_deps(launch, action: Action, first_error: RuntimeError) -> bool:
    """After pip refused an install under the frozen host versions, which happens when a package the
    host holds declares a need the host itself does not meet (torch 2.13 wants setuptools>=77, the
    WebUI pins 69.5.1): install the package alone, then check that everything it needs is there."""
    lone = Action(action.kind, action.name, action.spec, action.reason, action.installed, nodeps=True)
    try:
        launch.run_pip(pip_command(lone, None), desc=f"{action.spec} (--no-deps) for Portrait Studio")
        unmet = unmet_requirements(action.name)
    except (RuntimeError, metadata.PackageNotFoundError) as error:
        print(f"{PREFIX} ERROR: could not install {action.spec}:\n{first_error}\n{error}", flush=True)
        return False
    if unmet:
        print(f"{PREFIX} ERROR: installed {action.spec} without its dependencies, and it needs "
              f"{', '.join(unmet)}; pip could not add them without moving a package the WebUI holds:\n"
              f"{first_error}", flush=True)
        return False
    print(f"{PREFIX} installed {action.spec} on its own: everything it needs was already there", flush=True)
    return True


def run_actions(launch, actions: list[Action], constraints_file: Path) -> int:
    """Print one line per action and run the installs; returns how many installs failed."""
    failures = 0
    for action in actions:
        print(action.message(), flush=True)
        if action.kind is not ActionKind.INSTALL:
            continue
        try:
            launch.run_pip(pip_command(action, constraints_file), desc=f"{action.spec} for Portrait Studio")
        except RuntimeError as error:  # run_pip raises RuntimeError with pip's output when pip fails
            if action.nodeps or not install_without_deps(launch, action, error):
                failures += 1
                if action.nodeps:
                    print(f"{PREFIX} ERROR: could not install {action.spec}:\n{error}", flush=True)
    return failures


def write_constraints(frozen: Mapping[str, str], directory: str) -> Path:
    path = Path(directory) / "portrait-studio-host-constraints.txt"
    path.write_text("".join(f"{name}=={version}\n" for name, version in sorted(frozen.items())),
                    encoding="utf-8")
    return path


def skip_requested(argv: list[str], launch=None) -> bool:
    """--skip-install on our own command line, or in the WebUI's (COMMANDLINE_ARGS reaches launch.args)."""
    return "--skip-install" in argv or bool(getattr(getattr(launch, "args", None), "skip_install", False))


def main(argv: list[str] | None = None, *, installed: Mapping[str, str] | None = None,
         extension_root: Path = EXTENSION_ROOT) -> int:
    """Check the requirements against this environment and install what is missing; 0 on success."""
    argv = sys.argv[1:] if argv is None else argv
    if skip_requested(argv):
        print(f"{PREFIX} --skip-install given: not checking requirements", flush=True)
        return 0
    try:
        launch = importlib.import_module("launch")  # the WebUI's; only importable when it runs us
    except ImportError:
        print(f"{PREFIX} the WebUI's `launch` module is not importable: run this from the WebUI, or "
              f"install with `pip install -c {HOST_PINS_FILE.as_posix()} -r {REQUIREMENTS_FILE}`", flush=True)
        return 1
    if skip_requested(argv, launch):
        print(f"{PREFIX} --skip-install given: not checking requirements", flush=True)
        return 0
    installed = installed_distributions() if installed is None else installed
    try:
        # Without the pins file we could not tell a host pin from our own package: stop rather than guess.
        host_pins = parse_host_pins(read_lines(extension_root / HOST_PINS_FILE))
        actions = plan_installs(read_requirements(extension_root), installed, host_pins)
    except (OSError, ValueError) as error:
        print(f"{PREFIX} ERROR: cannot read the requirement files, installing nothing: {error}", flush=True)
        return 1
    warn_if_moved(installed, host_pins)
    if not actions:
        return 0
    with tempfile.TemporaryDirectory(prefix="portrait-studio-") as scratch:
        constraints = write_constraints(frozen_versions(installed, host_pins), scratch)
        failures = run_actions(launch, actions, constraints)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
