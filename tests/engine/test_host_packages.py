"""Every executable the engine runs comes from a Debian package that a role or the Makefile
names, or that such a package pulls in (Depends/Pre-Depends), or that every Debian has.

A fresh machine has only what the project's files install: a package installed by hand on
this machine (netavark needs iptables) makes CI green and a fresh host fail.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SEARCH_PATH = os.pathsep.join(["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin",
                               "/usr/lib/podman", "/usr/libexec/podman"])
EXECUTABLES: dict[str, str] = yaml.safe_load(
    (ROOT / "roles" / "container_host" / "defaults" / "main.yml").read_text())["container_host_executables"]
# What runs on the controller (the worker, buddo-deploy, sysadmins): ssh to the container hosts.
CONTROLLER = {"ssh": "openssh-client"}


def package_of(executable: str) -> str:
    found = shutil.which(executable, path=SEARCH_PATH)
    assert found, f"{executable} is not installed (run the bootstrap playbook)"
    for path in dict.fromkeys([found, os.path.realpath(found)]):
        # usrmerge: dpkg may know /bin/x as /usr/bin/x or the other way round.
        for candidate in (path, path.replace("/usr/", "/", 1), path if path.startswith("/usr/") else "/usr" + path):
            result = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True, check=False)
            if result.returncode == 0:
                return result.stdout.split(":", 1)[0].split(",")[0].strip()
    raise AssertionError(f"no Debian package owns {found}")


def named_by_the_project(package: str) -> bool:
    found = subprocess.run(["git", "grep", "-qwF", "--", package, "--", "roles", "playbooks", "Makefile", "scripts",
                            "molecule"], cwd=ROOT, check=False)
    return found.returncode == 0


def installed_fields(package: str, fields: str) -> str:
    result = subprocess.run(["dpkg-query", "-W", "-f", fields, package], capture_output=True, text=True, check=False)
    return result.stdout if result.returncode == 0 else ""


@functools.cache
def closure(packages: frozenset[str]) -> set[str]:
    """The packages and everything they depend on, as installed here (every alternative present)."""
    seen: set[str] = set()
    todo = list(packages)
    while todo:
        package = todo.pop()
        if package in seen:
            continue
        seen.add(package)
        depends = installed_fields(package, "${Depends}, ${Pre-Depends}")
        for alternative in re.split(r"[,|]", depends):
            name = alternative.strip().split(" ")[0].split(":")[0]
            if name and installed_fields(name, "${Status}").endswith("installed"):
                todo.append(name)
    return seen


def everywhere(package: str) -> bool:
    """Essential or required: part of every Debian system."""
    essential, _, priority = installed_fields(package, "${Essential} ${Priority}").partition(" ")
    return essential == "yes" or priority == "required"


@pytest.mark.parametrize("executable", sorted({*EXECUTABLES, *CONTROLLER}))
def test_each_executable_comes_from_a_package_the_project_installs(executable: str) -> None:
    package = package_of(executable)
    expected = EXECUTABLES.get(executable) or CONTROLLER[executable]
    assert package == expected, f"{executable} is in {package}, the project says {expected}"
    named = frozenset(p for p in {*EXECUTABLES.values(), *CONTROLLER.values()} if named_by_the_project(p))
    assert everywhere(package) or package in closure(named), (
        f"{executable} ({package}) is neither named by a role or the Makefile nor pulled in by one they name")


def test_the_named_packages_are_named_where_they_are_installed() -> None:
    """container_host_executables names a package: it is in a list a role installs (or every Debian has it)."""
    defaults = yaml.safe_load((ROOT / "roles" / "container_host" / "defaults" / "main.yml").read_text())
    installed = frozenset(defaults["container_host_packages"])
    for executable, package in EXECUTABLES.items():
        assert package in installed or everywhere(package) or package in closure(installed), (executable, package)


def test_the_smoke_test_names_what_is_missing_in_one_line(tmp_path: Path) -> None:
    """Bootstrap's smoke test, on a host without an executable the engine runs: it fails before
    it starts anything, in one line naming the executable and its Debian package."""
    playbook = tmp_path / "smoke.yml"
    playbook.write_text(yaml.safe_dump([{
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        "tasks": [{"ansible.builtin.include_role": {"name": "container_host", "tasks_from": "smoke"}}],
    }]))
    executables = {**EXECUTABLES, "buddo-no-such-tool": "buddo-no-such-package"}
    extra = yaml.safe_dump({"container_host_executables": executables}, default_flow_style=True)
    run = subprocess.run([str(ROOT / ".venv/bin/ansible-playbook"), "-i", "localhost,", str(playbook),
                          "-e", f"ansible_python_interpreter={sys.executable}", "-e", extra],
                         cwd=ROOT, env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
                         capture_output=True, text=True, check=False, timeout=120)
    assert run.returncode == 2, run.stdout + run.stderr
    line = "smoke test on localhost: missing buddo-no-such-tool (Debian package buddo-no-such-package)"
    assert f"msg: '{line}'" in run.stdout, run.stdout
    assert "Start an app container as the engine does" not in run.stdout
