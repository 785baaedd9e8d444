"""A container's writable layer is found from containers/storage's own records, not `podman mount`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "collections"))

from ansible_collections.buddo.deploy.plugins.module_utils.instances import btrfs_subvolume  # noqa: E402


def storage(tmp_path: Path, driver: str = "btrfs", containers: object = None) -> Path:
    root = tmp_path / "storage"
    (root / "btrfs" / "subvolumes" / "layer-a").mkdir(parents=True)
    (root / "btrfs-containers").mkdir()
    records = containers if containers is not None else [{"id": "c-other", "layer": "layer-b"},
                                                        {"id": "c-a", "layer": "layer-a"}]
    (root / "btrfs-containers" / "containers.json").write_text(json.dumps(records))
    conf = tmp_path / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "{driver}"\ngraphroot = "{root}"\nrunroot = "/run/x"\n')
    return conf


def test_the_subvolume_is_the_containers_layer(tmp_path: Path) -> None:
    conf = storage(tmp_path)
    assert btrfs_subvolume("c-a", str(conf)) == str(tmp_path / "storage" / "btrfs" / "subvolumes" / "layer-a")


@pytest.mark.parametrize("case", ["unknown container", "layer not on disk", "another driver", "no conf",
                                  "broken records", "broken conf"])
def test_anything_it_cannot_read_leaves_it_to_podman(tmp_path: Path, case: str) -> None:
    conf = storage(tmp_path, driver="overlay" if case == "another driver" else "btrfs",
                   containers="not a list" if case == "broken records" else None)
    if case == "no conf":
        conf = tmp_path / "missing.conf"
    if case == "broken conf":
        conf.write_text("[storage\n")
    ident = {"unknown container": "c-none", "layer not on disk": "c-other"}.get(case, "c-a")
    assert btrfs_subvolume(ident, str(conf)) == ""
