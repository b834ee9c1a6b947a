#!/usr/bin/env bash
# Builds the two Debian packages and proves them, without touching this machine's /etc,
# users or services:
#   1. cargo-deb (installed when missing); `cargo deb` for fluid-agent and fluid-controller
#      (which also ships fluidctl) as <version>-1, and the same binaries again as
#      <version>-2 (the "newer version" of the upgrade test);
#   2. dpkg-deb -I / -c of each, the expected fields and files, lintian (no errors
#      allowed; deploy/debian/lintian/* override what stays, each with its reason);
#   3. in a clean Debian 12 root made by debootstrap (minbase), with /proc mounted and a
#      policy-rc.d that forbids starting anything: dpkg -i both, apt-get install -f, then
#      the user, groups, directories, conffiles, units and their enablement; edit both
#      configs, install the -2 packages, check the edits and state survived; remove (state
#      must stay), purge (user, state, logs, conffiles, statoverride, units must go);
#   4. between upgrade and remove, the same root booted with its own systemd
#      (systemd-nspawn, private network): the boot-time deny before libvirt, the agent's
#      unit running nft, the controller's unit running a confined Ansible job (bwrap),
#      and dpkg's systemctl calls under a running systemd.
# Prints a PASS/FAIL table and exits 1 if anything failed.
#
# Environment:
#   CARGO_TARGET_DIR        cargo's target directory (the .debs go to <it>/fluid-debs/)
#   FLUID_DEB_ROOT_CACHE    where the debootstrap tarball and downloaded .debs are cached
#                           (default /var/cache/fluid/deb-root)
#   FLUID_APT_MIRROR        Debian mirror (default: the first bookworm URI in apt's sources)
#   FLUID_CARGO_DEB_VERSION cargo-deb to install when missing (default 3.8.0)
#   FLUID_KEEP_ROOT=1       keep the test root (its path is printed) instead of deleting it
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { echo "test-packages: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "run as root (debootstrap and chroot)"

# --- results -----------------------------------------------------------------------------
results=()
record() { # status name detail
  local detail=${3//$'\n'/ }
  results+=("$1"$'\t'"$2"$'\t'"${detail:0:150}")
  printf '  %-4s %s  %s\n' "$1" "$2" "${detail:0:150}"
}
# check NAME COMMAND...: PASS when the command exits 0; its output is the detail.
check() {
  local name=$1 output; shift
  if output=$("$@" 2>&1); then record PASS "$name" "$output"; else record FAIL "$name" "$output"; fi
}
# expect GOT WANT: prints GOT, succeeds when equal.
expect() { echo "$1"; [[ "$1" == "$2" ]]; }
print_table() {
  local pass=0 fail=0 skip=0 r
  say "summary"
  printf '%-4s  %-44s  %s\n' RES CHECK DETAIL
  for r in "${results[@]}"; do
    IFS=$'\t' read -r status name detail <<<"$r"
    printf '%-4s  %-44s  %s\n' "$status" "$name" "${detail:0:90}"
    case $status in PASS) pass=$((pass + 1)) ;; FAIL) fail=$((fail + 1)) ;; *) skip=$((skip + 1)) ;; esac
  done
  printf '\n%d passed, %d failed, %d info/skipped\n' "$pass" "$fail" "$skip"
  [[ $fail == 0 ]]
}

# --- 1. build ----------------------------------------------------------------------------
say "tools"
export PATH="$HOME/.cargo/bin:$PATH"
need_apt=()
command -v dpkg-shlibdeps >/dev/null || need_apt+=(dpkg-dev)   # cargo-deb's $auto depends
command -v lintian >/dev/null || need_apt+=(lintian)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v jq >/dev/null || need_apt+=(jq)
command -v systemd-nspawn >/dev/null || need_apt+=(systemd-container)
if [[ ${#need_apt[@]} -gt 0 ]]; then
  echo "installing ${need_apt[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if ! cargo deb --version >/dev/null 2>&1; then
  echo "installing cargo-deb ${FLUID_CARGO_DEB_VERSION:-3.8.0} (a few minutes, once)"
  cargo install cargo-deb --locked --version "${FLUID_CARGO_DEB_VERSION:-3.8.0}"
fi
echo "$(cargo deb --version), $(lintian --version), debootstrap $(dpkg-query -W -f='${Version}' debootstrap)"

target=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
out=$target/fluid-debs
rm -rf "$out"
mkdir -p "$out/1" "$out/2"
version=$(cargo metadata --format-version 1 --no-deps |
  jq -r '.packages[] | select(.name == "fluid-agent") | .version')
v1="$version-1" v2="$version-2"

say "cargo deb (release build; the first one takes several minutes)"
started=$SECONDS
cargo deb --locked -p fluid-agent -o "$out/1/"
cargo deb --locked -p fluid-controller -o "$out/1/"
echo "built in $((SECONDS - started)) s"
# The "newer version": the same binaries, repackaged with a higher Debian revision.
cargo deb --locked --no-build -p fluid-agent --deb-version "$v2" -o "$out/2/"
cargo deb --locked --no-build -p fluid-controller --deb-version "$v2" -o "$out/2/"
agent1=$out/1/fluid-agent_${v1}_amd64.deb
ctl1=$out/1/fluid-controller_${v1}_amd64.deb
agent2=$out/2/fluid-agent_${v2}_amd64.deb
ctl2=$out/2/fluid-controller_${v2}_amd64.deb
for f in "$agent1" "$ctl1" "$agent2" "$ctl2"; do [[ -f $f ]] || die "missing $f"; done
ls -l "$out"/1/*.deb "$out"/2/*.deb

# --- 2. inspect and lint -----------------------------------------------------------------
say "package metadata and contents"
for deb in "$agent1" "$ctl1"; do
  echo "--- dpkg-deb -I $(basename "$deb")"
  dpkg-deb -I "$deb"
  echo "--- dpkg-deb -c $(basename "$deb")"
  dpkg-deb -c "$deb"
done

field() { dpkg-deb -f "$1" "$2"; }
for deb in "$agent1" "$ctl1"; do
  pkg=$(field "$deb" Package)
  record INFO "$pkg size" "$(stat -c %s "$deb") bytes (.deb), Installed-Size $(field "$deb" Installed-Size) KiB"
  check "$pkg: Section admin, Priority optional" \
    expect "$(field "$deb" Section) $(field "$deb" Priority)" "admin optional"
  check "$pkg: Maintainer" expect "$(field "$deb" Maintainer)" "fluid maintainers <maintainers@fluid.dev>"
  check "$pkg: conffiles" expect "$(dpkg-deb --ctrl-tarfile "$deb" | tar -xOf - ./conffiles)" \
    "/etc/fluid/${pkg#fluid-}.toml"
done
# has_deps DEB FIELD NAME...: every NAME is one of FIELD's comma-separated entries
# (ignoring version constraints).
has_deps() {
  local deb=$1 fld=$2 value entries missing=() p; shift 2
  value=$(field "$deb" "$fld")
  entries=$(tr ',' '\n' <<<"$value" | sed -E 's/\([^)]*\)//g; s/^ +//; s/ +$//')
  for p in "$@"; do grep -qxF "$p" <<<"$entries" || missing+=("$p"); done
  echo "$value"
  [[ ${#missing[@]} == 0 ]] || { echo "missing: ${missing[*]}"; return 1; }
}
check "fluid-agent: Depends" has_deps "$agent1" Depends libvirt-daemon-system qemu-utils \
  "qemu-system-x86 | qemu-kvm" nftables openssh-client dnsmasq-base dnsmasq-utils adduser libvirt0 libc6
check "fluid-controller: Depends" has_deps "$ctl1" Depends openssh-client adduser libc6
check "fluid-controller: Suggests" has_deps "$ctl1" Suggests postgresql python3-venv
has_files() { # deb, then paths that must be in it
  local deb=$1 listing missing=(); shift
  listing=$(dpkg-deb -c "$deb" | awk '{print $6}')
  for p in "$@"; do grep -qxF "./$p" <<<"$listing" || missing+=("$p"); done
  [[ ${#missing[@]} == 0 ]] && echo "$# files present" || { echo "missing: ${missing[*]}"; return 1; }
}
check "fluid-agent: files" has_files "$agent1" usr/bin/fluid-agent etc/fluid/agent.toml \
  usr/lib/systemd/system/fluid-agent.service usr/share/doc/fluid-agent/copyright \
  usr/share/doc/fluid-agent/changelog.Debian.gz usr/share/doc/fluid-agent/README.md \
  usr/share/lintian/overrides/fluid-agent usr/lib/systemd/system/fluid-agent-boot-deny.service \
  usr/share/fluid-agent/boot-deny.nft
check "fluid-controller: files" has_files "$ctl1" usr/bin/fluid-controller usr/bin/fluidctl \
  etc/fluid/controller.toml usr/lib/systemd/system/fluid-controller.service \
  usr/share/doc/fluid-controller/copyright usr/share/doc/fluid-controller/changelog.Debian.gz \
  usr/share/doc/fluid-controller/README.md usr/share/doc/fluid-controller/examples/postgres-setup.sql \
  usr/share/doc/fluid-controller/examples/ansible/deploy-agents.yml \
  usr/share/doc/fluid-controller/examples/ansible/roles/fluid_agent/tasks/main.yml \
  usr/share/lintian/overrides/fluid-controller
stripped() { # deb path
  dpkg-deb --fsys-tarfile "$1" | tar -xOf - "./$2" >"$out/probe"
  file -b "$out/probe"
  ! file -b "$out/probe" | grep -q 'not stripped'
}
check "fluid-agent: binary stripped" stripped "$agent1" usr/bin/fluid-agent
check "fluid-controller: binaries stripped" stripped "$ctl1" usr/bin/fluidctl
rm -f "$out/probe"

say "lintian"
for deb in "$agent1" "$ctl1"; do
  pkg=$(field "$deb" Package)
  echo "--- lintian $(basename "$deb")"
  lint=$(lintian --show-overrides "$deb" 2>&1 | grep -v 'running with root privileges' || true)
  echo "${lint:-(no tags)}"
  errors=$(grep -c '^E: ' <<<"$lint" || true)
  warnings=$(grep -c '^W: ' <<<"$lint" || true)
  overridden=$(grep -c '^O: ' <<<"$lint" || true)
  info="$errors errors, $warnings warnings, $overridden overridden"
  if [[ $errors == 0 ]]; then record PASS "$pkg: lintian" "$info"; else record FAIL "$pkg: lintian" "$info"; fi
done

# --- 3. a clean Debian root --------------------------------------------------------------
cache=${FLUID_DEB_ROOT_CACHE:-/var/cache/fluid/deb-root}
mirror=${FLUID_APT_MIRROR:-}
if [[ -z "$mirror" ]]; then
  mirror=$(grep -rhoE '^(URIs:|deb) +[^ ]*debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
    grep -v security | head -n1 | awk '{print $2}' || true)
  mirror=${mirror:-http://deb.debian.org/debian}
fi
# The tarball is keyed by what makes it (not by this whole script, so that changing a
# check does not bootstrap again).
recipe="debootstrap --variant=minbase bookworm $mirror (v1)"
key=$(printf '%s' "$recipe" | sha256sum | cut -c1-16)
tarball=$cache/bookworm-minbase-$key.tar.gz
mkdir -p "$cache/apt-archives/partial"

work=$(mktemp -d /var/tmp/fluid-deb-test.XXXXXX)
root=$work/root
mounts=()
ct_pid='' nspawn_pid=''
# ct_stop: powers the booted root off (part 4), if it runs.
ct_stop() {
  [[ -n $nspawn_pid ]] || return 0
  kill -TERM "$nspawn_pid" 2>/dev/null || true # nspawn powers the container off
  for _ in $(seq 60); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL "$nspawn_pid" 2>/dev/null || true
  wait "$nspawn_pid" 2>/dev/null || true
  nspawn_pid='' ct_pid=''
}
cleanup() {
  local m ok=true
  ct_stop
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
    m=${mounts[i]}
    if mountpoint -q "$m"; then umount "$m" 2>/dev/null || umount -l "$m" || ok=false; fi
  done
  # Delete the root only when nothing is mounted in it any more.
  if [[ ${FLUID_KEEP_ROOT:-} == 1 ]]; then
    echo "test root kept: $root"
  elif $ok && ! grep -q " $work/" /proc/mounts; then
    rm -rf "$work"
  else
    echo "test-packages: something is still mounted under $work; not deleting it" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "clean Debian root"
if [[ ! -f $tarball ]]; then
  echo "debootstrap from $mirror (cached afterwards as $tarball)"
  mkdir -p "$work/boot"
  debootstrap --variant=minbase bookworm "$work/boot" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { tail -30 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
  tar --numeric-owner -C "$work/boot" -czf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$work/boot"
fi
mkdir -p "$root"
tar --numeric-owner -C "$root" -xzf "$tarball"
echo "root: $root (from $(basename "$tarball"))"

mount -t proc proc "$root/proc"; mounts+=("$root/proc")
mount --bind "$cache/apt-archives" "$root/var/cache/apt/archives"; mounts+=("$root/var/cache/apt/archives")
cp /etc/resolv.conf "$root/etc/resolv.conf"
printf '#!/bin/sh\n# test-packages.sh: start nothing in this root\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
mkdir -p "$root/tmp/debs"
cp "$agent1" "$ctl1" "$agent2" "$ctl2" "$root/tmp/debs/"

# A command inside the root, with a clean environment.
in_root() {
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive chroot "$root" "$@"
}
owner_mode() { in_root stat -c '%U:%G %a' "$1" 2>&1; }
status_of() { in_root dpkg-query -W -f='${db:Status-Abbrev}${Version}' "$1" 2>/dev/null | tr -s ' ' || true; }
# none_exist PATH...: succeeds when none of the paths (globs, relative to the root) exist.
none_exist() {
  local left=() p
  for p in "$@"; do
    for f in "$root"$p; do [[ -e $f || -L $f ]] && left+=("${f#"$root"}"); done
  done
  [[ ${#left[@]} == 0 ]] && echo "none of $# left" || { echo "left: ${left[*]}"; return 1; }
}
all_exist() {
  local missing=() p
  for p in "$@"; do [[ -e $root$p ]] || missing+=("$p"); done
  [[ ${#missing[@]} == 0 ]] && echo "all $# there" || { echo "missing: ${missing[*]}"; return 1; }
}

apt_fix() {
  local log=$work/apt-f.log
  in_root apt-get install -f -y -q --no-install-recommends >"$log" 2>&1 || { tail -20 "$log"; return 1; }
  echo "$(grep -c '^Setting up ' "$log") packages set up (no recommends)"
}
user_ok() { # user home
  local e uid home shell
  e=$(in_root getent passwd "$1") || { echo "no user $1"; return 1; }
  echo "$e"
  IFS=: read -r _ _ uid _ _ home shell <<<"$e"
  [[ $uid -lt 1000 && $home == "$2" && $shell == /usr/sbin/nologin ]]
}
groups_ok() { # user, then the supplementary groups it must have (and no others)
  local user=$1 g want
  shift
  in_root getent group "$user" >/dev/null || { echo "no group $user"; return 1; }
  g=$(in_root id -nG "$user")
  echo "$user: $g"
  want=$(printf '%s\n' "$user" "$@" | sort | tr '\n' ' ')
  # shellcheck disable=SC2086 # split the group list on purpose
  [[ $(printf '%s\n' $g | sort | tr '\n' ' ') == "$want" ]]
}
unit_enabled() { # unit [target]: its wants symlink exists and resolves to the packaged unit
  local link target=${2:-multi-user.target}
  link=$(readlink "$root/etc/systemd/system/$target.wants/$1.service") || { echo 'no wants symlink'; return 1; }
  echo "$target.wants/$1.service -> $link"
  [[ $link == /* && -f $root$link && $(in_root readlink -f "$link") == /usr/lib/systemd/system/$1.service ]]
}
binaries_run() {
  local b
  for b in fluid-agent fluid-controller fluidctl; do in_root "$b" --version || return 1; done
}
units_verify() { # it exits 0 on directives it ignores, so any output is a failure
  local output rc=0
  output=$(in_root systemd-analyze verify fluid-agent.service fluid-agent-boot-deny.service \
    fluid-controller.service 2>&1) || rc=$?
  echo "${output:-no complaints}"
  [[ $rc == 0 && -z $output ]]
}
nothing_started() {
  if pgrep -af '^/usr/bin/fluid-(agent|controller)'; then return 1; fi
  echo "no fluid process"
}
dpkg_i_v2() {
  local log=$work/dpkg-v2.log
  in_root dpkg -i "/tmp/debs/$(basename "$agent2")" "/tmp/debs/$(basename "$ctl2")" </dev/null >"$log" 2>&1 ||
    { tail -20 "$log"; return 1; }
  grep -E '^(Preparing|Setting up)' "$log" | tr '\n' ' '
}
purged() {
  local s
  s=$(in_root dpkg-query -W -f='${db:Status-Abbrev}' fluid-agent fluid-controller 2>/dev/null | tr -d ' ' || true)
  echo "dpkg status: '${s:-unknown}'"
  [[ -z $s || $s == unun || $s == pnpn ]]
}
user_gone() {
  local u
  for u in fluid-agent fluid-controller fluid-ansible fluid; do
    if in_root getent passwd "$u" || in_root getent group "$u"; then return 1; fi
  done
  echo "no users, no groups"
}
statoverride_gone() {
  if in_root dpkg-statoverride --list /etc/fluid/controller.toml; then return 1; fi
  echo "none"
}
uid_orphans() { # uid
  local left
  left=$(find "$root" -xdev -uid "$1" 2>/dev/null | head -5)
  [[ -z $left ]] && echo "none" || { echo "left: $left"; return 1; }
}

say "install: dpkg -i, then apt-get install -f"
in_root apt-get update -q
rc=0
in_root dpkg -i "/tmp/debs/$(basename "$agent1")" "/tmp/debs/$(basename "$ctl1")" || rc=$?
record INFO "dpkg -i" "exit $rc (dependencies missing in a minimal root: expected non-zero)"
started=$SECONDS
check "apt-get install -f" apt_fix
echo "apt-get install -f took $((SECONDS - started)) s"
check "both installed" expect "$(status_of fluid-agent), $(status_of fluid-controller)" "ii $v1, ii $v1"

# checks_installed LABEL: the state every installed version must have.
checks_installed() {
  local label=$1 unit
  check "$label: user fluid-controller (system, nologin)" user_ok fluid-controller /var/lib/fluid
  check "$label: user fluid-agent (system, nologin)" user_ok fluid-agent /var/lib/fluid-agent
  check "$label: user fluid-ansible (system, nologin)" user_ok fluid-ansible /nonexistent
  check "$label: fluid-controller in no other group" groups_ok fluid-controller
  check "$label: fluid-ansible in no other group" groups_ok fluid-ansible
  check "$label: fluid-agent in libvirt, kvm" groups_ok fluid-agent kvm libvirt
  check "$label: no shared user fluid" expect "$(in_root getent passwd fluid || echo none)" "none"
  check "$label: /var/lib/fluid" expect "$(owner_mode /var/lib/fluid)" "fluid-controller:fluid-controller 700"
  check "$label: /var/lib/fluid-agent" expect "$(owner_mode /var/lib/fluid-agent)" "fluid-agent:fluid-agent 755"
  check "$label: /var/log/fluid-controller" expect "$(owner_mode /var/log/fluid-controller)" "fluid-controller:fluid-controller 750"
  check "$label: /var/log/fluid-agent" expect "$(owner_mode /var/log/fluid-agent)" "fluid-agent:fluid-agent 750"
  check "$label: /etc/fluid/pki" expect "$(owner_mode /etc/fluid/pki)" "root:root 711"
  check "$label: controller.toml (statoverride)" expect "$(owner_mode /etc/fluid/controller.toml)" "root:fluid-controller 640"
  check "$label: agent.toml" expect "$(owner_mode /etc/fluid/agent.toml)" "root:root 644"
  for unit in fluid-agent fluid-controller; do
    check "$label: $unit.service enabled" unit_enabled "$unit"
  done
  check "$label: fluid-agent-boot-deny.service enabled (sysinit)" \
    unit_enabled fluid-agent-boot-deny sysinit.target
  check "$label: binaries run (--version)" binaries_run
}

say "checks after the first install"
checks_installed "install"
if in_root sh -c 'command -v systemd-analyze' >/dev/null; then
  check "systemd-analyze verify (both units)" units_verify
else
  record SKIP "systemd-analyze verify" "systemd is not installed in the root"
fi
check "nothing was started (policy-rc.d)" nothing_started

say "upgrade to $v2 with edited configs and existing state"
printf '\n# edited by test-packages.sh\n' >>"$root/etc/fluid/agent.toml"
printf '\n# edited by test-packages.sh\n' >>"$root/etc/fluid/controller.toml"
in_root install -o fluid-controller -g fluid-controller -m 0600 /dev/null /var/lib/fluid/fluid.db ||
  record FAIL "upgrade: make a state file" "cannot create /var/lib/fluid/fluid.db"
in_root install -o fluid-agent -g fluid-agent -m 0644 /dev/null /var/lib/fluid-agent/agent.redb ||
  record FAIL "upgrade: make a state file" "cannot create /var/lib/fluid-agent/agent.redb"
check "dpkg -i $v2 (no conffile prompt)" dpkg_i_v2
check "upgraded to $v2" expect "$(status_of fluid-agent), $(status_of fluid-controller)" "ii $v2, ii $v2"
check "upgrade: agent.toml edit kept" grep -c 'edited by test-packages.sh' "$root/etc/fluid/agent.toml"
check "upgrade: controller.toml edit kept" grep -c 'edited by test-packages.sh' "$root/etc/fluid/controller.toml"
check "upgrade: no .dpkg-new/-dist/-old left" none_exist '/etc/fluid/*.dpkg-*'
check "upgrade: state files kept" all_exist /var/lib/fluid/fluid.db /var/lib/fluid-agent/agent.redb
checks_installed "upgrade"

# --- 4. the units under systemd ----------------------------------------------------------
# The same root, booted with its own systemd (systemd-nspawn, private network: nft and
# every listener stay inside it). The boot-time deny must load before libvirt with no
# ordering cycle (a stand-in firewalld.service is enabled: default dependencies, before
# network-pre.target, like the real one); the agent's unit must let nft remove that table
# (what the agent does at start); the controller's unit must run a confined Ansible job
# (bubblewrap under its hardening); dpkg's systemctl calls must pass under systemd.
#
# bwrap mounts a procfs of its own, which the kernel allows in bwrap's user namespace
# only if a procfs in the mount namespace is fully visible (no locked mount over a file
# or a non-empty directory of it). systemd >= 253 (bookworm-backports, trixie) keeps
# nothing but the service's own /proc in a service's mount namespace, so only the unit
# may decide; this root's systemd 252 also keeps an unreachable copy of the whole tree,
# whose /proc lets bwrap through whatever the unit says. Such leftovers are made unfit:
# the procfs mounts that systemd-nspawn leaves (unreachable or covered) in the
# container's namespace (this machine's /proc, the root's /proc of the chroot steps)
# get a bind over their sys/, and the container's /proc keeps nspawn's masks.
# So the job passes only if the unit gives its service a fresh procfs (systemd 252 does
# for ProtectControlGroups=) and masks nothing in it: as on systemd >= 253 with a host's
# /proc (checked by hand with bookworm-backports' 254 for the fix of this unit).
# in_ct COMMAND...: a command inside the booted root, with a clean environment.
in_ct() {
  nsenter -t "$ct_pid" -a env -i PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
}
booted() {
  local state
  [[ -n $ct_pid ]] || { echo "systemd did not start"; tail -5 "$work/nspawn.log"; return 1; }
  state=$(timeout 120 nsenter -t "$ct_pid" -a systemctl is-system-running --wait 2>&1)
  echo "$state"
  if [[ $state != running ]]; then in_ct systemctl --failed --no-legend --plain | head -5; return 1; fi
}
no_ordering_cycle() {
  local log cycles
  log=$(in_ct journalctl -b --no-pager -o cat) || return 1
  cycles=$(grep -iE 'ordering cycle|job .* deleted to break' <<<"$log" || true)
  [[ -z $cycles ]] && echo "none in the $(wc -l <<<"$log") lines of the boot's journal" ||
    { echo "$cycles"; return 1; }
}
boot_deny_ran() {
  local state result drops
  state=$(in_ct systemctl show -p ActiveState --value fluid-agent-boot-deny.service)
  result=$(in_ct systemctl show -p Result --value fluid-agent-boot-deny.service)
  drops=$(in_ct nft list table bridge fluid-boot 2>&1 | grep -c ' drop ') || true
  echo "fluid-agent-boot-deny.service $state ($result); table bridge fluid-boot: $drops drop rules"
  [[ $state == active && $result == success && $drops == 3 ]]
}
# ordered_after_deny UNIT...: systemd orders each UNIT after the boot-time deny.
ordered_after_deny() {
  local u missing=()
  for u in "$@"; do
    in_ct systemctl show -p After --value "$u" | tr ' ' '\n' | grep -qx fluid-agent-boot-deny.service ||
      missing+=("$u")
  done
  [[ ${#missing[@]} == 0 ]] && echo "$* start after it" ||
    { echo "not ordered after it: ${missing[*]}"; return 1; }
}
refuses_manual_start() {
  local out
  if out=$(in_ct systemctl start fluid-agent-boot-deny.service 2>&1); then
    echo "systemctl start was allowed"
    return 1
  fi
  echo "$out"
  grep -q 'refused' <<<"$out"
}
# agent_unit_nft: the agent's unit (its user, capabilities and hardening) with nft as its
# command, as the agent runs it at start: removing the boot-time table. Drop-ins and
# files under /run or /tmp go through /proc/PID/root: those are the container's tmpfs.
agent_unit_nft() {
  local d=/proc/$ct_pid/root/run/systemd/system/fluid-agent.service.d rc=0 type
  mkdir -p "$d"
  printf '[Service]\nType=oneshot\nRestart=no\nExecStart=\nExecStart=/usr/sbin/nft delete table bridge fluid-boot\n' \
    >"$d/zz-test-packages.conf"
  in_ct systemctl daemon-reload
  type=$(in_ct systemctl show -p Type -p User --value fluid-agent.service | tr '\n' ' ')
  in_ct systemctl restart fluid-agent.service || rc=$?
  echo "Type, User: $type; exit $rc"
  in_ct journalctl -u fluid-agent.service -n 2 --no-pager -o cat
  rm -rf "$d"
  in_ct systemctl daemon-reload
  in_ct systemctl stop fluid-agent.service
  [[ $rc == 0 && $type == "oneshot fluid-agent " ]] && ! in_ct nft list table bridge fluid-boot >/dev/null 2>&1
}
# The controller as the package runs it, set up as deploy/README.md says (PKI, the key's
# group), with a production target (so that a --check job runs
# at once) and a stand-in for ansible-playbook that reports where it runs and fails if the
# controller's files are in its reach.
controller_setup() {
  local token
  in_ct fluid-controller pki init --dir /etc/fluid/pki >/dev/null || return 1
  in_ct chgrp fluid-controller /etc/fluid/pki/controller.key
  in_ct chmod 0640 /etc/fluid/pki/controller.key
  # The package made /etc/fluid/pki 0711; `pki init` keeps the traversal the services need.
  [[ $(in_ct stat -c %a /etc/fluid/pki) == 711 ]] || { echo "pki init changed the mode of /etc/fluid/pki"; return 1; }
  cat >"$root/usr/local/bin/fluid-test-ansible-playbook" <<'EOF'
#!/bin/sh
# test-packages.sh: stands in for ansible-playbook inside the Ansible sandbox.
echo "probe: user $(id -un), pid 1 $(cat /proc/1/comm), args $*"
for p in /etc/fluid /var/lib/fluid/fluid.db /var/lib/fluid/ssh_user_ca; do
  if [ -e "$p" ]; then echo "probe: $p is in reach"; exit 3; fi
done
echo "probe: confined"
EOF
  chmod 0755 "$root/usr/local/bin/fluid-test-ansible-playbook"
  printf 'FLUID_ANSIBLE__ANSIBLE_PLAYBOOK=/usr/local/bin/fluid-test-ansible-playbook\n' \
    >"$root/etc/default/fluid-controller"
  in_ct install -o root -g fluid-controller -m 0640 /dev/null /etc/fluid/pkg-target.key
  cp -p "$root/etc/fluid/controller.toml" "$work/controller.toml.before"
  printf '\n[[ansible.targets]]\nname = "pkg-target"\nhosts = ["192.0.2.1"]\nprivate_key = "/etc/fluid/pkg-target.key"\n' \
    >>"$root/etc/fluid/controller.toml"
  # As deploy/README.md says: run as fluid-controller, so that SQLite's files stay its own.
  token=$(in_ct runuser -u fluid-controller -- fluid-controller token create \
    --config /etc/fluid/controller.toml --role admin --name test-packages) || return 1
  printf '%s' "$token" >"$work/token" # for the checks below (each runs in a subshell)
  in_ct systemctl restart fluid-controller.service || return 1
  for _ in $(seq 60); do in_ct env FLUID_TOKEN="$token" fluidctl status >/dev/null 2>&1 && break; sleep 0.5; done
  echo "fluid-controller.service $(in_ct systemctl show -p ActiveState --value fluid-controller.service)"
  in_ct env FLUID_TOKEN="$token" fluidctl status | head -n 3
}
plain_journal() { # no terminal colour codes in the service's log lines
  local log
  log=$(in_ct journalctl -u fluid-controller.service -b --no-pager -o cat) || return 1
  if grep -q $'\e\\[' <<<"$log"; then
    echo "ANSI escapes: $(grep -c $'\e\\[' <<<"$log") lines"
    return 1
  fi
  echo "$(wc -l <<<"$log") lines, none with escape codes"
  grep -q 'INFO fluid_controller: fluid-controller listening' <<<"$log"
}
ansible_confined() {
  local out rc=0 token
  token=$(cat "$work/token") || return 1
  in_ct env FLUID_TOKEN="$token" fluidctl playbook create pkg-probe --no-become >/dev/null || return 1
  in_ct env FLUID_TOKEN="$token" fluidctl playbook task add pkg-probe --name ping \
    --module ansible.builtin.ping >/dev/null || return 1
  out=$(in_ct env FLUID_TOKEN="$token" fluidctl job run pkg-probe pkg-target --check -w 2>&1) || rc=$?
  grep -E '^probe:|bwrap|error|fail' <<<"$out" | cut -c1-80 | head -n 4
  [[ $rc == 0 ]] && grep -qx 'probe: user fluid-ansible, pid 1 bwrap, args .*' <<<"$out" &&
    grep -qx 'probe: confined' <<<"$out"
}
# dpkg -i of the installed version again (an upgrade to itself: try-restart, enable) with
# systemd running and policy-rc.d out of the way: no systemctl call may fail.
dpkg_under_systemd() {
  local out rc=0
  cp "$agent2" "$ctl2" "/proc/$ct_pid/root/tmp/"
  mv "$root/usr/sbin/policy-rc.d" "$work/policy-rc.d"
  out=$(in_ct dpkg -i "/tmp/$(basename "$agent2")" "/tmp/$(basename "$ctl2")" </dev/null 2>&1) || rc=$?
  mv "$work/policy-rc.d" "$root/usr/sbin/policy-rc.d"
  grep -iE 'refused|fail|error|warning' <<<"$out" || echo "dpkg exit $rc, no complaints"
  [[ $rc == 0 ]] && ! grep -qiE 'refused|fail|error|warning' <<<"$out" &&
    [[ $(in_ct systemctl show -p ActiveState --value fluid-controller.service) == active ]]
}
# What the test added goes again, so that remove and purge see only what the packages
# and the services made.
controller_teardown() {
  in_ct systemctl stop fluid-controller.service || true
  rm -f "$root/usr/local/bin/fluid-test-ansible-playbook" "$root/etc/default/fluid-controller" \
    "$root/etc/fluid/pkg-target.key" "$work/token" "$root"/etc/fluid/pki/*
  if [[ -f $work/controller.toml.before ]]; then cp -p "$work/controller.toml.before" "$root/etc/fluid/controller.toml"; fi
}

say "the units under systemd (systemd-nspawn)"
if [[ ! -x $root/lib/systemd/systemd ]]; then
  in_root apt-get install -y -q --no-install-recommends systemd >"$work/apt-systemd.log" 2>&1 ||
    record FAIL "systemd in the root" "$(tail -3 "$work/apt-systemd.log")"
  record INFO "systemd in the root" "installed for this part (the packages did not pull it in)"
fi
# A stand-in for firewalld.service: default dependencies, ordered before network-pre.target.
cat >"$root/etc/systemd/system/firewalld.service" <<'EOF'
[Unit]
Description=test-packages.sh: stands in for firewalld (its ordering only)
Before=network-pre.target
Wants=network-pre.target
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/firewalld.service "$root/etc/systemd/system/multi-user.target.wants/firewalld.service"
# In a mount namespace of its own: every procfs mounted here (this machine's /proc, the
# root's /proc of the chroot steps) gets a bind over its sys/ first (see above).
unshare -m --propagation private sh -c '
  for m in $(sed -n "s/^[^ ]* [^ ]* [^ ]* [^ ]* \([^ ]*\) .* - proc .*/\1/p" /proc/self/mountinfo); do
    mount --bind "$m/sys" "$m/sys" || exit 1
  done
  exec systemd-nspawn -q -D "$0" -b -M "$1" --private-network --register=no --keep-unit --console=passive' \
  "$root" "fluid-pkg-$$" >"$work/nspawn.log" 2>&1 &
nspawn_pid=$!
for _ in $(seq 60); do
  ct_pid=$(pgrep -P "$nspawn_pid" -x systemd | head -n1 || true)
  [[ -n $ct_pid ]] && break
  sleep 0.5
done
check "boot: systemd is running" booted
if [[ ${results[-1]%%$'\t'*} == PASS ]]; then
  check "boot: no ordering cycle (firewalld enabled)" no_ordering_cycle
  check "boot: fluid-agent-boot-deny ran, table loaded" boot_deny_ran
  check "boot: libvirt ordered after the boot-time deny" ordered_after_deny libvirtd.service \
    libvirt-guests.service virtqemud.service fluid-agent.service
  check "boot-deny refuses systemctl start" refuses_manual_start
  check "agent unit: nft removes the boot-time table" agent_unit_nft
  check "controller unit: starts (PKI per deploy/README)" controller_setup
  check "controller unit: plain log lines in the journal" plain_journal
  check "controller unit: Ansible job confined (bwrap)" ansible_confined
  check "dpkg -i $v2 under systemd (systemctl calls)" dpkg_under_systemd
  controller_teardown
fi
ct_stop
rm -f "$root/etc/systemd/system/firewalld.service" "$root/etc/systemd/system/multi-user.target.wants/firewalld.service"

say "remove (not purge): nothing of the operator's may go"
check "dpkg -r both" in_root dpkg -r fluid-agent fluid-controller
check "removed, config kept" expect "$(status_of fluid-agent), $(status_of fluid-controller)" "rc $v2, rc $v2"
check "remove: binaries gone" none_exist /usr/bin/fluid-agent /usr/bin/fluid-controller /usr/bin/fluidctl
check "remove: user fluid-controller kept" user_ok fluid-controller /var/lib/fluid
check "remove: user fluid-agent kept" user_ok fluid-agent /var/lib/fluid-agent
check "remove: user fluid-ansible kept" user_ok fluid-ansible /nonexistent
check "remove: state, logs, configs kept" all_exist /var/lib/fluid/fluid.db \
  /var/lib/fluid-agent/agent.redb /var/log/fluid-controller /var/log/fluid-agent \
  /etc/fluid/agent.toml /etc/fluid/controller.toml

say "purge: user, state, logs and conffiles go"
ctl_uid=$(in_root getent passwd fluid-controller | cut -d: -f3 || true)
agent_uid=$(in_root getent passwd fluid-agent | cut -d: -f3 || true)
ansible_uid=$(in_root getent passwd fluid-ansible | cut -d: -f3 || true)
check "dpkg --purge both" in_root dpkg --purge fluid-agent fluid-controller
check "purged" purged
check "purge: users and groups gone" user_gone
check "purge: directories and conffiles gone" none_exist /var/lib/fluid /var/lib/fluid-agent \
  /var/log/fluid-controller /var/log/fluid-agent /etc/fluid/agent.toml /etc/fluid/controller.toml /etc/fluid
check "purge: statoverride gone" statoverride_gone
check "purge: units, wants links, masks gone" none_exist '/usr/lib/systemd/system/fluid-*' \
  '/etc/systemd/system/*/fluid-*' '/etc/systemd/system/fluid-*'
for u in "controller:$ctl_uid" "agent:$agent_uid" "ansible:$ansible_uid"; do
  if [[ -n ${u#*:} ]]; then
    check "purge: no file owned by the old fluid-${u%%:*} uid ${u#*:}" uid_orphans "${u#*:}"
  else
    record FAIL "purge: no file owned by the old fluid-${u%%:*} uid" "the user did not exist before the purge"
  fi
done

print_table
