#!/usr/bin/env bash
# One command from a fresh Debian 12 machine (as root) to a running fluid:
#   packages → workspace build → golden image → fleet PKI → a local host-agent and a
#   controller (SQLite, the embedded default) → a sandbox VM (state and IP printed) → a
#   command run in it.
# Both services keep running afterwards; the API URL is printed at the end.
#
# libvirtd, its bridge and the VMs run inside the network namespace $FLUID_NETNS
# (default "fluid"; docs/BUILD-HOSTS.md). The agent runs there too and the controller reaches it
# over a veth pair (10.231.0.1 ↔ 10.231.0.2). The controller listens on 127.0.0.1:8080.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
# shellcheck source=lib/netns.sh
source scripts/lib/netns.sh

ns=${FLUID_NETNS:-fluid}
etc=${FLUID_ETC:-/etc/fluid}
logs=/var/log/fluid
api=${FLUID_URL:-http://127.0.0.1:8080}
agent_ip=10.231.0.2
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

say "installing packages"
./scripts/install-deps.sh

say "building the workspace (first build takes a few minutes)"
cargo build --locked --bins
bin=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/debug

say "golden image"
image=$(./scripts/build-golden-image.sh)

say "libvirtd inside network namespace '$ns'"
fluid_libvirt_up "$ns"
ns=$FLUID_NETNS
fluid_veth_up "$ns" 10.231.0.1 "$agent_ip"

say "fleet PKI in $etc/pki"
mkdir -p "$etc" "$logs" /var/lib/fluid-agent
# The controller's state (SQLite with token hashes and the audit trail, the SSH user CA)
# and the PKI are root's alone; the controller itself also creates its data_dir 0700 and
# fluid.db 0600, and `pki init` its directory 0700 with keys 0600.
install -d -m 0700 /var/lib/fluid
chmod 0700 /var/lib/fluid
chmod 0750 "$logs"
chmod 755 /var/lib/fluid-agent
if [[ ! -f $etc/pki/ca.key ]]; then
  "$bin/fluid-controller" pki init --dir "$etc/pki"
fi
if [[ ! -f $etc/pki/agent-local.pem ]]; then
  "$bin/fluid-controller" pki agent --dir "$etc/pki" --name local --san "$agent_ip" --san localhost --san 127.0.0.1
fi

(umask 077; cat >"$etc/agent.toml") <<TOML
# Written by scripts/quickstart.sh
host_name = "local"
listen = "$agent_ip:7443"
virt_type = "qemu"   # TCG: nested KVM on build machines hangs guest kernels (docs/BUILD-HOSTS.md)
network = "default"
state_dir = "/var/lib/fluid-agent"

[tls]
ca_cert = "$etc/pki/ca.pem"
cert = "$etc/pki/agent-local.pem"
key = "$etc/pki/agent-local.key"

$(sed -n '/^\[\[images\]\]/,$p' "$image/image.toml")

# Fast start: sandboxes of this shape are restored from a memory template in seconds.
[templates]
shapes = [{ image = "debian-12", cpus = 1, memory_mb = 512 }]
TOML

(umask 077; cat >"$etc/controller.toml") <<TOML
# Written by scripts/quickstart.sh
listen = "${api#http://}"
data_dir = "/var/lib/fluid"

[tls]
ca_cert = "$etc/pki/ca.pem"
cert = "$etc/pki/controller.pem"
key = "$etc/pki/controller.key"

[[hosts]]
name = "local"
address = "$agent_ip:7443"
TOML

restart() { # name, then the command
  local name=$1; shift
  local pidfile=/run/fluid-$name.pid
  if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill "$(cat "$pidfile")"; sleep 1
  fi
  nohup "$@" >>"$logs/$name.log" 2>&1 &
  echo $! >"$pidfile"
}

say "memory template of debian-12 (1 vCPU, 512 MiB): built once, about a minute under TCG"
"$bin/fluid-agent" --config "$etc/agent.toml" build-templates

say "starting fluid-agent (in $ns) and fluid-controller"
# Not under a restrictive umask: qemu (libvirt-qemu) must read the agent's overlays.
restart agent ip netns exec "$ns" "$bin/fluid-agent" --config "$etc/agent.toml"
# umask 077: whatever the controller writes without an explicit mode stays root's.
umask 077
restart controller "$bin/fluid-controller" serve --config "$etc/controller.toml"

# Every API call needs a token; the admin token lives in $etc/admin.token (0600). A
# token that no longer works (a wiped database) is replaced.
token_file=$etc/admin.token
for _ in $(seq 1 100); do curl -fs "$api/v1/health" >/dev/null && break; sleep 0.3; done
if [[ ! -s $token_file ]] || ! "$bin/fluidctl" --url "$api" --token "$(cat "$token_file")" whoami >/dev/null 2>&1; then
  say "creating an admin API token in $token_file"
  (umask 077; "$bin/fluid-controller" token create --config "$etc/controller.toml" \
    --role admin --name "quickstart-admin-$(date +%s)" >"$token_file")
fi
export FLUID_TOKEN
FLUID_TOKEN=$(cat "$token_file")
fluidctl() { "$bin/fluidctl" --url "$api" "$@"; }
for _ in $(seq 1 100); do fluidctl status >/dev/null 2>&1 && break; sleep 0.3; done
for _ in $(seq 1 100); do
  fluidctl --json hosts list 2>/dev/null | jq -e '.hosts[] | select(.name=="local" and .state=="ONLINE")' >/dev/null && break
  sleep 0.3
done
fluidctl hosts list

say "creating a sandbox from debian-12 (restored from its memory template in seconds; a cold boot takes ~35 s under TCG)"
sbx=$(fluidctl --json sandbox create --image debian-12 --agent-id quickstart --wait-for-ip | jq -r .sandbox.id)
fluidctl sandbox get "$sbx"

say "running a command in $sbx"
# sshd comes up a few seconds after the DHCP lease.
for i in $(seq 1 30); do
  if fluidctl run "$sbx" -- 'echo "hello from $(hostname), kernel $(uname -r)"' 2>/tmp/fluid-quickstart-run.err; then
    break
  fi
  [[ $i == 30 ]] && { cat /tmp/fluid-quickstart-run.err >&2; exit 1; }
  sleep 2
done

cat <<EOF

fluid is running.
  API:        $api   (OpenAPI: $api/openapi.json)
  sandbox:    $sbx
  token:      export FLUID_TOKEN=\$(cat $token_file)   (admin; make others with
              $bin/fluid-controller token create --config $etc/controller.toml --role agent --name NAME --agent-id ID)
  CLI:        $bin/fluidctl --url $api sandbox list
              $bin/fluidctl --url $api run $sbx -- uname -a
              $bin/fluidctl --url $api attach $sbx
  logs:       $logs/controller.log, $logs/agent.log
  configs:    $etc/controller.toml, $etc/agent.toml
  VM network: inside namespace '$ns' (ip netns exec $ns ssh root@<ip>)
EOF
