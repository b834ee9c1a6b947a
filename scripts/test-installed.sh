#!/usr/bin/env bash
# Starts the binaries and configs of the built .debs by hand (no systemd here) inside the
# test namespace: the agent registers with the controller (fluidctl hosts add) and a
# sandbox is created and runs a command; both /metrics move. Run scripts/test-packages.sh
# first (it leaves the .debs in $CARGO_TARGET_DIR/fluid-debs/2), and libvirtd in the
# namespace (source scripts/lib/netns.sh; fluid_libvirt_up fluid-test).
# Usage: test-installed.sh [directory of the .debs]
set -euo pipefail
debs=${1:-/var/cache/fluid/cargo-target-deb/fluid-debs/2}
ns=fluid-test
work=/var/tmp/fluid-installed
rm -rf "$work"; mkdir -p "$work/root" "$work/pki" "$work/agent-state" "$work/controller"
chmod 755 "$work" "$work/agent-state"
for d in "$debs"/*.deb; do echo "extract $(basename "$d")"; dpkg-deb -x "$d" "$work/root"; done
R=$work/root
"$R/usr/bin/fluid-controller" --version; "$R/usr/bin/fluid-agent" --version; "$R/usr/bin/fluidctl" --version
# The golden image where the packaged agent.toml expects it (as an operator places it).
img=$(/work/main/scripts/build-golden-image.sh 2>/dev/null)
mkdir -p /var/lib/libvirt/images/fluid/debian-12
for f in disk.qcow2 vmlinuz initrd.img; do ln -sf "$img/$f" /var/lib/libvirt/images/fluid/debian-12/$f; done
chmod 755 /var/lib/libvirt/images/fluid /var/lib/libvirt/images/fluid/debian-12
"$R/usr/bin/fluid-controller" pki init --dir "$work/pki" >/dev/null
"$R/usr/bin/fluid-controller" pki agent --dir "$work/pki" --name pkg --san 127.0.0.1 >/dev/null
ls "$work/pki"
# Only what differs on this machine is overridden (environment, as the units allow).
export FLUID_AGENT_HOST_NAME=pkg FLUID_AGENT_LISTEN=127.0.0.1:7643 FLUID_AGENT_VIRT_TYPE=qemu \
  FLUID_AGENT_STATE_DIR=$work/agent-state FLUID_AGENT_METRICS_LISTEN=127.0.0.1:9564 \
  FLUID_AGENT_TLS__CA_CERT=$work/pki/ca.pem FLUID_AGENT_TLS__CERT=$work/pki/agent-pkg.pem FLUID_AGENT_TLS__KEY=$work/pki/agent-pkg.key
export FLUID_LISTEN=127.0.0.1:18080 FLUID_GRPC_LISTEN=127.0.0.1:18081 FLUID_DATA_DIR=$work/controller \
  FLUID_TLS__CA_CERT=$work/pki/ca.pem FLUID_TLS__CERT=$work/pki/controller.pem FLUID_TLS__KEY=$work/pki/controller.key
ip netns exec $ns "$R/usr/bin/fluid-agent" --config "$R/etc/fluid/agent.toml" >"$work/agent.log" 2>&1 &
agent=$!
token=$("$R/usr/bin/fluid-controller" token create --config "$R/etc/fluid/controller.toml" --role admin --name installed-check)
ip netns exec $ns "$R/usr/bin/fluid-controller" serve --config "$R/etc/fluid/controller.toml" >"$work/controller.log" 2>&1 &
ctl=$!
trap 'kill $agent $ctl 2>/dev/null || true; ip netns exec '$ns' nft delete table bridge fluid_pkg 2>/dev/null; ip netns exec '$ns' nft delete table inet fluid_pkg 2>/dev/null || true' EXIT
export FLUID_URL=http://127.0.0.1:18080 FLUID_TOKEN=$token
fctl() { ip netns exec $ns env FLUID_URL=$FLUID_URL FLUID_TOKEN=$FLUID_TOKEN "$R/usr/bin/fluidctl" "$@"; }
for _ in $(seq 60); do fctl status >/dev/null 2>&1 && break; sleep 0.5; done
fctl hosts add pkg 127.0.0.1:7643 || fctl hosts add --help
for _ in $(seq 60); do fctl hosts list | grep -q ONLINE && break; sleep 1; done
fctl status
t0=$(date +%s)
fctl sandbox create --image debian-12 --agent-id installed-check --wait-for-ip
fctl sandbox list
id=$(fctl --json sandbox list | python3 -c 'import json,sys; print(json.load(sys.stdin)["sandboxes"][0]["id"])')
for _ in $(seq 60); do fctl run "$id" -- 'echo hello from $(hostname), $(uname -r)' && break; sleep 2; done
echo "created and ran in $(( $(date +%s) - t0 )) s"
ip netns exec $ns curl -s 127.0.0.1:9564/metrics | grep -E '^fluid_agent_operations_total' | head -5
# The controller's /metrics needs a token ([metrics] public = false by default).
ip netns exec $ns curl -s -H "Authorization: Bearer $token" 127.0.0.1:18080/metrics | grep -E '^fluid_sandbox_create_duration_seconds_count|^fluid_execs_total' | head -5
fctl sandbox destroy "$id"
