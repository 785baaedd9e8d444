# Buddo Deploy. `make up` runs the platform locally; `make test` installs what it needs and tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):/usr/local/sbin:/usr/sbin:/sbin:$(PATH)

.PHONY: venv lint fuzz-api test test-api postgres up down demo-image bootstrap bench-api bench-follow bench-deploy bench-burst bench-reconcile bench-billing bench-scale bench-userns clean sshd

$(BIN)/activate: pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null \
		&& command -v curl >/dev/null \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv curl)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/activate

venv: $(BIN)/activate

lint: venv
	$(BIN)/ruff check api tests bench collections
	$(BIN)/mypy
	ANSIBLE_CONFIG=$(CURDIR)/ansible.cfg $(BIN)/ansible-lint

postgres:
	@scripts/test-postgres.sh >/dev/null

# schemathesis against a gunicorn server from this checkout (scripts/fuzz-api.sh).
fuzz-api: venv
	PYTHON=$(BIN)/python scripts/fuzz-api.sh

# pytest (API on SQLite and PostgreSQL, runner, engine, end to end), then molecule.
# bootstrap installs Podman, runc and Caddy from Debian's packages on a fresh machine;
# local_registry installs Debian's docker-registry and serves 127.0.0.1:5000; Debian's
# pebble is the ACME CA of the custom-domain end-to-end test; tmux is the terminal `buddo`'s
# screen test reads.
test: venv postgres lint fuzz-api bootstrap sshd
	ANSIBLE_CONFIG=$(CURDIR)/ansible.cfg $(BIN)/ansible-playbook -i inventory/local playbooks/local_registry.yml
	@command -v pebble >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pebble)
	@command -v tmux >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux)
	BUDDO_TEST_POSTGRES_URL=postgresql://buddo:buddo@127.0.0.1:5432/buddo_test $(BIN)/pytest -q tests
	scripts/engine-molecule.sh

test-api: venv postgres
	$(BIN)/pytest -q tests/api tests/unit tests/integration

# The e2e test of a second container host reaches it over real SSH (an sshd it starts on
# loopback); the worker's playbook runs use ssh (openssh-client) for every remote host.
# RUNLEVEL=1 keeps the package from starting a system sshd on port 22.
sshd:
	@test -x /usr/sbin/sshd -a -x /usr/bin/ssh || (apt-get update -qq \
		&& RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client)

bootstrap: venv
	ANSIBLE_CONFIG=$(CURDIR)/ansible.cfg $(BIN)/ansible-playbook -i inventory/local playbooks/bootstrap.yml

up: venv
	scripts/up.sh

VERSION ?= v2
demo-image: venv
	ANSIBLE_CONFIG=$(CURDIR)/ansible.cfg $(BIN)/ansible-playbook -i inventory/local playbooks/local_registry.yml \
		-e local_registry_demo_version=$(VERSION) -e local_registry_demo_tag=latest

down:
	-podman ps -aq --filter label=buddo.managed_by=buddo-deploy | xargs -r podman rm -f
	-caddy stop --address 127.0.0.1:2019
	-pkill -f '^/usr/bin/docker-registry serve $(CURDIR)/var/registry/'

bench-api: venv
	@command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	$(BIN)/python bench/api.py

bench-deploy: venv
	$(BIN)/python bench/deploy.py

bench-follow: venv bootstrap
	$(BIN)/python bench/follow.py

bench-burst: venv
	$(BIN)/python bench/burst.py

bench-reconcile: venv
	$(BIN)/python bench/reconcile.py

bench-scale: venv postgres
	BUDDO_TEST_POSTGRES_URL=postgresql://buddo:buddo@127.0.0.1:5432/buddo_test $(BIN)/python bench/scale.py

bench-billing: venv postgres
	BUDDO_TEST_POSTGRES_URL=postgresql://buddo:buddo@127.0.0.1:5432/buddo_test $(BIN)/python bench/billing.py

bench-userns: venv bootstrap
	$(BIN)/python bench/userns.py

clean:
	rm -rf var/ $(VENV) *.egg-info api/*.egg-info
