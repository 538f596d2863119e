"""The development environment (``.venv``): every distribution at the version of a lock, installed in
parallel.

    python -m infra.local.environment install   # what `make venv` runs with the new venv's python
    python -m infra.local.environment lock      # after changing a pin in pyproject.toml: re-resolve

``pyproject.toml`` pins what the code imports; ``environment.lock`` beside this file pins everything
``pip install -e '.[test]'`` resolves from it, on the platform named in its first line.  On that
platform ``install`` skips pip's resolver and runs two ``pip install --no-deps`` at once: the CUDA
torch stack (about 4 GB of wheels to unpack) and everything else (mostly Python files to
byte-compile), which take about as long as each other and each use one core.  On any other platform
it resolves ``pyproject.toml`` as usual.  Either way ``pip check`` ends it.

Standard library only (``jobs.dependencies`` is too): it runs in a venv that has nothing else yet.
"""
from __future__ import annotations

import argparse
import platform
import re
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

from jobs.dependencies import PROJECT, canonical

REPO = Path(__file__).resolve().parents[2]
LOCK = Path(__file__).with_name("environment.lock")
EXTRAS = "test"
# The distributions of PyTorch's CUDA build: installed by one pip process, the rest by another.
TORCH_STACK = re.compile(r"^(torch|torchvision|triton|nvidia-.+|cuda-.+)$")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def platform_tag() -> str:
    """Where a lock holds: OS, machine and Python minor version (``linux-x86_64-py3.11``)."""
    return f"{sys.platform}-{platform.machine()}-py{sys.version_info.major}.{sys.version_info.minor}"


def lock_text(freeze: str, tag: str) -> str:
    """The lock for ``pip freeze --all --exclude-editable`` output: its ``name==version`` lines sorted,
    pip and the project itself left out (the venv upgrades its own pip), under a header naming the platform."""
    pins = []
    for line in freeze.splitlines():
        line = line.strip()
        if not line or canonical(re.split(r"[\s=@]", line)[0]) in {"pip", PROJECT}:
            continue
        match = PIN.match(line)
        if match is None:
            raise ValueError(f"pip freeze gave {line!r}, not a name==version pin")
        pins.append(line)
    header = [
        f"# platform: {tag}",
        "# Every distribution of `pip install -e '.[test]'` at its resolved version. Written by",
        "# `python -m infra.local.environment lock` (`make lock`) from pyproject.toml; do not edit.",
    ]
    return "\n".join(header + sorted(pins, key=lambda p: canonical(p.split("==")[0]))) + "\n"


def read_lock(path: Path = LOCK) -> tuple[str, dict[str, str]]:
    """``(platform tag, {canonical name: version})`` of a lock file."""
    lines = path.read_text().splitlines()
    if not lines or not lines[0].startswith("# platform: "):
        raise ValueError(f"{path}: the first line must be '# platform: <tag>'")
    pins: dict[str, str] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip() or line.startswith("#"):
            continue
        match = PIN.match(line.strip())
        if match is None:
            raise ValueError(f"{path}:{number}: {line!r} is not a name==version pin")
        name = canonical(match.group(1))
        if name in pins:
            raise ValueError(f"{path}:{number}: {name} is pinned twice")
        pins[name] = match.group(2)
    return lines[0].removeprefix("# platform: ").strip(), pins


def install_groups(pins: dict[str, str]) -> list[list[str]]:
    """The lock's pins split for two concurrent ``pip install --no-deps``: the torch stack, the rest."""
    groups: tuple[list[str], list[str]] = ([], [])
    for name, version in sorted(pins.items()):
        groups[TORCH_STACK.match(name) is None].append(f"{name}=={version}")
    return [group for group in groups if group]


def pip(python: str, *args: str) -> list[str]:
    return [python, "-m", "pip", *args]


def install_plan(lock_tag: str, pins: dict[str, str], python: str) -> tuple[list[list[str]], list[list[str]]]:
    """The pip commands of ``install``: ``(run at once, then run in order)``."""
    if lock_tag == platform_tag():
        # setuptools is in the lock, so the project's own editable install needs no isolated build env
        return ([pip(python, "install", "--quiet", "--no-deps", *group) for group in install_groups(pins)],
                [pip(python, "install", "--quiet", "--no-deps", "--no-build-isolation", "-e", str(REPO)),
                 pip(python, "check")])
    return [], [pip(python, "install", "--quiet", "-e", f"{REPO}[{EXTRAS}]"), pip(python, "check")]


def install(python: str = sys.executable, lock: Path = LOCK) -> None:
    tag, pins = read_lock(lock)
    concurrent, in_order = install_plan(tag, pins, python)
    if concurrent:
        print(f"installing the {len(pins)} pins of {lock.name} ({tag}) in {len(concurrent)} pip processes", flush=True)
    else:
        print(f"{lock.name} is for {tag}, this is {platform_tag()}: resolving pyproject.toml", flush=True)
    running = [subprocess.Popen(command) for command in concurrent]
    failed = [process.args for process in running if process.wait() != 0]
    if failed:
        sys.exit("failed: " + "; ".join(" ".join(command[:8]) + " ..." for command in failed))
    for command in in_order:
        subprocess.run(command, check=True)


def write_lock(lock: Path = LOCK) -> None:
    """Resolve ``.[test]`` into a new venv and write what it installed as the lock."""
    with tempfile.TemporaryDirectory() as scratch:
        venv.create(scratch, with_pip=True)
        python = str(Path(scratch) / "bin" / "python")
        subprocess.run(pip(python, "install", "--quiet", "--upgrade", "pip"), check=True)
        subprocess.run(pip(python, "install", "--quiet", f"{REPO}[{EXTRAS}]"), check=True)
        freeze = subprocess.run(pip(python, "freeze", "--all", "--exclude-editable"),
                                check=True, capture_output=True, text=True).stdout
    lock.write_text(lock_text(freeze, platform_tag()))
    print(f"wrote {lock} ({platform_tag()})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m infra.local.environment", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["install", "lock"])
    args = parser.parse_args(argv)
    install() if args.command == "install" else write_lock()


if __name__ == "__main__":
    main()
