"""The HTTP to HTTPS redirect of the main Caddyfile (role caddy), as Caddy itself adapts it.

On a non-standard HTTPS port (make up: 8443) Caddy's automatic redirect would drop the
port; the Caddyfile then redirects explicitly and keeps it. On 443 Caddy's own
(portless) redirect stays. The redirect on a live Caddy is checked end to end in
tests/e2e/test_lifecycle.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def adapted(tmp_path: Path, https_port: int) -> dict[str, Any]:
    """Render the role's Caddyfile for ``https_port`` and return Caddy's JSON config of it."""
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "my-app.caddy").write_text("my-app.localhost {\n\trespond hello\n}\n")
    caddyfile = tmp_path / "Caddyfile"
    render = subprocess.run(
        [str(BIN / "ansible"), "localhost", "-c", "local", "-m", "ansible.builtin.template",
         "-a", f"src={ROOT / 'roles/caddy/templates/Caddyfile.j2'} dest={caddyfile}",
         "-e", f"@{ROOT / 'roles/caddy/defaults/main.yml'}", "-e", f"caddy_https_port={https_port}",
         "-e", "caddy_http_port=8080", "-e", f"caddy_sites_dir={tmp_path / 'sites'}"],
        env=os.environ | {"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}, capture_output=True, text=True, check=False,
    )
    assert render.returncode == 0, render.stdout + render.stderr
    adapt = subprocess.run(["caddy", "adapt", "--config", str(caddyfile), "--adapter", "caddyfile"],
                           capture_output=True, text=True, check=False)
    assert adapt.returncode == 0, adapt.stderr
    return dict(json.loads(adapt.stdout))


def http_server(config: dict[str, Any]) -> dict[str, Any] | None:
    servers = config["apps"]["http"]["servers"].values()
    return next((s for s in servers if s["listen"] == [":8080"]), None)


def test_a_non_standard_https_port_is_kept_in_the_redirect(tmp_path: Path) -> None:
    server = http_server(adapted(tmp_path, 8443))
    assert server is not None
    assert server["automatic_https"] == {"disable_redirects": True}
    [route] = server["routes"]
    [handler] = route["handle"]
    assert "match" not in route  # every host
    assert handler["status_code"] == 308
    assert handler["headers"]["Location"] == ["https://{http.request.host}:8443{http.request.uri}"]


def test_the_standard_port_keeps_caddys_own_portless_redirect(tmp_path: Path) -> None:
    config = adapted(tmp_path, 443)
    # No HTTP server of ours: Caddy adds its automatic redirects (https://{host}{uri}) when it starts.
    assert http_server(config) is None
    assert all("automatic_https" not in s for s in config["apps"]["http"]["servers"].values())
