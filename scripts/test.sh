#!/usr/bin/env bash
# Runs every test of the workspace on a Debian 12 machine, as root:
#   1. installs the packages, builds (or reuses) the golden image,
#   2. starts PostgreSQL and libvirtd (inside a network namespace, docs/BUILD-HOSTS.md),
#   3. fmt + clippy, unit tests (SQLite and PostgreSQL stores),
#   4. integration tests with real VMs under TCG, run inside that namespace.
# Environment: FLUID_NETNS (default fluid-test), CARGO_TARGET_DIR (cargo's default).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
# shellcheck source=lib/netns.sh
source scripts/lib/netns.sh
# shellcheck source=lib/templates.sh
source scripts/lib/templates.sh

step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

step "packages"
./scripts/install-deps.sh

step "golden image"
FLUID_GOLDEN_IMAGE_DIR=$(./scripts/build-golden-image.sh)
export FLUID_GOLDEN_IMAGE_DIR

step "local apt mirror (packages the review-loop test installs)"
FLUID_APT_MIRROR_DIR=$(./scripts/build-apt-mirror.sh nginx)
export FLUID_APT_MIRROR_DIR

step "postgresql"
FLUID_TEST_DATABASE_URL=$(fluid_postgres_up)
export FLUID_TEST_DATABASE_URL
echo "$FLUID_TEST_DATABASE_URL"

step "libvirtd in a network namespace"
fluid_libvirt_up "${FLUID_NETNS:-fluid-test}"
echo "namespace: $FLUID_NETNS"

step "format and lints"
cargo fmt --all -- --check
# The controller's top-level modules import each other without cycles (ARCHITECTURE.md).
python3 scripts/module-cycles.py controller/src >/dev/null || python3 scripts/module-cycles.py controller/src
cargo clippy --locked --workspace --all-targets -- -D warnings

step "build"
cargo build --locked --workspace --all-targets
FLUID_BIN_DIR=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/debug
export FLUID_BIN_DIR

step "memory template of the tests' sandboxes (fluid-agent build-templates)"
# Every test's agent restores its sandboxes from this template (1 vCPU, 512 MiB) in
# seconds instead of cold-booting them; it is kept in the cache while the golden image
# and QEMU stay the same ("ready"), else rebuilt here (about a minute under TCG).
fluid_build_templates "$FLUID_BIN_DIR/fluid-agent" "$FLUID_GOLDEN_IMAGE_DIR" /var/cache/fluid/templates

# Every test step's output is kept, so the summary at the end can say what ran, by kind.
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
# Tests that lack a prerequisite (PostgreSQL, ansible, libvirt, a golden image) fail
# instead of skipping (fluid_prereq): a green run proves that every test ran.
export FLUID_REQUIRE_ALL=1

step "unit tests, and the agent's tests against real libvirt and nftables (inside $FLUID_NETNS)"
# Inside libvirtd's namespace: the agent's real-VM tests (host-agent/tests) release
# DHCP leases on its bridge. Everything else there uses loopback and PostgreSQL's
# unix socket, which work from any namespace.
# --no-fail-fast, and the integration step runs even when this one failed: one run
# names every failing test; the script's status is decided at the end.
failed=()
ip netns exec "$FLUID_NETNS" env PATH="$PATH" FLUID_TEST_IMAGE_DIR="$FLUID_GOLDEN_IMAGE_DIR" \
  cargo test --locked --no-fail-fast --workspace --exclude integration-tests 2>&1 | tee "$logs/unit.log" ||
  failed+=(unit)

step "integration tests (real libvirt, TCG, inside $FLUID_NETNS)"
# The test binaries of integration-tests as the workspace build made them (`cargo test -p
# integration-tests` unifies the dependencies' features for that one package and compiles
# much of the workspace again). They start fluid-controller and fluid-agent from the same
# target dir. Each binary's tests run one at a time; FLUID_TEST_LANES binaries (default
# 2) run at once, each with its own stack, agents, address reservations, nftables tables
# and simulated internet, as agents sharing a host do. Much of their time is spent
# waiting on guests (boots, Ansible over SSH, probes that must time out), so two lanes
# on two cores finish well before one. The longest binaries go first; a binary's output
# is printed whole when it ends. `hostile` runs alone, after the others: its egress test
# loads the package's boot-time deny, which darkens every sandbox's tap on the host
# while it stands. `scheduling` too: its exact placements follow its hosts' heartbeats
# (1 s, offline after 3 missed), which a loaded machine can delay.
cargo test --locked --workspace --no-run --message-format=json |
  jq -r 'select(.reason == "compiler-artifact" and .executable != null and .profile.test
    and (.package_id | test("/integration-tests#"))) | "\(.target.src_path)\t\(.executable)"' |
  sort >"$logs/integration-bins"
[[ -s "$logs/integration-bins" ]] || failed+=(integration-bins)
# Longest first (as measured on CI), then the rest in name order; the exclusive ones
# (alone, at the end) apart.
longest=(review_loop network lifecycle)
exclusive=(hostile scheduling)
bins_named() {
  local name
  for name in "$@"; do grep -P "/tests/$name(/main)?\.rs\t" "$logs/integration-bins" || true; done
}
ordered() {
  bins_named "${longest[@]}"
  grep -vP "/tests/($(IFS='|'; echo "${longest[*]}|${exclusive[*]}"))(/main)?\.rs\t" "$logs/integration-bins" || true
}
run_binary() {
  local src=$1 bin=$2 log started=$SECONDS status=0
  log=$(mktemp -p "$logs" bin.XXXX)
  echo "     Running ${src#"$root"/integration-tests/} ($bin)" >"$log"
  (cd integration-tests && ip netns exec "$FLUID_NETNS" env PATH="$PATH" "$bin" --test-threads=1 </dev/null) >>"$log" 2>&1 ||
    status=$?
  if ((status)); then echo "integration test binary failed: $bin" >>"$logs/integration-failed"; fi
  echo "     ${src#"$root"/integration-tests/}: $((SECONDS - started)) s, exit $status" >>"$log"
  flock "$logs/print.lock" cat "$log"
}
lanes=${FLUID_TEST_LANES:-2}
(
  while IFS=$'\t' read -r src bin; do
    while (($(jobs -rp | wc -l) >= lanes)); do wait -n || true; done
    run_binary "$src" "$bin" &
  done < <(ordered)
  wait
  while IFS=$'\t' read -r src bin; do run_binary "$src" "$bin"; done < <(bins_named "${exclusive[@]}")
) 2>&1 | tee "$logs/integration.log"
if [[ -s "$logs/integration-failed" ]]; then
  cat "$logs/integration-failed" >&2
  failed+=(integration)
fi
step "control-plane load smoke (simulated hosts, SQLite and PostgreSQL)"
# The load harness's small run (docs/PERFORMANCE.md has the full one): the simulated
# hosts, the harness and the controller's paths under concurrent sessions keep working.
for store in sqlite postgres; do
  "$FLUID_BIN_DIR/loadtest" --smoke --store "$store" 2>&1 | tee -a "$logs/loadtest.log" ||
    failed+=("loadtest-$store")
done

step "summary"
./scripts/lib/test-summary.sh "$logs/unit.log" "$logs/integration.log" || failed+=(summary)
if ((${#failed[@]})); then
  echo "FAILED steps: ${failed[*]}" >&2
  exit 1
fi
