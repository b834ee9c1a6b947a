#!/usr/bin/env bash
# Builds the Debian 12 golden image that sandboxes are cloned from.
#
# Output: a directory holding disk.qcow2 (ext4 root, no partition table), vmlinuz and
# initrd.img for libvirt direct kernel boot, and image.toml (the agent's image entry).
# The result is cached outside the clone, keyed by this script's hash, so CI and
# quickstart only pay for debootstrap once per change of this file.
#
# Usage: build-golden-image.sh [--print-dir]
#   FLUID_IMAGE_CACHE  cache root (default /var/cache/fluid/images)
#   FLUID_APT_MIRROR   Debian mirror (default: the first bookworm URI in apt's sources)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${FLUID_IMAGE_CACHE:-/var/cache/fluid/images}
key=$(sha256sum "$here/build-golden-image.sh" | cut -c1-16)
out="$cache_root/debian-12-$key"

if [[ -f "$out/disk.qcow2" && -f "$out/vmlinuz" && -f "$out/initrd.img" ]]; then
  echo "golden image cached: $out" >&2
  echo "$out"
  exit 0
fi

for tool in debootstrap mkfs.ext4 qemu-img; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/install-deps.sh" >&2; exit 1; }
done

mirror=${FLUID_APT_MIRROR:-}
if [[ -z "$mirror" ]]; then
  mirror=$(grep -rhoE '^(URIs:|deb) +[^ ]*debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | grep -v security | head -n1 | awk '{print $2}' || true)
  mirror=${mirror:-http://deb.debian.org/debian}
fi

work=$(mktemp -d /var/tmp/fluid-image.XXXXXX)
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
root="$work/root"

echo "debootstrap from $mirror into $root" >&2
debootstrap --variant=minbase \
  --include=systemd-sysv,udev,dbus,openssh-server,linux-image-cloud-amd64,ifupdown,isc-dhcp-client,iproute2,netbase,sudo,qemu-guest-agent,python3,python3-apt,procps,less,dmidecode \
  bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || { tail -30 "$work/debootstrap.log" >&2; exit 1; }

# --- configuration inside the image -------------------------------------------------
echo "fluid-golden" >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 fluid-golden\n' >"$root/etc/hosts"
printf '/dev/vda / ext4 defaults,errors=remount-ro 0 1\n' >"$root/etc/fstab"
cat >"$root/etc/network/interfaces" <<'NET'
auto lo
iface lo inet loopback

allow-hotplug eth0
iface eth0 inet dhcp
NET
# Every clone must get its own machine-id (DHCP client id, journal) and SSH host keys.
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root"/etc/ssh/ssh_host_*
cat >"$root/etc/systemd/system/fluid-ssh-hostkeys.service" <<'UNIT'
[Unit]
Description=Generate fresh SSH host keys for this sandbox
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/fluid-ssh-hostkeys.service \
  "$root/etc/systemd/system/multi-user.target.wants/fluid-ssh-hostkeys.service"
cat >"$root/etc/ssh/sshd_config.d/fluid.conf" <<'SSHD'
# Managed by fluid: short-lived certificates from the controller's user CA only.
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UseDNS no
TrustedUserCAKeys /etc/ssh/fluid_user_ca.pub
RevokedKeys /etc/ssh/fluid_revoked_keys
AllowTcpForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTunnel no
# A certificate opens only the sandbox it names: principal sbx:<sandbox id>:<user>,
# for this boot's sandbox id (fluid-ssh-principals; a bare user name is not enough).
AuthorizedPrincipalsCommand /usr/sbin/fluid-ssh-principals %u
AuthorizedPrincipalsCommandUser nobody
SSHD
# The one principal this sandbox accepts for a user: sbx:<id>:<user>. The id comes
# from /run (tmpfs), written at every boot by fluid-identity from SMBIOS, so a fork or
# a clone never keeps its source's; no id, no certificate login (fails closed).
cat >"$root/usr/sbin/fluid-ssh-principals" <<'PRINC'
#!/bin/sh
id=$(cat /run/fluid-identity/sandbox_id 2>/dev/null) || exit 0
case $id in SBX-*[!a-z0-9]* | SBX- | '') exit 0 ;; SBX-*) ;; *) exit 0 ;; esac
printf 'sbx:%s:%s\n' "$id" "$1"
PRINC
chmod 755 "$root/usr/sbin/fluid-ssh-principals"
# Commands run as channels of a few multiplexed SSH connections: allow many sessions
# per connection (sshd's default is 10; the agent opens another connection when sshd
# refuses a channel anyway).
cat >"$root/etc/ssh/sshd_config.d/fluid-exec.conf" <<'SSHD'
MaxSessions 64
SSHD
: >"$root/etc/ssh/fluid_user_ca.pub"
: >"$root/etc/ssh/fluid_revoked_keys"
# Fresh identity at every boot: the host-agent passes the sandbox's hostname, its id and
# the SSH user CA keys it must trust as SMBIOS OEM strings ("fluid:hostname=…",
# "fluid:sandbox_id=…", "fluid:ssh_user_ca=…"), readable before the network is up.
cat >"$root/usr/local/sbin/fluid-identity" <<'IDENT'
#!/bin/sh
# Applies the identity fluid gave this sandbox (SMBIOS type 11 OEM strings).
set -eu
strings=$(dmidecode -q -t 11 2>/dev/null | sed -n 's/^[[:space:]]*String [0-9]*: //p')
host=$(printf '%s\n' "$strings" | sed -n 's/^fluid:hostname=//p' | head -n1)
# This boot's sandbox id, for sshd's principals (fluid-ssh-principals), first of all.
sbx=$(printf '%s\n' "$strings" | sed -n 's/^fluid:sandbox_id=//p' | head -n1)
mkdir -p /run/fluid-identity
chmod 755 /run/fluid-identity
rm -f /run/fluid-identity/sandbox_id
case $sbx in
  SBX-*[!a-z0-9]* | SBX- | '') ;;
  SBX-*) printf '%s\n' "$sbx" >/run/fluid-identity/sandbox_id.new
         chmod 644 /run/fluid-identity/sandbox_id.new
         mv /run/fluid-identity/sandbox_id.new /run/fluid-identity/sandbox_id ;;
esac
cas=$(printf '%s\n' "$strings" | sed -n 's/^fluid:ssh_user_ca=//p')
if [ -n "$host" ]; then
  printf '%s\n' "$host" >/etc/hostname
  hostname "$host"
  sed -i "s/^127\.0\.1\.1 .*/127.0.1.1 $host/" /etc/hosts
fi
if [ -n "$cas" ]; then
  umask 022
  printf '%s\n' "$cas" >/etc/ssh/fluid_user_ca.pub.new
  mv /etc/ssh/fluid_user_ca.pub.new /etc/ssh/fluid_user_ca.pub
fi
IDENT
chmod 755 "$root/usr/local/sbin/fluid-identity"
cat >"$root/etc/systemd/system/fluid-identity.service" <<'UNIT'
[Unit]
Description=Apply the sandbox identity given by fluid (hostname, SSH user CA)
DefaultDependencies=no
After=local-fs.target
Before=network-pre.target ssh.service fluid-ssh-hostkeys.service
Wants=network-pre.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/fluid-identity

[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/fluid-identity.service \
  "$root/etc/systemd/system/multi-user.target.wants/fluid-identity.service"
# python3 and python3-apt are what Ansible needs on a target (its apt module would
# otherwise install python3-apt itself, changing the very state it reproduces).
# Root has no password; access is by key or certificate only.
chroot "$root" passwd -l root >/dev/null
# Serial console for `virsh console` and boot logs.
ln -sf /lib/systemd/system/serial-getty@.service \
  "$root/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service"
# Keep the image small.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

# --- disk --------------------------------------------------------------------------
mkdir -p "$work/out"
cp "$(readlink -f "$root/vmlinuz")" "$work/out/vmlinuz"
cp "$(readlink -f "$root/initrd.img")" "$work/out/initrd.img"
truncate -s 4G "$work/disk.raw"
mkfs.ext4 -q -F -L fluid-root -d "$root" "$work/disk.raw"
qemu-img convert -f raw -O qcow2 "$work/disk.raw" "$work/out/disk.qcow2"
cat >"$work/out/image.toml" <<TOML
[[images]]
name = "debian-12"
path = "$out/disk.qcow2"
kernel = "$out/vmlinuz"
initrd = "$out/initrd.img"
cmdline = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
TOML
chmod 644 "$work/out"/*

mkdir -p "$cache_root"
chmod 755 "$cache_root" "$(dirname "$cache_root")"
rm -rf "$out"
mv "$work/out" "$out"
# Images of older versions of this script are no longer used.
find "$cache_root" -maxdepth 1 -name 'debian-12-*' ! -path "$out" -exec rm -rf {} +
chmod 755 "$out"
echo "golden image built: $out" >&2
echo "$out"
