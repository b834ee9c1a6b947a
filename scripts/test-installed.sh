#!/usr/bin/env bash
# Starts the binaries and configs of the built .debs by hand (as root, without systemd;
# scripts/test-packages.sh proves the units under systemd) inside the test network
# namespace, and checks that the packaged configuration works end to end: the agent
# registers with the controller (fluidctl hosts add), a sandbox is created and runs a
# command, an Ansible job runs on it confined as the packaged [ansible] section says
# (bubblewrap, user fluid-ansible), both /metrics move, and the sandbox is destroyed.
# Prints a PASS/FAIL table and exits 1 if anything failed.
#
# Needs: scripts/test-packages.sh first (it leaves the .debs in
# $CARGO_TARGET_DIR/fluid-debs/2); libvirtd in the namespace (source scripts/lib/netns.sh;
# fluid_libvirt_up fluid-test); the golden image (scripts/build-golden-image.sh, cached);
# ansible-core (scripts/install-deps.sh: /opt/fluid-ansible), bubblewrap and the
# fluid-ansible user, as on a controller host.
# Usage: test-installed.sh [directory of the .debs]
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)
die() { echo "test-installed: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "run as root"

if [[ $# -ge 1 ]]; then
  debs=$1
else
  target=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory) ||
    die "cannot find cargo's target directory; pass the directory of the .debs"
  debs=$target/fluid-debs/2
fi
ns=fluid-test
work=/var/tmp/fluid-installed

# --- results (as in test-packages.sh) ----------------------------------------------------
results=()
record() { # status name detail
  local detail=${3//$'\n'/ }
  results+=("$1"$'\t'"$2"$'\t'"${detail:0:150}")
  printf '  %-4s %s  %s\n' "$1" "$2" "${detail:0:150}"
}
# check NAME COMMAND...: PASS when the command exits 0; its output is the detail. It runs in
# this shell (not a subshell), so what it sets (the sandbox id) stays set.
check() {
  local name=$1 rc=0; shift
  "$@" >"$work/check.out" 2>&1 || rc=$?
  if [[ $rc == 0 ]]; then record PASS "$name" "$(cat "$work/check.out")"
  else record FAIL "$name" "$(cat "$work/check.out")"; fi
  return $rc
}
print_table() {
  local pass=0 fail=0 skip=0 r
  printf '\n\033[1m==> summary\033[0m\n'
  printf '%-4s  %-44s  %s\n' RES CHECK DETAIL
  for r in "${results[@]}"; do
    IFS=$'\t' read -r status name detail <<<"$r"
    printf '%-4s  %-44s  %s\n' "$status" "$name" "${detail:0:90}"
    case $status in PASS) pass=$((pass + 1)) ;; FAIL) fail=$((fail + 1)) ;; *) skip=$((skip + 1)) ;; esac
  done
  printf '\n%d passed, %d failed, %d info/skipped\n' "$pass" "$fail" "$skip"
  [[ $fail == 0 ]]
}
# finish: the table, then the exit status (a check that others depend on ends the run).
finish() { print_table; exit $?; }

# --- the packaged files ------------------------------------------------------------------
ls "$debs"/fluid-agent_*.deb "$debs"/fluid-controller_*.deb >/dev/null 2>&1 ||
  die "no fluid-agent/fluid-controller .debs in $debs (run scripts/test-packages.sh first)"
ip netns list | grep -qw "^$ns" || die "no network namespace $ns (source scripts/lib/netns.sh; fluid_libvirt_up $ns)"
rm -rf "$work"
mkdir -p "$work/root" "$work/pki" "$work/agent-state" "$work/controller"
chmod 755 "$work" "$work/agent-state"
for d in "$debs"/*.deb; do echo "extract $(basename "$d")"; dpkg-deb -x "$d" "$work/root"; done
R=$work/root
versions() {
  "$R/usr/bin/fluid-controller" --version && "$R/usr/bin/fluid-agent" --version && "$R/usr/bin/fluidctl" --version
}
check "binaries run (--version)" versions

# The golden image where the packaged agent.toml expects it (as an operator places it).
golden() {
  local img f
  img=$("$repo/scripts/build-golden-image.sh" 2>/dev/null) || return 1
  mkdir -p /var/lib/libvirt/images/fluid/debian-12
  for f in disk.qcow2 vmlinuz initrd.img; do ln -sf "$img/$f" "/var/lib/libvirt/images/fluid/debian-12/$f"; done
  chmod 755 /var/lib/libvirt/images/fluid /var/lib/libvirt/images/fluid/debian-12
  echo "$img -> /var/lib/libvirt/images/fluid/debian-12"
}
check "golden image in the packaged agent.toml's place" golden
pki() {
  "$R/usr/bin/fluid-controller" pki init --dir "$work/pki" >/dev/null &&
    "$R/usr/bin/fluid-controller" pki agent --dir "$work/pki" --name pkg --san 127.0.0.1 >/dev/null &&
    ls "$work/pki" | tr '\n' ' '
}
check "pki init, pki agent" pki

# Only what differs on this machine is overridden (environment, as the units allow).
export FLUID_AGENT_HOST_NAME=pkg FLUID_AGENT_LISTEN=127.0.0.1:7643 FLUID_AGENT_VIRT_TYPE=qemu \
  FLUID_AGENT_STATE_DIR=$work/agent-state FLUID_AGENT_METRICS_LISTEN=127.0.0.1:9564 \
  FLUID_AGENT_TLS__CA_CERT=$work/pki/ca.pem FLUID_AGENT_TLS__CERT=$work/pki/agent-pkg.pem FLUID_AGENT_TLS__KEY=$work/pki/agent-pkg.key
export FLUID_LISTEN=127.0.0.1:18080 FLUID_GRPC_LISTEN=127.0.0.1:18081 FLUID_DATA_DIR=$work/controller \
  FLUID_TLS__CA_CERT=$work/pki/ca.pem FLUID_TLS__CERT=$work/pki/controller.pem FLUID_TLS__KEY=$work/pki/controller.key
agent='' ctl='' id=''
fctl() { ip netns exec $ns env FLUID_URL=http://127.0.0.1:18080 FLUID_TOKEN="${token:-}" "$R/usr/bin/fluidctl" "$@"; }
cleanup() {
  if [[ -n $id && -n $ctl ]]; then fctl sandbox destroy "$id" >/dev/null 2>&1 || true; fi
  [[ -n $agent ]] && kill "$agent" 2>/dev/null
  [[ -n $ctl ]] && kill "$ctl" 2>/dev/null
  ip netns exec $ns nft delete table bridge fluid_pkg 2>/dev/null
  ip netns exec $ns nft delete table inet fluid_pkg 2>/dev/null
  echo "logs: $work/agent.log $work/controller.log"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns exec $ns "$R/usr/bin/fluid-agent" --config "$R/etc/fluid/agent.toml" >"$work/agent.log" 2>&1 &
agent=$!
token=$("$R/usr/bin/fluid-controller" token create --config "$R/etc/fluid/controller.toml" --role admin \
  --name installed-check 2>"$work/token.err")
minted() { [[ $token =~ ^fluid_[^[:space:]]+$ ]] && cat "$work/token.err" || { cat "$work/token.err"; return 1; }; }
check "token create (packaged controller.toml)" minted || finish
ip netns exec $ns "$R/usr/bin/fluid-controller" serve --config "$R/etc/fluid/controller.toml" >"$work/controller.log" 2>&1 &
ctl=$!
serving() {
  local _
  for _ in $(seq 60); do fctl status >/dev/null 2>&1 && break; sleep 0.5; done
  fctl status
}
check "controller serves (fluidctl status)" serving
online() {
  local _
  fctl hosts add pkg 127.0.0.1:7643 || return 1
  for _ in $(seq 60); do fctl hosts list | grep -q ONLINE && break; sleep 1; done
  fctl hosts list | grep -w pkg | grep ONLINE
}
check "agent registered and ONLINE" online || { tail -20 "$work/agent.log"; finish; }

t0=$(date +%s)
created() {
  fctl sandbox create --image debian-12 --agent-id installed-check --wait-for-ip || return 1
  id=$(fctl --json sandbox list | python3 -c 'import json,sys; print(json.load(sys.stdin)["sandboxes"][0]["id"])')
  echo "sandbox $id"
  [[ -n $id ]]
}
check "sandbox created (--wait-for-ip)" created || finish
ran() {
  local out _
  for _ in $(seq 60); do
    out=$(fctl run "$id" -- 'echo hello from $(hostname), $(uname -r)' 2>&1) && break
    sleep 2
  done
  echo "$out; created and ran in $(($(date +%s) - t0)) s"
  grep -q '^hello from' <<<"$out"
}
check "command runs in the sandbox" ran
# The packaged [ansible] section: ansible-playbook confined by bubblewrap as fluid-ansible.
ansible_job() {
  local out
  fctl playbook create installed-check >/dev/null || return 1
  fctl playbook task add installed-check --name hostname --module ansible.builtin.command \
    --params '{"cmd": "hostname"}' >/dev/null || return 1
  out=$(fctl job run installed-check "$id" -w 2>&1)
  local rc=$?
  echo "$out" | grep -E 'ok=|fatal|error|refus|confined' | tail -3
  # A run without bwrap says so in its output ("this run is not confined").
  [[ $rc == 0 ]] && grep -qE 'ok=[1-9][0-9]* .*failed=0' <<<"$out" && ! grep -q 'not confined' <<<"$out"
}
check "Ansible job on the sandbox (bwrap, fluid-ansible)" ansible_job

# metric NAME URL [token]: the first sample of NAME (summed over labels) is above zero.
metric() {
  local name=$1 url=$2 auth=() sum
  [[ -n ${3:-} ]] && auth=(-H "Authorization: Bearer $3")
  sum=$(ip netns exec $ns curl -fsS "${auth[@]}" "$url" |
    awk -v n="$name" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%g", s }')
  echo "$name = ${sum:-none}"
  awk -v s="${sum:-0}" 'BEGIN { exit !(s > 0) }'
}
check "agent /metrics: operations counted" metric fluid_agent_operations_total http://127.0.0.1:9564/metrics
# The controller's /metrics needs a token ([metrics] public = false by default).
check "controller /metrics: create counted" metric fluid_sandbox_create_duration_seconds_count \
  http://127.0.0.1:18080/metrics "$token"
check "controller /metrics: exec counted" metric fluid_execs_total http://127.0.0.1:18080/metrics "$token"
unauth() { # without a token: 401
  local code
  code=$(ip netns exec $ns curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18080/metrics)
  echo "HTTP $code"
  [[ $code == 401 ]]
}
check "controller /metrics without a token: 401" unauth
destroyed() { fctl sandbox destroy "$id" && id=''; }
check "sandbox destroyed" destroyed
finish
