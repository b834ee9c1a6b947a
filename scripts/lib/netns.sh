# Sourced by the scripts: runs libvirtd (and so the VM bridge, dnsmasq and the VMs'
# traffic) inside a network namespace, as docs/BUILD-HOSTS.md requires on the build machines.
#
# fluid_libvirt_up NS: make sure libvirtd runs inside namespace NS (created if needed)
# with the `default` network active; sets FLUID_NETNS to the namespace libvirtd is in.
# If libvirtd already runs in another namespace, that one is used.

fluid_libvirt_up() {
  local ns=$1 pid cur
  pid=$(pgrep -x libvirtd | head -n1 || true)
  if [[ -n "$pid" ]]; then
    cur=$(ip netns identify "$pid" 2>/dev/null || true)
    if [[ -z "$cur" ]]; then
      echo "libvirtd (pid $pid) runs in the root network namespace; stop it (pkill -x libvirtd) so it can be started inside a namespace" >&2
      return 1
    fi
    ns=$cur
  else
    grep -qw "^$ns" <<<"$(ip netns list)" || ip netns add "$ns"
    ip netns exec "$ns" ip link set lo up
    mkdir -p /var/log/libvirt /run/libvirt /var/lib/libvirt/dnsmasq
    pgrep -x virtlogd >/dev/null || virtlogd -d
    ip netns exec "$ns" libvirtd -d
  fi
  for _ in $(seq 1 50); do
    virsh -c qemu:///system version >/dev/null 2>&1 && break
    sleep 0.2
  done
  local info
  info=$(virsh -c qemu:///system net-info default 2>/dev/null || true)
  if ! grep -q 'Active: *yes' <<<"$info"; then
    virsh -c qemu:///system net-start default >/dev/null
  fi
  export FLUID_NETNS=$ns
}

# fluid_veth_up NS HOST_IP NS_IP: a veth pair between the root namespace (HOST_IP/24 on
# fluid0) and NS (NS_IP/24), so a controller outside can reach an agent inside.
fluid_veth_up() {
  local ns=$1 host_ip=$2 ns_ip=$3
  # A pair left from an earlier run whose peer is in another (or a deleted) namespace
  # is replaced.
  if ip link show fluid0 >/dev/null 2>&1 && ! ip netns exec "$ns" ip link show fluid0-ns >/dev/null 2>&1; then
    ip link del fluid0
  fi
  if ! ip link show fluid0 >/dev/null 2>&1; then
    ip link add fluid0 type veth peer name fluid0-ns
    ip link set fluid0-ns netns "$ns"
    ip addr add "$host_ip/24" dev fluid0
    ip link set fluid0 up
    ip netns exec "$ns" ip addr add "$ns_ip/24" dev fluid0-ns
    ip netns exec "$ns" ip link set fluid0-ns up
  fi
}

# fluid_postgres_up: starts the local PostgreSQL 15 cluster and makes a database
# `fluid_test` owned by role root (peer authentication over the unix socket, which
# works from any network namespace). Prints the URL.
fluid_postgres_up() {
  local cluster
  cluster=$(pg_lsclusters -h 2>/dev/null | awk 'NR==1{print $1" "$2}')
  if [[ -z "$cluster" ]]; then
    pg_createcluster 15 main >/dev/null 2>&1
    cluster="15 main"
  fi
  # shellcheck disable=SC2086
  pg_ctlcluster $cluster start >/dev/null 2>&1 || true
  for _ in $(seq 1 50); do
    su postgres -c "psql -Atqc 'select 1'" >/dev/null 2>&1 && break
    sleep 0.2
  done
  [[ $(su postgres -c "psql -Atqc \"select 1 from pg_roles where rolname='root'\"") == 1 ]] ||
    su postgres -c "psql -qc 'create role root login superuser'" >/dev/null
  [[ $(su postgres -c "psql -Atqc \"select 1 from pg_database where datname='fluid_test'\"") == 1 ]] ||
    su postgres -c "psql -qc 'create database fluid_test owner root'" >/dev/null
  echo "postgres://root@localhost/fluid_test?host=/var/run/postgresql"
}
