"""Runs start as forks of a warm ansible-playbook (buddo_deploy.warm), and behave as cold ones."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from buddo_deploy import runner
from buddo_deploy.warm import Pool

from tests.helpers import local_inventory

PLAYBOOKS = Path(__file__).parent / "playbooks"


def until(check: Callable[[], object], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.05)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def zygote_of_the_runs(tmp_path: Path) -> subprocess.Popen[bytes]:
    """The bridge's zygote of the default strategy's runs, once it listens and has served a run."""
    socket = runner.prewarm()
    [process] = [z[0] for z in runner.WARM.zygotes.values() if z[1] == socket.parent and z[0].poll() is None]
    until(socket.exists, "the zygote listens")
    first = runner.run_playbook(PLAYBOOKS / "fail.yml", local_inventory(tmp_path), {}, work_dir=tmp_path / "r")
    assert first.status == "failed"
    until(lambda: not children(process.pid), "the first run's child is gone")
    return process


def test_a_run_is_a_fork_of_the_warm_ansible_and_ends_with_it(tmp_path: Path) -> None:
    zygote = zygote_of_the_runs(tmp_path)
    flag = tmp_path / "flag"
    results = []
    run = threading.Thread(target=lambda: results.append(runner.run_playbook(
        PLAYBOOKS / "wait_file.yml", local_inventory(tmp_path), {"flag_file": str(flag)}, work_dir=tmp_path / "r")))
    run.start()
    until(lambda: children(zygote.pid), "the run is a child of the zygote")
    [child] = children(zygote.pid)
    flag.touch()
    run.join(timeout=60)
    [result] = results
    assert result.ok, result
    assert result.failed_task is None
    until(lambda: not Path(f"/proc/{child}").exists(), "the child is gone when its run ended")


def sleeping(seconds: str) -> list[Path]:
    return [entry for entry in Path("/proc").iterdir() if entry.name.isdigit()
            and _cmdline(entry) == ["sleep", seconds]]


def _cmdline(entry: Path) -> list[str]:
    try:
        return (entry / "cmdline").read_bytes().decode(errors="replace").rstrip("\0").split("\0")
    except OSError:
        return []


def test_a_run_that_times_out_leaves_no_fork_behind_nor_its_modules(tmp_path: Path) -> None:
    zygote = zygote_of_the_runs(tmp_path)
    seconds = f"{50 + os.getpid() % 1000 / 1000:.3f}"  # the module's own process: `sleep 50.xyz`
    result = runner.run_playbook(PLAYBOOKS / "sleep_for.yml", local_inventory(tmp_path), {"seconds": seconds},
                                 timeout_s=3, work_dir=tmp_path / "r")
    assert result.status == "timeout"
    # ansible-runner SIGKILLed the launcher: the child saw its socket close and killed what
    # it had started (Ansible's worker processes and their modules run in sessions of their own).
    until(lambda: not children(zygote.pid), "no child of the zygote is left")
    until(lambda: not sleeping(seconds), "the module's sleep is gone")


@pytest.mark.parametrize("changed", ["ansible.cfg", "a file of the roles path"])
def test_a_change_is_refused_and_the_run_goes_cold(tmp_path: Path, changed: str) -> None:
    config, module = tmp_path / "ansible.cfg", tmp_path / "roles" / "r" / "library" / "thing.py"
    shutil.copy(runner.REPO_ROOT / "ansible.cfg", config)
    module.parent.mkdir(parents=True)
    module.write_text("# a module of a role\n")
    env = runner.ansible_env() | {"ANSIBLE_CONFIG": str(config), "ANSIBLE_STDOUT_CALLBACK": "default",
                                  "ANSIBLE_ROLES_PATH": str(tmp_path / "roles")}
    pool = Pool()
    warm = pool.env_for(env, start=True)
    [(zygote, directory)] = pool.zygotes.values()
    until(lambda: (directory / "socket").exists(), "the zygote listens")
    command = [pool.launcher(), "-i", str(local_inventory(tmp_path))]
    first = subprocess.run([*command, str(PLAYBOOKS / "fail.yml")], env=warm, capture_output=True, text=True,
                           check=False, cwd=tmp_path)
    assert first.returncode == 2 and "the widget is broken" in first.stdout, first
    pinged = subprocess.run([*command, str(PLAYBOOKS / "ping.yml")], env=warm, capture_output=True, text=True,
                            check=False, cwd=tmp_path)
    assert pinged.returncode == 0, pinged
    assert any("ping" in entry.name for entry in (directory / "ansiballz_cache").iterdir())  # shared by its runs
    touched = config if changed == "ansible.cfg" else module
    stamp = touched.stat().st_mtime + 5
    os.utime(touched, (stamp, stamp))
    second = subprocess.run([*command, str(PLAYBOOKS / "fail.yml")], env=warm, capture_output=True, text=True,
                            check=False, cwd=tmp_path)
    assert (second.returncode, second.stdout) == (first.returncode, first.stdout)
    zygote.wait(timeout=30)  # what its runs were built from changed: it is done
    assert not directory.exists()


def test_a_zygote_whose_parent_is_gone_before_it_started_exits(tmp_path: Path) -> None:
    directory = tmp_path / "zygote"
    directory.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    zygote = subprocess.Popen([sys.executable, "-m", "buddo_deploy.warm", str(directory), str(gone.pid)])
    assert zygote.wait(timeout=30) == 0
    assert not directory.exists()


def test_a_process_that_did_not_ask_for_one_starts_no_zygote() -> None:
    pool = Pool()
    env = pool.env_for(runner.ansible_env())
    assert "BUDDO_ANSIBLE_WARM" not in env and not pool.zygotes  # its runs start ansible-playbook itself


def test_without_a_zygote_the_launcher_runs_ansible_playbook(tmp_path: Path) -> None:
    pool = Pool()
    env = runner.ansible_env() | {"ANSIBLE_STDOUT_CALLBACK": "default", "BUDDO_ANSIBLE_WARM": str(tmp_path / "none"),
                                  "BUDDO_ANSIBLE_PLAYBOOK": str(Path(sys.executable).with_name("ansible-playbook"))}
    done = subprocess.run([pool.launcher(), "-i", str(local_inventory(tmp_path)), str(PLAYBOOKS / "fail.yml")], env=env,
                          capture_output=True, text=True, check=False, cwd=tmp_path)
    assert done.returncode == 2 and "the widget is broken" in done.stdout, done
