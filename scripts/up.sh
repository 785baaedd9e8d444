#!/usr/bin/env bash
# `make up`: the whole platform on this machine, in the foreground until Ctrl-C.
#   bootstrap (Podman, runc, Caddy) -> local registry + demo image -> migrate ->
#   API (gunicorn) + worker -> print a token and the curl walk-through.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/.venv/bin
export PATH=$BIN:/usr/local/sbin:/usr/sbin:/sbin:$PATH
export ANSIBLE_CONFIG=$ROOT/ansible.cfg
export BUDDO_ALLOWED_REGISTRIES=${BUDDO_ALLOWED_REGISTRIES:-harbor.buddo.xyz:4443/,docker.io/library/,ghcr.io/,127.0.0.1:5000/}
# The walk-through's webhook receivers are on this machine (the platform's default is off).
export BUDDO_WEBHOOK_ALLOW_PRIVATE=${BUDDO_WEBHOOK_ALLOW_PRIVATE:-true}
BIND=${BUDDO_BIND:-127.0.0.1:8000}
API=http://$BIND

echo "==> bootstrap: Podman, runc, Caddy on container-host-1 (this machine)"
ansible-playbook -i inventory/local playbooks/bootstrap.yml
echo "==> local registry on 127.0.0.1:5000 with the demo image"
ansible-playbook -i inventory/local playbooks/local_registry.yml \
    -e local_registry_demo_version=v1 -e local_registry_demo_tag=latest
echo "==> database"
buddo-deploy db upgrade

mkdir -p var/log
pids=()
stop() {
    trap - INT TERM EXIT
    echo; echo "==> stopping API and worker (containers and Caddy keep running; 'make down' stops them)"
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap "stop; exit 0" INT TERM
trap stop EXIT
buddo-deploy serve --bind "$BIND" >>var/log/api.log 2>&1 &
pids+=($!)
buddo-deploy worker >>var/log/worker.log 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
    curl -fs "$API/api/deploy/openapi.json" >/dev/null 2>&1 && break
    sleep 0.2
done

TOKEN=$(buddo-deploy token --operator demo-operator --client-id demo-app)
CA=$ROOT/var/caddy/data/caddy/pki/authorities/local/root.crt
cat <<TXT

Buddo Deploy is up.  API: $API   apps: https://<subdomain>.localhost:8443
Logs: var/log/api.log, var/log/worker.log.  Ctrl-C stops the API and the worker.

export TOKEN=$TOKEN BUDDO_TOKEN=$TOKEN BUDDO_API_URL=$API

With buddo (the operators' CLI; 'buddo login --issuer URL' where an OpenID issuer signs tokens):
.venv/bin/buddo tiers
.venv/bin/buddo apps create my-app --image 127.0.0.1:5000/demo/hello:latest --port 3000 -e GREETING=hi --wait
.venv/bin/buddo output my-app -f          # what it prints, as it prints it (Ctrl-C to stop)
.venv/bin/buddo env set my-app GREETING=hello --wait
.venv/bin/buddo releases my-app; .venv/bin/buddo rollback my-app --wait
.venv/bin/buddo run my-app -- /bin/busybox sh -c 'echo one-off'
.venv/bin/buddo logs my-app; .venv/bin/buddo apps destroy my-app --yes

With curl:
curl -s $API/api/deploy/tiers -H "Authorization: Bearer \$TOKEN"
curl -s -X POST $API/api/deploy/apps -H "Authorization: Bearer \$TOKEN" \\
  -H "Content-Type: application/json" \\
  -d '{"subdomain": "my-app", "image": "127.0.0.1:5000/demo/hello:latest", "tier": "buddo-starter", "port": 3000, "env_vars": {"GREETING": "hi"}}'
curl -s $API/api/deploy/apps/ID/status -H "Authorization: Bearer \$TOKEN"
curl --cacert $CA https://my-app.localhost:8443/
make demo-image VERSION=v2          # push a new version to the same tag
curl -s -X POST $API/api/deploy/apps/ID/restart -H "Authorization: Bearer \$TOKEN"
podman rm -f \$(podman ps -q --filter label=buddo.subdomain=my-app)   # gone: back within ~15 s
curl -s -X POST $API/api/deploy/apps/ID/stop -H "Authorization: Bearer \$TOKEN"
curl -s $API/api/deploy/apps/ID/logs -H "Authorization: Bearer \$TOKEN"
curl -s $API/api/deploy/billing -H "Authorization: Bearer \$TOKEN"   # balances, next charge, ledger
curl -s $API/api/deploy/apps/ID/jobs/JOB_ID -H "Authorization: Bearer \$TOKEN"   # an entry's job_id: its playbook run
curl -s $API/metrics                                                       # Prometheus, from this machine only
.venv/bin/buddo-deploy reconcile --dry-run   # the drift between the database and this host
.venv/bin/buddo-deploy reconcile             # repair it (the worker also does, every 5 min)
curl -s -X DELETE $API/api/deploy/apps/ID -H "Authorization: Bearer \$TOKEN"
TXT
wait -n "${pids[@]}"
echo "a platform process exited; see var/log/" >&2
exit 1
