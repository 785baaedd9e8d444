"""``buddo``: the command line operators use (Typer for commands, rich for tables and
spinners, httpx and httpx-sse for the API, Authlib for the login). Each command is a thin
call of the REST API; ``--json`` prints the API's own objects.

Exit codes: 0 ok, 1 an API error (its message and request id in one line), 2 usage,
3 a wait that timed out. Where this is silent it does what flyctl and the Heroku CLI do.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
import uuid
import webbrowser
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import typer
from httpx_sse import ServerSentEvent, connect_sse
from rich.console import Console
from rich.table import Table

from . import login as oauth
from .session import (
    DEFAULT_API_URL,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    ClientError,
    Session,
    answer,
    forget_credentials,
    save_credentials,
)

app = typer.Typer(help="Buddo Deploy: run container apps at https://<subdomain>.<base domain>.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
apps = typer.Typer(help="Create, inspect and change apps.", no_args_is_help=True)
env = typer.Typer(help="An app's environment (each change is a new release).", no_args_is_help=True)
webhooks = typer.Typer(help="Endpoints that hear about your apps.", no_args_is_help=True)
registry = typer.Typer(help="Your logins for private registries.", no_args_is_help=True)
app.add_typer(apps, name="apps")
app.add_typer(env, name="env")
app.add_typer(webhooks, name="webhooks")
app.add_typer(registry, name="registry-login")

out = Console()
err = Console(stderr=True)
SETTLED = {"running", "failed", "stopped", "destroyed"}
STATUSES = ("pending", "deploying", "running", "stopped", "failed", "destroyed")
# An event stream's: the server sends a ping every 15 s, so a read waits 60 s at most.
STREAM_TIMEOUT = httpx.Timeout(30, read=60)
_ENV_PAIR = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)

App = Annotated[str, typer.Argument(help="The app: its subdomain or id")]
Wait = Annotated[bool, typer.Option("--wait", help="Wait until it settles, showing the states")]
Timeout = Annotated[int, typer.Option("--timeout", help="Seconds to wait at most", min=1)]


def session(ctx: typer.Context) -> Session:
    return ctx.ensure_object(Session)


@app.callback()
def main_options(
    ctx: typer.Context,
    api_url: Annotated[str, typer.Option("--api-url", envvar="BUDDO_API_URL", help="The API")] = DEFAULT_API_URL,
    token: Annotated[str | None, typer.Option("--token", envvar="BUDDO_TOKEN", help="An access token",
                                              show_default=False)] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the API's JSON objects")] = False,
) -> None:
    ctx.obj = Session(api_url=api_url.rstrip("/"), token=token or None, json_output=json_output,
                      transport=getattr(ctx.obj, "transport", None))


def show(s: Session, data: Any, table: Table | str | None = None) -> None:
    if s.json_output:
        out.print_json(json.dumps(data, default=str))
    elif table is not None:
        out.print(table)


def grid(*columns: str) -> Table:
    table = Table(box=None, header_style="bold")
    for column in columns:
        table.add_column(column)
    return table


def pages(s: Session, path: str, key: str, **params: Any) -> Iterator[dict[str, Any]]:
    """Every item of a listing, page after page (its next_cursor)."""
    cursor = None
    while True:
        page = s.call("GET", path, params={"limit": 100, **params, **({"cursor": cursor} if cursor else {})})
        yield from page[key]
        cursor = page.get("next_cursor")
        if not cursor:
            return


def resolve(s: Session, name: str) -> str:
    """An app's id from its id or subdomain (the operator's own, not destroyed)."""
    try:
        return str(uuid.UUID(name))
    except ValueError:
        pass
    for d in pages(s, "/api/deploy/apps", "deployments"):
        if d["subdomain"] == name:
            return str(d["id"])
    raise ClientError(f"No app named {name!r} (see `buddo apps list`)")


def wait_until_settled(s: Session, ident: str, timeout: int, initial: str | None = None) -> dict[str, Any]:
    """The status once it settles, each state shown as it passes; exit 3 at the timeout."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []

    def passed(state: str) -> None:
        if not seen or seen[-1] != state:
            seen.append(state)
            if not s.json_output:
                err.print(f"  {state}")

    if initial:
        passed(initial)
    status = s.call("GET", f"/api/deploy/apps/{ident}/status")
    with err.status("waiting", spinner="dots") as spinner:
        while True:
            passed(status["status"])
            if status["status"] in SETTLED:
                return dict(status)
            left = int(deadline - time.monotonic())
            if left <= 0:
                raise ClientError(f"Still {status['status']} after {timeout} s", code=EXIT_TIMEOUT)
            spinner.update(f"{status['status']} ...")
            others = ",".join(x for x in STATUSES if x != status["status"])
            status = s.call("GET", f"/api/deploy/apps/{ident}/status", timeout=min(60, left) + 30,
                            params={"wait_for": others, "timeout": min(60, left)})


def url_of(d: dict[str, Any]) -> str:
    return str(d.get("url") or "")


# --- login -------------------------------------------------------------------------------

@app.command("login")
def login_command(
    ctx: typer.Context,
    issuer: Annotated[str, typer.Option("--issuer", envvar="BUDDO_ISSUER", help="The OpenID issuer URL")],
    client_id: Annotated[str, typer.Option("--client-id", envvar="BUDDO_CLIENT_ID")] = "buddo-cli",
    scope: Annotated[str, typer.Option("--scope")] = "openid deploy:manage offline_access",
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Print the URL, do not open a browser")] = False,
    timeout: Timeout = 300,
) -> None:
    """Log in through the browser (OAuth 2.0 code flow with PKCE and a loopback redirect)."""
    stored = oauth.login(issuer, client_id, scope, open_browser=not no_browser, timeout_s=timeout,
                         say=lambda text: err.print(text, soft_wrap=True, highlight=False))
    path = save_credentials(stored)
    if not session(ctx).json_output:
        err.print(f"Logged in; the token is kept in {path} (0600).")


@app.command("logout")
def logout_command() -> None:
    """Forget the stored token."""
    err.print("Logged out." if forget_credentials() else "Not logged in.")


# --- apps --------------------------------------------------------------------------------

@app.command("tiers")
def tiers_command(ctx: typer.Context) -> None:
    """The tiers and what they cost."""
    s = session(ctx)
    tiers = s.call("GET", "/api/deploy/tiers")
    table = grid("TIER", "MEMORY", "CPU", "PRICE", "PAID IN", "MAX APPS")
    for t in tiers:
        price = t["monthly_cost_points"] if t["payment_method"] == "buddo_points" else t["monthly_cost_sats"]
        unit = "points" if t["payment_method"] == "buddo_points" else "sats"
        table.add_row(t["slug"], f"{t['memory_limit_mb']} MB", f"{t['cpu_limit_millicores']} m",
                      f"{price} {unit}/month", t["payment_method"], str(t["max_deployments"]))
    show(s, tiers, table)


@apps.command("list")
def apps_list(ctx: typer.Context, all_: Annotated[bool, typer.Option("--all", help="Destroyed ones too")] = False,
              ) -> None:
    """Your apps, newest first."""
    s = session(ctx)
    found = list(pages(s, "/api/deploy/apps", "deployments", include_destroyed=str(all_).lower()))
    table = grid("NAME", "STATUS", "HEALTH", "TIER", "URL")
    for d in found:
        table.add_row(d["subdomain"], d["status"], d.get("health_status", ""), d.get("tier", ""), url_of(d))
    show(s, found, table if found else "No apps yet: `buddo apps create NAME --image IMAGE`.")


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    found = {}
    for pair in pairs:
        match = _ENV_PAIR.match(pair)
        if match is None:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE (a KEY of letters, digits and _)")
        found[match.group(1)] = match.group(2)
    return found


def _deployment_table(d: dict[str, Any]) -> Table:
    table = grid("", "")
    for label, key in (("name", "subdomain"), ("id", "id"), ("status", "status"), ("health", "health_status"),
                       ("url", "url"), ("image", "container_image"), ("tier", "tier"), ("port", "port"),
                       ("custom domain", "custom_domain"), ("billing", "billing_status"),
                       ("env", "env_var_names"), ("created", "inserted_at")):
        value = d.get(key)
        if value not in (None, "", []):
            table.add_row(label, ", ".join(value) if isinstance(value, list) else str(value))
    return table


@apps.command("create")
def apps_create(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="Its subdomain")],
    image: Annotated[str, typer.Option("--image", help="The image to run")],
    tier: Annotated[str, typer.Option("--tier")] = "buddo-starter",
    port: Annotated[int, typer.Option("--port", help="The port the app listens on")] = 3000,
    env_pairs: Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE (repeat)")] = None,
    wait: Wait = False, timeout: Timeout = 300,
) -> None:
    """Create an app and deploy it."""
    s = session(ctx)
    body = {"subdomain": name, "image": image, "tier": tier, "port": port, "env_vars": _env_pairs(env_pairs or [])}
    d = s.call("POST", "/api/deploy/apps", json=body)["deployment"]
    if wait:
        status = wait_until_settled(s, d["id"], timeout, initial=d["status"])
        d = s.call("GET", f"/api/deploy/apps/{d['id']}")["deployment"]
        if status["status"] != "running":
            show(s, d, _deployment_table(d))
            raise ClientError(f"{name} is {status['status']}: see `buddo logs {name}` and `buddo output {name}`")
    show(s, d, _deployment_table(d))
    if not s.json_output and wait:
        out.print(f"[bold green]{url_of(d)}[/]")


@apps.command("info")
def apps_info(ctx: typer.Context, name: App) -> None:
    """An app's details."""
    s = session(ctx)
    d = s.call("GET", f"/api/deploy/apps/{resolve(s, name)}")["deployment"]
    show(s, d, _deployment_table(d))


@apps.command("status")
def apps_status(ctx: typer.Context, name: App, wait: Wait = False, timeout: Timeout = 300) -> None:
    """An app's status and health (with --wait: once it settles)."""
    s = session(ctx)
    ident = resolve(s, name)
    status = wait_until_settled(s, ident, timeout) if wait else s.call("GET", f"/api/deploy/apps/{ident}/status")
    table = grid("STATUS", "HEALTH", "CHECKED")
    table.add_row(status["status"], status["health_status"], str(status.get("last_health_check") or "-"))
    show(s, status, table)


def _change(ctx: typer.Context, name: str, method: str, action: str, body: Any = None, *, wait: bool = False,
            timeout: int = 300) -> None:
    s = session(ctx)
    ident = resolve(s, name)
    path = f"/api/deploy/apps/{ident}" + (f"/{action}" if action else "")
    answer = s.call(method, path, **({"json": body} if body is not None else {}))
    d = answer.get("deployment", answer)
    if wait:
        wait_until_settled(s, ident, timeout, initial=d.get("status"))
        d = s.call("GET", f"/api/deploy/apps/{ident}")["deployment"]
    show(s, d, _deployment_table(d) if "subdomain" in d else str(answer.get("message", "")))


@apps.command("update")
def apps_update(
    ctx: typer.Context, name: App,
    image: Annotated[str | None, typer.Option("--image")] = None,
    port: Annotated[int | None, typer.Option("--port")] = None,
    tier: Annotated[str | None, typer.Option("--tier")] = None,
    wait: Wait = False, timeout: Timeout = 300,
) -> None:
    """Change an app in place (a new release)."""
    body = {k: v for k, v in (("image", image), ("port", port), ("tier", tier)) if v is not None}
    if not body:
        raise typer.BadParameter("nothing to change: give --image, --port or --tier")
    _change(ctx, name, "PATCH", "", body, wait=wait, timeout=timeout)


@apps.command("restart")
def apps_restart(ctx: typer.Context, name: App, wait: Wait = False, timeout: Timeout = 300) -> None:
    """Pull the image again and replace the container (no downtime)."""
    _change(ctx, name, "POST", "restart", wait=wait, timeout=timeout)


@apps.command("stop")
def apps_stop(ctx: typer.Context, name: App) -> None:
    """Stop an app (restart starts it again)."""
    _change(ctx, name, "POST", "stop")


@apps.command("destroy")
def apps_destroy(ctx: typer.Context, name: App,
                 yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask")] = False) -> None:
    """Destroy an app (its subdomain becomes free)."""
    if not yes and not typer.confirm(f"Destroy {name}?"):
        raise typer.Exit(EXIT_USAGE)
    _change(ctx, name, "DELETE", "")


# --- env ---------------------------------------------------------------------------------

@env.command("list")
def env_list(ctx: typer.Context, name: App) -> None:
    """The names of an app's env vars (values are never shown)."""
    s = session(ctx)
    d = s.call("GET", f"/api/deploy/apps/{resolve(s, name)}")["deployment"]
    names = d.get("env_var_names") or []
    show(s, names, "\n".join(names) or "(none)")


@env.command("set")
def env_set(ctx: typer.Context, name: App, pairs: Annotated[list[str], typer.Argument(help="KEY=VALUE ...")],
            wait: Wait = False, timeout: Timeout = 300) -> None:
    """Set env vars (a new release)."""
    _change(ctx, name, "PATCH", "", {"env_vars": _env_pairs(pairs)}, wait=wait, timeout=timeout)


@env.command("unset")
def env_unset(ctx: typer.Context, name: App, keys: Annotated[list[str], typer.Argument(help="KEY ...")],
              wait: Wait = False, timeout: Timeout = 300) -> None:
    """Remove env vars (a new release)."""
    _change(ctx, name, "PATCH", "", {"env_vars": dict.fromkeys(keys)}, wait=wait, timeout=timeout)


# --- output, logs, releases, runs ---------------------------------------------------------

def _print_line(line: dict[str, Any]) -> None:
    style = "red" if line.get("stream") == "stderr" else ""
    out.print(f"[dim]{line.get('at', '')}[/] {line.get('text', '')}", style=style, highlight=False, markup=True,
              soft_wrap=True)


@app.command("output")
def output_command(ctx: typer.Context, name: App,
                   follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines")] = False,
                   tail: Annotated[int, typer.Option("--tail", "-n", min=1, max=5000)] = 100) -> None:
    """What the app printed (stdout and stderr), env values masked."""
    s = session(ctx)
    ident = resolve(s, name)
    deadline = time.monotonic() + 30
    while True:
        with s.client() as client:
            resp = client.get(f"/api/deploy/apps/{ident}/output", params={"tail": tail})
        if resp.status_code != 202 or time.monotonic() > deadline:
            break
        time.sleep(float(resp.headers.get("Retry-After", "2")))
    body = answer(resp)
    if s.json_output and not follow:
        show(s, body)
    else:  # following: the recent lines first, as `heroku logs --tail` does (NDJSON with --json)
        for line in body.get("lines", []):
            if s.json_output:
                print(json.dumps(line), flush=True)
            else:
                _print_line(line)
    if follow:
        _follow(s, ident)


def _follow(s: Session, ident: str) -> None:
    last = ""
    try:
        with s.client(timeout=STREAM_TIMEOUT) as client:
            while True:  # a stream ends after an hour: go on where it ended
                for event in _events(client, f"/api/deploy/apps/{ident}/output", last):
                    if event.event == "line":
                        last = event.id or last
                        line = json.loads(event.data)
                        if s.json_output:  # one object a line (NDJSON), as it comes
                            print(json.dumps(line), flush=True)
                        else:
                            _print_line(line)
                            sys.stdout.flush()
    except KeyboardInterrupt:
        return
    except httpx.HTTPError as exc:
        raise ClientError(f"The output stream ended: {exc}") from exc


def _events(client: httpx.Client, path: str, last_id: str) -> Iterator[ServerSentEvent]:
    """The events of one connection of a stream (from ``Last-Event-ID: last_id``); an error
    answer is a ClientError."""
    headers = {"Last-Event-ID": last_id} if last_id else {}
    with connect_sse(client, "GET", path, params={"follow": "true"}, headers=headers) as events:
        if events.response.status_code != 200:
            events.response.read()
            answer(events.response)
        yield from events.iter_sse()


@app.command("logs")
def logs_command(ctx: typer.Context, name: App) -> None:
    """The app's audit log: what was done to it, by whom, how it went."""
    s = session(ctx)
    ident = resolve(s, name)
    entries = list(pages(s, f"/api/deploy/apps/{ident}/logs", "logs"))
    table = grid("WHEN", "ACTION", "STATUS", "BY", "DETAILS")
    for e in entries:
        details = e.get("details") or {}
        said = details.get("message") or details.get("reason") or "" if isinstance(details, dict) else ""
        table.add_row(str(e["inserted_at"]), e["action"], e["status"], str(e.get("initiated_by") or "platform"),
                      str(said)[:80])
    show(s, entries, table)


@app.command("releases")
def releases_command(ctx: typer.Context, name: App) -> None:
    """The app's releases, newest first."""
    s = session(ctx)
    rows = s.call("GET", f"/api/deploy/apps/{resolve(s, name)}/releases")["releases"]
    table = grid("RELEASE", "IMAGE", "DIGEST", "CREATED", "KEPT")
    for r in rows:
        table.add_row(f"v{r['number']}", r["image"], str(r.get("image_digest") or "")[:19], str(r["created_at"]),
                      "yes" if r.get("kept") else "no")
    show(s, rows, table)


@app.command("rollback")
def rollback_command(ctx: typer.Context, name: App,
                     release: Annotated[int | None, typer.Argument(help="The release (default: the previous)")] = None,
                     wait: Wait = False, timeout: Timeout = 300) -> None:
    """Run an earlier release again (image, env, port and health check)."""
    _change(ctx, name, "POST", "rollback", {"release": release} if release else {}, wait=wait, timeout=timeout)


@app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run_command(ctx: typer.Context, name: App,
                command: Annotated[list[str], typer.Argument(help="-- CMD ARGS...")],
                timeout: Annotated[int, typer.Option("--timeout", min=1, max=3600)] = 300,
                detach: Annotated[bool, typer.Option("--detach", "-d", help="Do not wait for it")] = False) -> None:
    """Run a one-off command in a new container of the current release; exits with its code."""
    s = session(ctx)
    ident = resolve(s, name)
    run = s.call("POST", f"/api/deploy/apps/{ident}/runs", json={"command": command, "timeout_s": timeout})["run"]
    if detach:
        show(s, run, f"run {run['id']} queued")
        return
    run = _follow_run(s, ident, run, time.monotonic() + timeout + 330)
    if s.json_output:
        show(s, run)
    if run["state"] == "error":
        raise ClientError(f"The command did not run: {run.get('error')}")
    if run["state"] == "timed_out":
        raise ClientError(f"The command ran past {timeout} s and was stopped", code=EXIT_TIMEOUT)
    raise typer.Exit(int(run["exit_code"] or 0))


def _follow_run(s: Session, ident: str, run: dict[str, Any], deadline: float) -> dict[str, Any]:
    """Print the run's lines as it prints them (not with --json), then the run as it ended.

    The stream sends every line from the first, then the run (``event: end``). A command that
    ended before its lines were collected has them in the run's ``output`` (its last lines):
    those after the last line streamed are printed from there.
    """
    last: dict[str, Any] = {"id": "", "at": None}
    spinner = err.status("running", spinner="dots") if s.json_output else contextlib.nullcontext()
    try:
        with spinner, s.client(timeout=STREAM_TIMEOUT) as client:
            while time.monotonic() < deadline:  # a stream lasts an hour: go on where it ended
                ended = _run_events(s, client, f"/api/deploy/apps/{ident}/runs/{run['id']}", last)
                if ended is not None:
                    return ended
    except httpx.HTTPError as exc:
        raise ClientError(f"The run's stream ended: {exc}") from exc
    raise ClientError("The run did not end in time", code=EXIT_TIMEOUT)


def _run_events(s: Session, client: httpx.Client, path: str, last: dict[str, Any]) -> dict[str, Any] | None:
    """One connection of a run's stream (from ``last``, updated): the run once it ended, else None."""
    for event in _events(client, path, last["id"]):
        if event.event == "line":
            line = json.loads(event.data)
            last.update(id=event.id or last["id"], at=line.get("at"))
            if not s.json_output:
                _print_line(line)
                sys.stdout.flush()
        elif event.event == "end":
            ended: dict[str, Any] = json.loads(event.data)["run"]
            rest = ended.get("output") or []
            if last["at"] is not None:
                seen = [i for i, line in enumerate(rest) if line.get("at") == last["at"]]
                rest = rest[seen[-1] + 1:] if seen else []
            if not s.json_output:
                for line in rest:
                    _print_line(line)
            return ended
    return None


@app.command("open")
def open_command(ctx: typer.Context, name: App,
                 browser: Annotated[bool, typer.Option("--browser", help="Open it in a browser")] = False) -> None:
    """Print the app's URL (or open it)."""
    s = session(ctx)
    d = s.call("GET", f"/api/deploy/apps/{resolve(s, name)}")["deployment"]
    out.print(url_of(d), highlight=False)
    if browser:
        webbrowser.open(url_of(d))


@app.command("domains")
def domains_command(ctx: typer.Context, name: App) -> None:
    """The app's custom domain, its check and the DNS records to make."""
    s = session(ctx)
    d = s.call("GET", f"/api/deploy/apps/{resolve(s, name)}")["deployment"]
    found = {k: d.get(k) for k in ("url", "custom_domain", "custom_domain_status", "custom_domain_verification")}
    table = grid("", "")
    for key, value in found.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict | list) else str(value or "-"))
    show(s, found, table)


@app.command("billing")
def billing_command(ctx: typer.Context) -> None:
    """Your balances, debts and what your apps cost."""
    s = session(ctx)
    body = s.call("GET", "/api/deploy/billing")
    table = grid("", "")
    for key, value in body.items():
        if not isinstance(value, list | dict):
            table.add_row(key, str(value))
    show(s, body, table)


# --- webhooks, registry logins ------------------------------------------------------------

@webhooks.command("list")
def webhooks_list(ctx: typer.Context) -> None:
    s = session(ctx)
    found = s.call("GET", "/api/deploy/webhooks")["webhooks"]
    table = grid("ID", "URL", "ENABLED", "EVENTS")
    for w in found:
        table.add_row(w["id"], w["url"], "yes" if w["enabled"] else f"no: {w.get('disabled_reason')}",
                      str(len(w["event_types"])))
    show(s, found, table)


@webhooks.command("create")
def webhooks_create(ctx: typer.Context, url: str,
                    events: Annotated[list[str] | None, typer.Option("--event", help="An event type (repeat)")] = None,
                    ) -> None:
    """Register an endpoint; its signing secret is shown this once."""
    s = session(ctx)
    created = s.call("POST", "/api/deploy/webhooks", json={"url": url, **({"event_types": events} if events else {})})
    show(s, created, f"webhook {created['webhook']['id']}\nsecret {created['secret']} (shown once: keep it)")


@webhooks.command("delete")
def webhooks_delete(ctx: typer.Context, ident: str) -> None:
    s = session(ctx)
    show(s, s.call("DELETE", f"/api/deploy/webhooks/{ident}"), "deleted")


@registry.command("set")
def registry_set(ctx: typer.Context, host: str, username: Annotated[str, typer.Option("--username", "-u")],
                 password_stdin: Annotated[bool, typer.Option("--password-stdin")] = False) -> None:
    """Create or replace your login for a registry (the password is asked, or read from stdin)."""
    password = sys.stdin.readline().rstrip("\n") if password_stdin else typer.prompt("Password", hide_input=True)
    s = session(ctx)
    show(s, s.call("PUT", f"/api/deploy/registry-logins/{host}", json={"username": username, "password": password}),
         f"login for {host} saved")


@registry.command("list")
def registry_list(ctx: typer.Context) -> None:
    s = session(ctx)
    found = s.call("GET", "/api/deploy/registry-logins")["registry_logins"]
    table = grid("REGISTRY", "USERNAME")
    for login in found:
        table.add_row(login["registry"], login["username"])
    show(s, found, table)


@registry.command("remove")
def registry_remove(ctx: typer.Context, host: str) -> None:
    s = session(ctx)
    show(s, s.call("DELETE", f"/api/deploy/registry-logins/{host}"), f"login for {host} removed")


def global_flags_first(argv: list[str]) -> list[str]:
    """``--json`` anywhere before ``--`` (``buddo apps list --json``) goes where Typer takes it."""
    end = argv.index("--") if "--" in argv else len(argv)
    head = [a for a in argv[:end] if a != "--json"]
    return (["--json"] if len(head) < end else []) + head + argv[end:]


def run(argv: list[str], transport: httpx.BaseTransport | None = None) -> int:
    """The command line ``argv``: its exit code, one line on stderr for what went wrong."""
    try:
        rc = app(global_flags_first(argv), standalone_mode=False, prog_name="buddo",
                 obj=Session(api_url=DEFAULT_API_URL, transport=transport))
    except ClientError as exc:
        err.print(exc.line(), highlight=False, markup=False, soft_wrap=True)
        return exc.code
    except typer.Abort:
        err.print("Aborted.")
        return EXIT_USAGE
    except typer.TyperException as exc:  # usage: a bad option, a missing argument, a bad KEY=VALUE
        exc.show()  # type: ignore[attr-defined]
        return int(getattr(exc, "exit_code", EXIT_USAGE))
    except KeyboardInterrupt:
        return 130
    return rc if isinstance(rc, int) else 0


def main() -> None:
    """The console script ``buddo``."""
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
