# shellcheck shell=bash
# Memory templates for the tests' agents (sourced by scripts/test.sh).

# fluid_build_templates AGENT_BIN IMAGE_DIR TEMPLATES_DIR
# Builds (or finds ready) the 1-vCPU, 512 MiB template of the golden image in
# TEMPLATES_DIR with `fluid-agent build-templates`, under TCG. libvirtd must be up.
fluid_build_templates() {
  local bin=$1 image=$2 dir=$3 cfg
  cfg=$(mktemp /tmp/fluid-templates.XXXXXX.toml)
  cat >"$cfg" <<TOML
host_name = "fluid-templates"
virt_type = "qemu"
state_dir = "/var/tmp/fluid-templates"
[tls]
ca_cert = "/unused"
cert = "/unused"
key = "/unused"
[[images]]
name = "debian-12"
path = "$image/disk.qcow2"
kernel = "$image/vmlinuz"
initrd = "$image/initrd.img"
cmdline = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
[templates]
dir = "$dir"
shapes = [{ image = "debian-12", cpus = 1, memory_mb = 512 }]
TOML
  if ! "$bin" --config "$cfg" build-templates; then
    rm -f "$cfg"
    return 1
  fi
  rm -f "$cfg"
}
