"""Following output on the real stack: a follower sees the lines an app prints after it
connected, env values masked, and the new container's after a restart."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import requests

from tests.e2e.conftest import Stack, push_busybox_image

TICKER = ("(n=0; while true; do n=$((n+1)); echo \"tick $n token=$TOKEN host=$(hostname)\"; sleep 0.3; done) & "
          "mkdir -p /tmp/www && echo ok > /tmp/www/index.html && exec /bin/busybox httpd -f -p 3000 -h /tmp/www")
SECRET = "f0ll0w-s3cr3t-51ab"


class Follow:
    """A follower of one deployment's output, reading events in a thread."""

    def __init__(self, stack: Stack, ident: str) -> None:
        self.events: list[dict[str, Any]] = []
        self.response = requests.get(f"{stack.api}/api/deploy/apps/{ident}/output", params={"follow": "true"},
                                     headers=stack.headers(), stream=True, timeout=60)
        assert self.response.status_code == 200, self.response.text
        assert self.response.headers["Content-Type"] == "text/event-stream"
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for line in self.response.iter_lines(chunk_size=1):
                if line.startswith(b"data: "):
                    self.events.append(json.loads(line[6:]) | {"received": time.time()})
        except requests.RequestException:
            pass

    def wait_for(self, match: Any, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events if match(e)]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no such line: {self.events[-5:]}")

    def close(self) -> None:
        self.response.close()


def test_a_follower_sees_new_lines_masked_and_the_new_container_after_a_restart(stack: Stack) -> None:
    image = push_busybox_image("ticker", TICKER, {})
    ident = stack.create(subdomain="e2e-follow", image=image, env_vars={"TOKEN": SECRET})["id"]
    assert stack.wait_for(ident, {"running", "failed"})["status"] == "running", stack.logs(ident)
    follower = Follow(stack, ident)
    try:
        connected = time.time()
        first = follower.wait_for(lambda e: e["text"].startswith("tick "))
        assert "token=********" in first["text"] and SECRET not in json.dumps(follower.events)
        assert first["stream"] == "stdout"
        later = follower.wait_for(lambda e: e["received"] > connected + 1)  # lines keep coming
        old_host = later["text"].rsplit("host=", 1)[1]

        assert stack.call("POST", f"/api/deploy/apps/{ident}/restart").status_code == 200
        after = follower.wait_for(lambda e: "host=" in e["text"] and e["text"].rsplit("host=", 1)[1] != old_host,
                                  timeout=90)
        assert after["container"] != first["container"]
        # Its first line too, printed while the old container still served beside it.
        follower.wait_for(lambda e: e["container"] == after["container"] and e["text"].startswith("tick 1 "))
    finally:
        follower.close()
    stack.destroy(ident)
