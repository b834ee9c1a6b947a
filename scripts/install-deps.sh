#!/usr/bin/env bash
# Installs the Debian 12 packages fluid needs to build and to run sandboxes.
# Idempotent: a machine that has everything is left alone.
set -euo pipefail

packages=(
  libvirt-daemon-system libvirt-dev qemu-system-x86 dnsmasq-base dnsmasq-utils
  nftables debootstrap protobuf-compiler e2fsprogs openssh-client pkg-config
  iproute2 curl jq sqlite3 postgresql dpkg-dev python3-venv bubblewrap
)

missing=()
for p in "${packages[@]}"; do
  [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || missing+=("$p")
done
# Debian's qemu-system-x86 7.2 needs bookworm's qemu-utils; a backported 10.x
# qemu-utils blocks the install (docs/BUILD-HOSTS.md), so bookworm's is named explicitly.
qemu_utils_ok=false
if [[ $(qemu-img --version 2>/dev/null) == *"version 7."* ]]; then qemu_utils_ok=true; fi

# ansible-core from PyPI in its own venv (Debian's pip refuses system installs), for
# the controller's playbook verification and jobs.
ansible_venv=${FLUID_ANSIBLE_VENV:-/opt/fluid-ansible}
install_ansible() {
  if ! "$ansible_venv/bin/ansible-playbook" --version >/dev/null 2>&1; then
    echo "install-deps: ansible-core into $ansible_venv" >&2
    /usr/bin/python3 -m venv "$ansible_venv"
    "$ansible_venv/bin/pip" install -q --disable-pip-version-check 'ansible-core>=2.17,<2.20'
  fi
}

# The unprivileged user the controller's confined ansible-playbook runs become
# ([ansible] sandbox_user; the fluid-controller package creates it too).
ansible_user() {
  if ! getent passwd fluid-ansible >/dev/null; then
    echo "install-deps: system user fluid-ansible" >&2
    adduser --system --quiet --group --home /nonexistent --no-create-home \
      --shell /usr/sbin/nologin --gecos "fluid Ansible runs" fluid-ansible
  fi
}

if [[ ${#missing[@]} -eq 0 && $qemu_utils_ok == true ]]; then
  install_ansible
  ansible_user
  echo "install-deps: all packages present" >&2
  exit 0
fi

echo "install-deps: installing ${missing[*]} qemu-utils" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --allow-downgrades \
  "${missing[@]}" qemu-utils/bookworm qemu-block-extra/bookworm qemu-system-x86 >/dev/null
install_ansible
ansible_user
echo "install-deps: done ($(qemu-img --version | head -n1))" >&2
