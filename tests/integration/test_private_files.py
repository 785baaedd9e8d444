"""Files under var/ that hold secrets or the SQLite database are readable by their owner only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from buddo_deploy.cli import main
from buddo_deploy.db import open_database
from buddo_deploy.migrations import upgrade
from buddo_deploy.settings import Settings


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_sqlite_database_and_its_wal_and_shm_are_0600(tmp_path: Path) -> None:
    os.umask(old := os.umask(0o022))  # the usual umask: new files would be 0644
    path = tmp_path / "var" / "buddo.db"
    db = open_database(f"sqlite:///{path}")
    try:
        upgrade(db)  # writes, so the -wal and -shm files exist while the connection is open
        files = [path, path.with_name("buddo.db-wal"), path.with_name("buddo.db-shm")]
        assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    finally:
        db.close()
        os.umask(old)


def test_files_left_readable_by_an_older_version_are_tightened(tmp_path: Path) -> None:
    var = tmp_path / "var"
    var.mkdir()
    for name in ("buddo.db", "buddo.db-wal", "buddo.db-shm", "jwt-secret", "secret-key"):
        (var / name).write_bytes(b"" if name.startswith("buddo.db") else b"kept-secret\n")
        (var / name).chmod(0o644)
    settings = Settings.from_env({"BUDDO_VAR_DIR": str(var)})
    open_database(settings.database_url).close()
    assert settings.jwt_secret == "kept-secret"
    assert {p.name: mode(p) for p in var.iterdir()} == {p.name: 0o600 for p in var.iterdir()}


def test_desired_env_file_is_0600_even_when_it_existed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("BUDDO_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("BUDDO_DATABASE_URL", raising=False)
    assert main(["db", "upgrade"]) == 0
    env_file = tmp_path / "desired.env.json"
    env_file.write_text("{}")
    env_file.chmod(0o644)
    assert main(["desired", "--host", "container-host-1", "--env-file", str(env_file)]) == 0
    assert mode(env_file) == 0o600
    assert '"converge_env_file"' in capsys.readouterr().out
    monkeypatch.setenv("BUDDO_RELEASES_KEPT", "5")
    assert main(["desired", "--host", "container-host-1"]) == 0
    # What the worker passes every run, so a sysadmin's run keeps as many release images.
    assert json.loads(capsys.readouterr().out)["converge_releases_kept"] == 5
