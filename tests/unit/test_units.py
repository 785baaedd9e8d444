"""Pure functions: settings parsing, encryption at rest, !unsafe extra vars, image references."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from buddo_deploy.crypto import decrypt_env, encrypt_env
from buddo_deploy.runner import _summarise, unsafe_json
from buddo_deploy.schemas import IMAGE_PATH_PATTERN
from buddo_deploy.settings import Settings, SettingsError


def test_settings_from_env(tmp_path: Path) -> None:
    settings = Settings.from_env({
        "BUDDO_VAR_DIR": str(tmp_path), "BUDDO_JWT_SECRET": "j", "BUDDO_SECRET_KEY": "k",
        "BUDDO_DATABASE_URL": "postgresql://u:p@h/db", "BUDDO_ALLOWED_REGISTRIES": "a/, b/ ,",
        "BUDDO_HOST_PORT_RANGE": "100-200", "BUDDO_PUBLIC_HTTPS_PORT": "443", "BUDDO_RATE_LIMITS_ENABLED": "no",
        "BUDDO_RATE_LIMIT_ANONYMOUS": "7", "BUDDO_TRUSTED_PROXIES": "10.0.0.1, 10.0.0.2",
        "BUDDO_JWT_AUDIENCE": "buddo-api", "BUDDO_JWT_ISSUER": "https://id.example",
    })
    assert (settings.jwt_audience, settings.jwt_issuer) == ("buddo-api", "https://id.example")
    assert settings.rate_limit_anonymous == 7 and settings.trusted_proxies == ("10.0.0.1", "10.0.0.2")
    assert settings.allowed_registries == ("a/", "b/")
    assert settings.host_port_range == (100, 200)
    assert settings.public_url_suffix == ""
    assert settings.rate_limits_enabled is False
    assert settings.playbook_secret_files == {}
    token = Settings.from_env({"BUDDO_VAR_DIR": str(tmp_path), "BUDDO_CLOUDFLARE_API_TOKEN": "cf-t"})
    assert token.playbook_secret_files == {"cloudflare_dns_api_token_file": "cf-t"} and "cf-t" not in repr(token)


def test_ansible_strategy_is_one_the_runner_knows(tmp_path: Path) -> None:
    base = {"BUDDO_VAR_DIR": str(tmp_path)}
    assert Settings.from_env(base).ansible_strategy == "linear"
    assert Settings.from_env(base | {"BUDDO_ANSIBLE_STRATEGY": "mitogen_linear"}).ansible_strategy == "mitogen_linear"
    for bad in ("free", "mitogen", "linear "):
        with pytest.raises(SettingsError, match="BUDDO_ANSIBLE_STRATEGY"):
            Settings.from_env(base | {"BUDDO_ANSIBLE_STRATEGY": bad})


def test_embedded_default_makes_its_secrets_once(tmp_path: Path) -> None:
    first = Settings.from_env({"BUDDO_VAR_DIR": str(tmp_path)})
    again = Settings.from_env({"BUDDO_VAR_DIR": str(tmp_path)})
    assert first.jwt_secret == again.jwt_secret and first.secret_key == again.secret_key
    assert (tmp_path / "jwt-secret").stat().st_mode & 0o777 == 0o600
    assert first.database_url == f"sqlite:///{tmp_path / 'buddo.db'}"


def test_webhooks_to_private_addresses_are_off_unless_set(tmp_path: Path) -> None:
    """The embedded default (SQLite) included: a platform there may be a production one."""
    base = {"BUDDO_VAR_DIR": str(tmp_path)}
    assert Settings.from_env(base).webhook_allow_private is False
    assert Settings.from_env(base | {"BUDDO_WEBHOOK_ALLOW_PRIVATE": "true"}).webhook_allow_private is True


def test_production_without_secrets_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="BUDDO_JWT_SECRET and BUDDO_SECRET_KEY not set"):
        Settings.from_env({"BUDDO_VAR_DIR": str(tmp_path), "BUDDO_DATABASE_URL": "postgresql://u@h/db"})


PRODUCTION = {"BUDDO_JWT_SECRET": "j", "BUDDO_SECRET_KEY": "k", "BUDDO_DATABASE_URL": "postgresql://u@h/db"}


@pytest.mark.parametrize(("env", "missing"), [
    (PRODUCTION, "BUDDO_JWT_AUDIENCE and BUDDO_JWT_ISSUER not set"),
    (PRODUCTION | {"BUDDO_JWT_AUDIENCE": "buddo-api"}, "BUDDO_JWT_ISSUER not set"),
    (PRODUCTION | {"BUDDO_JWT_ISSUER": "https://id.example", "BUDDO_JWT_AUDIENCE": " "}, "BUDDO_JWT_AUDIENCE not set"),
    # Tokens from an identity provider: even on the embedded SQLite, say whom they are for.
    ({"BUDDO_JWT_JWKS_URL": "https://id.example/jwks.json"}, "BUDDO_JWT_AUDIENCE and BUDDO_JWT_ISSUER not set"),
], ids=["database", "no-issuer", "blank-audience", "jwks"])
def test_production_must_say_whom_tokens_are_for(tmp_path: Path, env: dict[str, str], missing: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"BUDDO_VAR_DIR": str(tmp_path)} | env)
    message = str(caught.value)
    assert message.startswith(missing) and "'none'" in message and "\n" not in message


def test_none_says_explicitly_that_a_claim_is_not_checked(tmp_path: Path) -> None:
    settings = Settings.from_env({"BUDDO_VAR_DIR": str(tmp_path), **PRODUCTION, "BUDDO_JWT_AUDIENCE": "none",
                                  "BUDDO_JWT_ISSUER": "None"})
    assert (settings.jwt_audience, settings.jwt_issuer) == (None, None)
    embedded = Settings.from_env({"BUDDO_VAR_DIR": str(tmp_path), "BUDDO_JWT_ISSUER": "none"})
    assert (embedded.jwt_audience, embedded.jwt_issuer) == ("buddo-deploy", None)


@pytest.mark.parametrize(("env", "expected"), [
    ({}, ("HS256",)),
    ({"BUDDO_JWT_ALGORITHMS": "HS256,HS512"}, ("HS256", "HS512")),
    ({"BUDDO_JWT_JWKS_URL": "https://id.example/jwks.json"}, ("RS256",)),
    ({"BUDDO_JWT_JWKS_URL": "http://127.0.0.1:9/jwks", "BUDDO_JWT_ALGORITHMS": "RS256, ES256"}, ("RS256", "ES256")),
    ({"BUDDO_JWT_ALGORITHMS": "RS256"}, "RS256 cannot be used with BUDDO_JWT_SECRET"),
    ({"BUDDO_JWT_ALGORITHMS": "none"}, "none cannot be used"),
    ({"BUDDO_JWT_ALGORITHMS": ","}, "nothing cannot be used"),
    ({"BUDDO_JWT_JWKS_URL": "https://id.example/jwks.json", "BUDDO_JWT_ALGORITHMS": "RS256,HS256"},
     "HS256 cannot be used with BUDDO_JWT_JWKS_URL"),
    ({"BUDDO_JWT_JWKS_URL": "file:///etc/passwd"}, "BUDDO_JWT_JWKS_URL must be an https://"),
], ids=["default", "hmac", "jwks-default", "jwks", "rs256-with-secret", "none", "empty", "hs256-with-jwks",
        "jwks-file"])
def test_jwt_algorithms_fit_the_key(tmp_path: Path, env: dict[str, str], expected: object) -> None:
    base = {"BUDDO_VAR_DIR": str(tmp_path), "BUDDO_JWT_AUDIENCE": "a", "BUDDO_JWT_ISSUER": "i"}
    if isinstance(expected, tuple):
        assert Settings.from_env(base | env).jwt_algorithms == expected
        return
    with pytest.raises(SettingsError, match=re.escape(str(expected))):
        Settings.from_env(base | env)


def test_env_encryption_round_trip() -> None:
    token = encrypt_env("any passphrase", {"A": "1", "B": "secret"})
    assert "secret" not in token
    assert decrypt_env("any passphrase", token) == {"A": "1", "B": "secret"}
    with pytest.raises(RuntimeError, match="cannot be decrypted"):
        decrypt_env("another passphrase", token)


def test_unsafe_json_marks_every_string_value_and_no_key_as_ansible_reads_it() -> None:
    from ansible._internal._datatag._tags import TrustedAsTemplate
    from ansible.parsing.dataloader import DataLoader

    data = {"a": "{{ x }}", "n": 3, "nested": {"k": "v", "list": ["{{ y }}", 1, None]}, "none": None, "t": True}
    assert json.loads(unsafe_json(data)) == {
        "a": {"__ansible_unsafe": "{{ x }}"}, "n": 3, "nested": {"k": {"__ansible_unsafe": "v"}, "list": [
            {"__ansible_unsafe": "{{ y }}"}, 1, None]}, "none": None, "t": True}
    # As ansible-playbook reads `-e @file` (a trusted source): the values come back as they were, none a template.
    loaded = DataLoader().load(TrustedAsTemplate().tag(unsafe_json(data)))
    assert loaded == data
    values = [loaded["a"], loaded["nested"]["k"], loaded["nested"]["list"][0]]
    assert not any(TrustedAsTemplate.is_tagged_on(value) for value in values)
    # The same document written plainly would be: this is what the wrapping prevents.
    assert TrustedAsTemplate.is_tagged_on(DataLoader().load(TrustedAsTemplate().tag(json.dumps(data)))["a"])


@pytest.mark.parametrize("ref", ["nginx", "nginx:1.25", "operators/my-app:latest", "a/b/c@sha256:" + "a" * 64,
                                 "my_app__x/y-z:v1.2-rc_3"])
def test_valid_image_paths(ref: str) -> None:
    assert re.fullmatch(IMAGE_PATH_PATTERN, ref)


@pytest.mark.parametrize("ref", ["", "Nginx", "a//b", "a:b:c", "-a", "a/../b", "a:tag with space", "a@sha256:xyz",
                                 "nginx\n", "nginx:1\n"])
def test_invalid_image_paths(ref: str) -> None:
    assert not re.fullmatch(IMAGE_PATH_PATTERN, ref)


def test_inventory_host_labels(tmp_path: Path) -> None:
    from buddo_deploy.inventory import host_labels

    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all.yml").write_text("not_a_host: {hosts: {ignored: {}}}\n")
    (tmp_path / "hosts.yml").write_text(textwrap.dedent("""\
        all:
          children:
            container_hosts:
              hosts:
                Container-Host-2: {ansible_host: edge-7.example.net}
                db-1:
                  ansible_host: 10.0.0.5
                  secret: !vault |
                    $ANSIBLE_VAULT;1.1;AES256
                    61
        controllers:
          hosts:
            ctl-1.example.org:
        """))
    assert host_labels(tmp_path) == ("container-host-2", "ctl-1", "db-1", "edge-7")
    assert host_labels(tmp_path / "missing") == ()
    (tmp_path / "more").write_text(textwrap.dedent("""\
        # an INI inventory beside the YAML one
        loose-1
        [container_hosts]
        ini-host-3 ansible_host=box-4.example.net ansible_user=deploy
        [container_hosts:vars]
        ansible_user=deploy
        [all:children]
        container_hosts
        """))
    for ignored in ("notes.txt", ".hidden", "more~"):
        (tmp_path / ignored).write_text("not-a-host\n")
    assert host_labels(tmp_path) == ("box-4", "container-host-2", "ctl-1", "db-1", "edge-7", "ini-host-3", "loose-1")
    assert host_labels(tmp_path / "more") == ("box-4", "ini-host-3", "loose-1")
    repo = Path(__file__).resolve().parents[2]
    assert host_labels(repo / "inventory" / "local") == ("container-host-1",)
    assert set(host_labels(repo / "inventory" / "production")) >= {"container-host-1", "controller-1"}


@pytest.mark.parametrize("slug", ["Gold", "gold\n", "-gold", ""])
def test_a_tier_file_slug_is_one_the_api_accepts(tmp_path: Path, slug: str) -> None:
    import json

    from buddo_deploy.services.tiers import load_tier_file

    repo = Path(__file__).resolve().parents[2]
    tiers = json.loads((repo / "api" / "buddo_deploy" / "data" / "tiers.json").read_text())
    assert load_tier_file(repo / "api" / "buddo_deploy" / "data" / "tiers.json") == tiers
    tiers[0]["slug"] = slug
    (tmp_path / "tiers.json").write_text(json.dumps(tiers))
    with pytest.raises(ValueError, match="tier slug"):
        load_tier_file(tmp_path / "tiers.json")


@pytest.mark.parametrize("ssh_says", [
    # A host the inventory's known_hosts does not list.
    "Failed to connect to the host via ssh: No ED25519 host key is known for [127.0.0.1]:2222 and you have "
    "requested strict checking.\r\nHost key verification failed.",
    # A host that answers with another key than the pinned one.
    "Failed to connect to the host via ssh: @@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\r\n"
    "Offending ED25519 key in /etc/buddo/known_hosts:1\r\nHost key verification failed.",
], ids=["unknown", "changed"])
def test_an_unknown_or_changed_host_key_is_said_plainly(ssh_says: str) -> None:
    summary = _summarise({"event": "runner_on_unreachable", "event_data": {
        "host": "container-host-2", "task": "Converge the deployments of this host", "res": {"msg": ssh_says}}})
    assert summary is not None and summary.status == "unreachable"
    assert summary.message is not None and summary.message.startswith(
        "container-host-2: its SSH host key is unknown or changed (not the one pinned in the inventory's "
        "known_hosts): not connected.")
