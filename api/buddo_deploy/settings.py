"""Settings: every knob is an environment variable prefixed ``BUDDO_``.

The embedded default needs no configuration at all: SQLite under ``var/``, a
generated JWT secret, encryption key and ask secret kept in ``var/`` (mode 0600),
base domain ``localhost`` on port 8443, tokens (``buddo-deploy token``) for audience
``buddo-deploy`` from issuer ``buddo-deploy-local``.

Production is any setup with ``BUDDO_DATABASE_URL`` or ``BUDDO_JWT_JWKS_URL`` set: its
secrets, the tokens' audience and issuer must be named (``none`` says, explicitly, that
tokens are accepted without that check).
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# The longest request body the API reads (413 beyond it).
MAX_BODY_BYTES = 256 * 1024
# The desired-state document lists the image digests of this many newest releases at most.
RELEASE_HISTORY = 10
# BUDDO_ANSIBLE_STRATEGY: what the worker's playbook runs may use (runner.ansible_env);
# the first is the default (measured: bench/deploy.py runs both).
STRATEGIES = ("linear", "mitogen_linear")
DEFAULT_REGISTRIES = ("harbor.buddo.xyz:4443/", "docker.io/library/", "ghcr.io/")
DEFAULT_RESERVED = (
    "www", "api", "admin", "app", "apps", "auth", "billing", "blog", "cdn", "dashboard",
    "docs", "ftp", "help", "imap", "mail", "ns1", "ns2", "pop", "root", "smtp", "static",
    "status", "support",
    # Mail clients and servers look these up by name (autoconfig, MTA-STS, RFC 2142 mailboxes).
    "autoconfig", "autodiscover", "mta-sts", "webmail", "pop3", "pop3s", "imaps", "smtps", "mx", "email",
    "postmaster", "hostmaster", "webmaster", "abuse", "localhost", "wpad", "ns3", "ns4",
)


def make_private(*paths: Path) -> None:
    """Files that hold secrets or the database: readable by their owner only.

    New ones are created 0600; this tightens those an older version or a sysadmin's
    umask left readable to others.
    """
    for path in paths:
        if path.exists() and path.stat().st_mode & 0o077:
            path.chmod(0o600)


class SettingsError(ValueError):
    """A BUDDO_ variable is missing or malformed; the message says which and what to set."""


# The embedded default's tokens: what `buddo-deploy token` mints and the API expects.
EMBEDDED_AUDIENCE = "buddo-deploy"
EMBEDDED_ISSUER = "buddo-deploy-local"
# BUDDO_JWT_AUDIENCE / BUDDO_JWT_ISSUER set to this: tokens are accepted without that check.
NO_CHECK = "none"
# What a key of each kind can verify: a shared secret (BUDDO_JWT_SECRET) only HMAC, a
# JWKS only public-key algorithms (its HS256 "key" would be a public key, known to all).
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
PUBLIC_KEY_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                         "ES256", "ES256K", "ES384", "ES512", "EdDSA")


def _new_secret() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def _persistent_secret(path: Path, make: bool, new: Callable[[], str] = _new_secret) -> str | None:
    """Read a secret kept under var/, creating it on first use (embedded default only); None: missing."""
    if path.exists():
        make_private(path)
        return path.read_text().strip()
    if not make:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    value = new()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def _csv(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


_DURATION = re.compile(r"^\s*(\d+)\s*([dhms]?)\s*$")
_UNIT_S = {"d": 86400, "h": 3600, "m": 60, "s": 1, "": 1}


def parse_duration(value: str) -> int:
    """Seconds in ``<n>d``, ``<n>h``, ``<n>m``, ``<n>s`` or a plain number of seconds."""
    match = _DURATION.match(value)
    if match is None:
        raise SettingsError(f"{value!r} is not a duration (<n>d, <n>h, <n>m, <n>s or seconds)")
    return int(match.group(1)) * _UNIT_S[match.group(2)]
def _duration(name: str, value: str) -> int:
    try:
        return parse_duration(value)
    except SettingsError as exc:
        raise SettingsError(f"BUDDO_{name}: {exc}") from exc


def _networks(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(item, strict=False) for item in _csv(value))
    except ValueError as exc:
        raise SettingsError(f"BUDDO_METRICS_ALLOW must be comma-separated CIDRs, e.g. 127.0.0.0/8,::1: {exc}") from exc


# Numeric variables, checked up front so a typo names its variable (not int()'s complaint).
_INTEGERS = (
    "PUBLIC_HTTPS_PORT", "MAX_DEPLOYMENTS_PER_ACCOUNT", "RATE_LIMIT_READ", "RATE_LIMIT_WRITE", "RATE_LIMIT_WINDOW",
    "JOB_TIMEOUT", "JOB_LEASE", "HEALTH_FAILURES", "HEALTH_MAX_RESTARTS", "RATE_LIMIT_ANONYMOUS",
    "CERT_BUDGET_PER_DOMAIN", "CERT_BUDGET_PER_HOUR", "RELEASES_KEPT",
    "RATE_LIMIT_WEBHOOK", "BILLING_STARTING_POINTS", "BILLING_STARTING_SATS",
    "CONVERGE_BATCH", "RATE_LIMIT_ASK", "RETENTION_DAYS", "OPERATOR_CONCURRENCY",
)
_NUMBERS = ("WORKER_POLL", "HEALTH_INTERVAL", "RECONCILE_INTERVAL", "BILLING_INTERVAL", "DOMAIN_CHECK_INTERVAL",
            "OUTPUT_MAX_AGE", "API_REQUEST_TIMEOUT", "RETENTION_INTERVAL")


def _check_numbers(get: Callable[[str], str | None]) -> None:
    for name in _INTEGERS + _NUMBERS:
        value = get(name)
        if not value:
            continue
        try:
            number = int(value) if name in _INTEGERS else float(value)
        except ValueError:
            number = -1
        if not 0 <= number < float("inf"):
            kind = "a whole number" if name in _INTEGERS else "a number"
            raise SettingsError(f"BUDDO_{name} must be {kind} of 0 or more, got {value!r}")
    ports = get("HOST_PORT_RANGE")
    if ports and not re.fullmatch(r"[0-9]+(-[0-9]+)?", ports):
        raise SettingsError(f"BUDDO_HOST_PORT_RANGE must be LOW-HIGH, e.g. 20000-29999, got {ports!r}")


# The ask secret travels in Caddy's ask URL (?token=): URL-safe characters only, and long
# enough that guessing it is out of the question.
_ASK_SECRET = re.compile(r"[A-Za-z0-9._~-]{16,256}")


def _ask_secret(value: str | None, source: str) -> str | None:
    if value is not None and not _ASK_SECRET.fullmatch(value):
        raise SettingsError(f"{source} must be 16 to 256 characters of A-Z a-z 0-9 . _ ~ - (it is sent in "
                            "Caddy's ask URL), e.g. the output of: python3 -c 'import secrets; "
                            "print(secrets.token_urlsafe(32))'")
    return value


def _jwt_algorithms(value: str | None, jwks_url: str | None) -> tuple[str, ...]:
    if jwks_url is not None and not re.match(r"https?://[^/\s]", jwks_url):
        raise SettingsError(f"BUDDO_JWT_JWKS_URL must be an https:// (or http://) URL, got {jwks_url!r}")
    allowed = PUBLIC_KEY_ALGORITHMS if jwks_url else HMAC_ALGORITHMS
    algorithms = _csv(value or allowed[0])
    wrong = [name for name in algorithms if name not in allowed]
    if wrong or not algorithms:
        keys = "with BUDDO_JWT_JWKS_URL (public keys)" if jwks_url else \
            "with BUDDO_JWT_SECRET (a shared secret; set BUDDO_JWT_JWKS_URL for public-key tokens)"
        raise SettingsError(f"BUDDO_JWT_ALGORITHMS: {', '.join(wrong) or 'nothing'} cannot be used {keys}; "
                            f"choose from {','.join(allowed)}")
    return algorithms


def _expected_claims(get: Callable[[str], str | None], production: bool) -> tuple[str | None, str | None]:
    """(audience, issuer) every token must carry; None: not checked (``none``, said explicitly)."""
    found: dict[str, str | None] = {}
    missing = []
    for name, claim, default in (("JWT_AUDIENCE", "audience", EMBEDDED_AUDIENCE),
                                 ("JWT_ISSUER", "issuer", EMBEDDED_ISSUER)):
        value = (get(name) or "").strip()
        if value.lower() == NO_CHECK:
            found[name] = None
        elif value:
            found[name] = value
        elif production:
            missing.append((f"BUDDO_{name}", claim))
        else:
            found[name] = default
    if missing:
        names, claims = " and ".join(m[0] for m in missing), " and ".join(m[1] for m in missing)
        them = "them" if len(missing) > 1 else "it"
        raise SettingsError(
            f"{names} not set: with BUDDO_DATABASE_URL or BUDDO_JWT_JWKS_URL set, name the {claims} your "
            f"tokens carry (a token minted for another service is refused), or set {them} to '{NO_CHECK}' to "
            "accept tokens without that check")
    return found["JWT_AUDIENCE"], found["JWT_ISSUER"]


def api_request_timeout_s(env: Mapping[str, str] | None = None) -> float:
    """BUDDO_API_REQUEST_TIMEOUT: how long a request may take to arrive (serving.py reads it
    before the app exists; ``Settings.from_env`` the same way)."""
    env = os.environ if env is None else env
    _check_numbers(lambda name: env.get(f"BUDDO_{name}") if name == "API_REQUEST_TIMEOUT" else None)
    seconds = float(env.get("BUDDO_API_REQUEST_TIMEOUT") or 10)
    if seconds <= 0:
        raise SettingsError("BUDDO_API_REQUEST_TIMEOUT must be above 0 seconds")
    return seconds


@dataclass(frozen=True)
class Settings:
    var_dir: Path
    database_url: str
    jwt_secret: str
    secret_key: str
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_jwks_url: str | None = None
    # What every token's iss and aud must be; None: not checked (BUDDO_JWT_ISSUER=none, ...).
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    base_domain: str = "localhost"
    public_https_port: int = 8443
    allowed_registries: tuple[str, ...] = DEFAULT_REGISTRIES
    reserved_subdomains: tuple[str, ...] = DEFAULT_RESERVED
    default_host: str = "container-host-1"
    # Label buddo.instance of this platform's containers: a reconcile removes as orphans
    # only containers of its own instance (two platforms may share a host, e.g. tests).
    instance: str = "buddo"
    host_port_range: tuple[int, int] = (20000, 29999)
    max_deployments_per_account: int = 20
    rate_limits_enabled: bool = True
    rate_limit_read: int = 30
    rate_limit_write: int = 10
    rate_limit_window_s: int = 60
    # Requests that fail authentication (401/403), per client address and window.
    rate_limit_anonymous: int = 30
    # Proxies whose X-Forwarded-For is believed; otherwise the client is the socket peer.
    trusted_proxies: tuple[str, ...] = ()
    max_body_bytes: int = MAX_BODY_BYTES
    job_timeout_s: int = 600
    job_lease_s: int = 20
    worker_poll_s: float = 0.05
    health_interval_s: float = 15.0
    # Consecutive failed probes before an app is restarted; automatic restarts an hour
    # before they pause (crash-loop guard).
    health_failures: int = 3
    health_max_restarts: int = 3
    # The worker queues a reconcile of every host this often (seconds; 0: never).
    reconcile_interval_s: float = 300.0
    # Cloudflare API token for the DNS records (role cloudflare_dns): handed to each
    # playbook run in a 0600 file on tmpfs (cloudflare_dns_api_token_file), never in its env.
    cloudflare_api_token: str | None = field(default=None, repr=False)
    # Custom domains: resolvers of the DNS check ("ip" or "ip:port"; empty: the system's),
    # how often the worker checks each domain again, and the certificate issuance budget
    # the on-demand TLS ask endpoint enforces (per domain and overall, per hour).
    dns_resolvers: tuple[str, ...] = ()
    domain_check_interval_s: float = 300.0
    cert_budget_per_domain: int = 3
    cert_budget_per_hour: int = 30
    # The secret in Caddy's ask URL (?token=): only Caddy on the container hosts may ask. None:
    # the ask endpoint refuses everyone (503). Asks per client address and rate-limit window.
    ask_secret: str | None = field(default=None, repr=False)
    rate_limit_ask: int = 300
    # A custom domain claim that is not verified for this long is released (the owner may
    # then claim it); a verified one, this long after its DNS stopped proving it.
    domain_claim_expiry_s: int = 72 * 3600
    # Debugging (and the secrets test): keep each ansible-runner private data dir.
    keep_runner_data: bool = False
    # Ansible strategy of the worker's playbook runs: linear (Ansible's own) or
    # mitogen_linear (Mitogen keeps one Python per host for the whole run).
    ansible_strategy: str = STRATEGIES[0]
    inventory: Path = field(default_factory=lambda: REPO_ROOT / "inventory" / "local")
    playbook_dir: Path = field(default_factory=lambda: REPO_ROOT / "playbooks")
    tiers_file: Path = field(default_factory=lambda: Path(__file__).parent / "data" / "tiers.json")
    # Billing (README "Billing"): a rolling cycle from creation, charged at its start.
    billing_enabled: bool = True
    billing_cycle_s: int = 30 * 86400
    billing_grace_s: int = 3 * 86400
    # The worker's billing pass runs this often (seconds); one worker at a time (a lease).
    billing_interval_s: float = 30.0
    billing_webhook_secret: str | None = None
    # What a new operator's account opens with (the embedded default: enough for make up).
    billing_starting_points: int = 0
    billing_starting_sats: int = 0
    rate_limit_webhook: int = 120
    # Outbound webhooks may go to loopback and private addresses, over http too; off unless set
    # (make up and the end-to-end tests set it), whatever the database. Never to link-local,
    # multicast or unspecified ones.
    webhook_allow_private: bool = False
    # Images of this many newest releases stay on the host for rollbacks; older ones are pruned.
    releases_kept: int = 3
    # GET .../output answers from the latest read of the container's output at once; a read
    # older than this (seconds) is answered as it is while a new one is queued for a worker.
    output_max_age_s: float = 5.0
    # Expensive reads (ratelimit.EXPENSIVE_READS) one operator may have in flight in one API
    # process; one more is 429 at once.
    operator_concurrency: int = 2
    # How long a request may take to arrive (serving.HeadFirstWorker), seconds.
    api_request_timeout_s: float = 10.0
    # Clients GET /metrics answers (no token there).
    metrics_allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1"))
    # Finished jobs and their events are pruned this many days after they finished (0: kept
    # forever), by the worker every retention_interval_s (0: never) and `buddo-deploy prune`.
    retention_days: int = 30
    retention_interval_s: float = 3600.0

    @property
    def playbook_secret_files(self) -> dict[str, str]:
        """Secrets every converge run gets as files: extra var name -> value."""
        token = self.cloudflare_api_token
        return {"cloudflare_dns_api_token_file": token} if token else {}

    @property
    def public_url_suffix(self) -> str:
        return "" if self.public_https_port == 443 else f":{self.public_https_port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def get(name: str, default: str | None = None) -> str | None:
            return env.get(f"BUDDO_{name}", default)

        var_dir = Path(get("VAR_DIR") or REPO_ROOT / "var")
        embedded = get("DATABASE_URL") is None
        database_url = get("DATABASE_URL") or f"sqlite:///{var_dir / 'buddo.db'}"
        _check_numbers(get)
        jwt_secret = get("JWT_SECRET") or _persistent_secret(var_dir / "jwt-secret", make=embedded)
        secret_key = get("SECRET_KEY") or _persistent_secret(var_dir / "secret-key", make=embedded)
        missing = [name for name, value in (("BUDDO_JWT_SECRET", jwt_secret), ("BUDDO_SECRET_KEY", secret_key))
                   if not value]
        if missing:
            raise SettingsError(f"{' and '.join(missing)} not set: with BUDDO_DATABASE_URL set, set "
                                f"{'them' if len(missing) > 1 else 'it'} too (secrets are generated only for "
                                "the embedded default)")
        # Not required (unset: the ask endpoint refuses everyone), so never an error when missing.
        ask_file = var_dir / "ask-secret"
        ask_secret = (_ask_secret(get("ASK_SECRET"), "BUDDO_ASK_SECRET") if get("ASK_SECRET") else _ask_secret(
            _persistent_secret(ask_file, make=embedded, new=lambda: secrets.token_urlsafe(32)), str(ask_file)))
        jwks_url = get("JWT_JWKS_URL") or None
        jwt_algorithms = _jwt_algorithms(get("JWT_ALGORITHMS"), jwks_url)
        # Tokens from an identity provider, or a production database: say whom tokens are for.
        audience, issuer = _expected_claims(get, production=not embedded or jwks_url is not None)
        low, _, high = (get("HOST_PORT_RANGE") or "20000-29999").partition("-")
        kwargs: dict[str, object] = {
            "var_dir": var_dir,
            "database_url": database_url,
            "jwt_secret": jwt_secret,
            "secret_key": secret_key,
            "jwt_algorithms": jwt_algorithms,
            "jwt_jwks_url": jwks_url,
            "jwt_issuer": issuer,
            "jwt_audience": audience,
            "base_domain": get("BASE_DOMAIN") or "localhost",
            "public_https_port": int(get("PUBLIC_HTTPS_PORT") or 8443),
            "allowed_registries": _csv(get("ALLOWED_REGISTRIES") or ",".join(DEFAULT_REGISTRIES)),
            "reserved_subdomains": _csv(get("RESERVED_SUBDOMAINS") or ",".join(DEFAULT_RESERVED)),
            "default_host": get("DEFAULT_HOST") or "container-host-1",
            "instance": get("INSTANCE") or "buddo",
            "host_port_range": (int(low), int(high or low)),
            "max_deployments_per_account": int(get("MAX_DEPLOYMENTS_PER_ACCOUNT") or 20),
            "rate_limits_enabled": _bool(get("RATE_LIMITS_ENABLED") or "true"),
            "rate_limit_read": int(get("RATE_LIMIT_READ") or 30),
            "rate_limit_write": int(get("RATE_LIMIT_WRITE") or 10),
            "rate_limit_window_s": int(get("RATE_LIMIT_WINDOW") or 60),
            "rate_limit_anonymous": int(get("RATE_LIMIT_ANONYMOUS") or 30),
            "trusted_proxies": _csv(get("TRUSTED_PROXIES") or ""),
            "job_timeout_s": int(get("JOB_TIMEOUT") or 600),
            "job_lease_s": int(get("JOB_LEASE") or 20),
            "worker_poll_s": float(get("WORKER_POLL") or 0.05),
            "health_interval_s": float(get("HEALTH_INTERVAL") or 15),
            "health_failures": int(get("HEALTH_FAILURES") or 3),
            "health_max_restarts": int(get("HEALTH_MAX_RESTARTS") or 3),
            "reconcile_interval_s": float(get("RECONCILE_INTERVAL") or 300),
            "keep_runner_data": _bool(get("KEEP_RUNNER_DATA") or "false"),
            "ansible_strategy": get("ANSIBLE_STRATEGY") or STRATEGIES[0],
            "cloudflare_api_token": get("CLOUDFLARE_API_TOKEN") or None,
            "dns_resolvers": _csv(get("DNS_RESOLVERS") or ""),
            "domain_check_interval_s": float(get("DOMAIN_CHECK_INTERVAL") or 300),
            "cert_budget_per_domain": int(get("CERT_BUDGET_PER_DOMAIN") or 3),
            "cert_budget_per_hour": int(get("CERT_BUDGET_PER_HOUR") or 30),
            "ask_secret": ask_secret,
            "rate_limit_ask": int(get("RATE_LIMIT_ASK") or 300),
            "domain_claim_expiry_s": _duration("DOMAIN_CLAIM_EXPIRY", get("DOMAIN_CLAIM_EXPIRY") or "72h"),
            "billing_enabled": _bool(get("BILLING_ENABLED") or "true"),
            "billing_cycle_s": _duration("BILLING_CYCLE", get("BILLING_CYCLE") or "30d"),
            "billing_grace_s": _duration("BILLING_GRACE", get("BILLING_GRACE") or "3d"),
            "billing_interval_s": float(get("BILLING_INTERVAL") or 30),
            "billing_webhook_secret": get("BILLING_WEBHOOK_SECRET") or (
                _persistent_secret(var_dir / "billing-webhook-secret", make=True) if embedded else None),
            "billing_starting_points": int(get("BILLING_STARTING_POINTS") or (5000 if embedded else 0)),
            "billing_starting_sats": int(get("BILLING_STARTING_SATS") or (500000 if embedded else 0)),
            "rate_limit_webhook": int(get("RATE_LIMIT_WEBHOOK") or 120),
            "webhook_allow_private": _bool(get("WEBHOOK_ALLOW_PRIVATE") or "false"),
            "releases_kept": int(get("RELEASES_KEPT") or 3),
            "output_max_age_s": float(get("OUTPUT_MAX_AGE") or 5),
            "operator_concurrency": int(get("OPERATOR_CONCURRENCY") or 2),
            "api_request_timeout_s": api_request_timeout_s(env),
            "metrics_allow": _networks(get("METRICS_ALLOW") or "127.0.0.0/8,::1"),
            "retention_days": int(get("RETENTION_DAYS") or 30),
            "retention_interval_s": float(get("RETENTION_INTERVAL") or 3600),
        }
        if int(kwargs["operator_concurrency"]) < 1:  # type: ignore[call-overload]
            raise SettingsError("BUDDO_OPERATOR_CONCURRENCY must be 1 or more")
        if not 1 <= int(kwargs["releases_kept"]) <= RELEASE_HISTORY:  # type: ignore[call-overload]
            raise SettingsError(f"BUDDO_RELEASES_KEPT must be between 1 and {RELEASE_HISTORY}")
        if kwargs["ansible_strategy"] not in STRATEGIES:
            raise SettingsError(f"BUDDO_ANSIBLE_STRATEGY must be one of {', '.join(STRATEGIES)}, "
                                f"got {kwargs['ansible_strategy']!r}")
        if kwargs["billing_cycle_s"] == 0:
            raise SettingsError("BUDDO_BILLING_CYCLE must be longer than 0 s")
        if kwargs["domain_claim_expiry_s"] == 0:
            raise SettingsError("BUDDO_DOMAIN_CLAIM_EXPIRY must be longer than 0 s")
        for name, variable in (("inventory", "INVENTORY"), ("playbook_dir", "PLAYBOOK_DIR")):
            if get(variable):
                kwargs[name] = Path(str(get(variable)))
        if get("TIERS_FILE"):
            kwargs["tiers_file"] = Path(str(get("TIERS_FILE")))
        return cls(**kwargs)  # type: ignore[arg-type]
