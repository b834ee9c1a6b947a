//! A clone's identity, given to a guest restored from a memory template: everything in
//! which two clones of one template must differ, applied before anyone can log in.
//!
//! The agent runs [`CloneIdentity::argv`] through the guest agent (`guest-exec`), so
//! the values travel as positional parameters of `sh -c`, never spliced into the
//! script. The script runs as few programs as it can (each costs a few hundred
//! milliseconds under TCG): `date`, `perl` (the RNG ioctls), `systemctl` (journald's
//! restart, not waited for), `rm`, `ip`, and `dhclient` (which goes to the background
//! at once).

/// Sets the hostname to `$2`: the file, the kernel's, and `127.0.1.1` in /etc/hosts.
macro_rules! set_hostname {
    () => {
        r#"printf '%s\n' "$2" >/etc/hostname
printf '%s' "$2" >/proc/sys/kernel/hostname
hosts=
while IFS= read -r line || [ -n "$line" ]; do
  case $line in
    "127.0.1.1 "* | "127.0.1.1	"*) line="127.0.1.1 $2" ;;
  esac
  hosts="$hosts$line
"
done </etc/hosts
printf '%s' "$hosts" >/etc/hosts
"#
    };
}

/// Applies the identity. Positional parameters: see [`CloneIdentity::argv`].
pub const SCRIPT: &str = concat!(
    r#"set -eu
umask 022
# The clock, stepped to the host's: the template's stopped when it was saved.
date -u -s "@$3" >/dev/null
# The kernel RNG: the host's entropy, credited, and a reseed of the CRNG now, so no two
# clones (nor a clone and its template) share a stream.
perl -e 'open(my $f, ">", "/dev/urandom") or die "urandom: $!";
  my $b = pack("H*", $ARGV[0]);
  ioctl($f, 0x40085203, pack("ii", 8 * length($b), length($b)) . $b) or die "RNDADDENTROPY: $!";
  ioctl($f, 0x5207, 0) or die "RNDRESEEDCRNG: $!"' "$8"
# The sandbox id sshd accepts certificates for, and the user CAs it trusts.
mkdir -p /run/fluid-identity
printf '%s\n' "$1" >/run/fluid-identity/sandbox_id
printf '%s\n' "${11}" >/etc/ssh/fluid_user_ca.pub
printf '%s\n' "$7" >/etc/machine-id
# journald files its journal under the machine-id it read at its start: restarted, it
# writes under the new one, which is where journalctl looks.
systemctl --no-block restart systemd-journald.service 2>/dev/null || true
"#,
    set_hostname!(),
    r#"# SSH host keys: the one the agent generated (and pinned) only.
rm -f /etc/ssh/ssh_host_*
(umask 077 && printf '%s\n' "$9" >/etc/ssh/ssh_host_ed25519_key)
printf '%s\n' "${10}" >/etc/ssh/ssh_host_ed25519_key.pub
# The network: this clone's MAC and reserved address, no DHCP client of the template.
for pidfile in /run/dhclient*.pid; do
  [ -f "$pidfile" ] && read -r pid <"$pidfile" && kill "$pid" 2>/dev/null || true
done
dev=
for d in /sys/class/net/*; do
  [ "${d##*/}" = lo ] || { dev=${d##*/}; break; }
done
[ -n "$dev" ] || { echo "no network interface" >&2; exit 3; }
printf 'nameserver %s\n' "$6" >/etc/resolv.conf
printf 'link set %s down\nlink set %s address %s\naddr flush dev %s\nlink set %s up\naddr add %s dev %s\nroute replace default via %s dev %s\n' \
  "$dev" "$dev" "$4" "$dev" "$dev" "$5" "$dev" "$6" "$dev" | ip -batch -
# A DHCP client, as after a boot (ifupdown's files): it takes the reserved address's
# lease, the same address, and renews it. In the background, with nothing of ours open.
if command -v dhclient >/dev/null; then
  dhclient -4 -nw -pf "/run/dhclient.$dev.pid" -lf "/var/lib/dhcp/dhclient.$dev.leases" "$dev" \
    </dev/null >/dev/null 2>&1 || true
fi
"#
);

/// Gives a warm pool member (already a clone with its own machine-id, host key, MAC
/// and address) the identity of the sandbox that claimed it. Positional parameters:
/// `$1` the sandbox id, `$2` its name (the hostname), `$3` now (Unix seconds: the
/// member waited paused, its clock did not run), `$4` the user CA keys.
pub const REBIND: &str = concat!(
    r#"set -eu
umask 022
date -u -s "@$3" >/dev/null
printf '%s\n' "$1" >/run/fluid-identity/sandbox_id
printf '%s\n' "$4" >/etc/ssh/fluid_user_ca.pub
"#,
    set_hostname!()
);

/// What a claimed pool member is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebind {
    pub sandbox_id: String,
    pub hostname: String,
    /// Seconds since the Unix epoch, now.
    pub now_unix: i64,
    pub user_ca_keys: Vec<String>,
}

impl Rebind {
    /// The command line that applies it, for the login shell sshd runs it with (no
    /// other shell started: each program costs the guest under TCG): the values set as
    /// quoted positional parameters, then [`REBIND`].
    pub fn command(&self) -> String {
        use super::wrapper::quote;
        format!(
            "set -- {} {} {} {}\n{REBIND}",
            quote(&self.sandbox_id),
            quote(&self.hostname),
            self.now_unix,
            quote(&self.user_ca_keys.join("\n")),
        )
    }
}

/// What one clone is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneIdentity {
    pub sandbox_id: String,
    pub hostname: String,
    /// Seconds since the Unix epoch, now.
    pub now_unix: i64,
    /// Lower case, `52:54:00:…`.
    pub mac: String,
    /// The clone's address with the network's prefix, `192.168.122.7/24`.
    pub address: String,
    /// The network's gateway, also its DNS server.
    pub gateway: String,
    /// 32 hex digits.
    pub machine_id: String,
    /// Hex; fresh random bytes from the host.
    pub entropy_hex: String,
    /// OpenSSH private key (ed25519) and its public line.
    pub host_key_private: String,
    pub host_key_public: String,
    pub user_ca_keys: Vec<String>,
}

impl CloneIdentity {
    /// The program and arguments to run in the guest.
    pub fn argv(&self) -> Vec<String> {
        vec![
            "/bin/sh".into(),
            "-c".into(),
            SCRIPT.into(),
            "fluid-identity".into(),
            self.sandbox_id.clone(),
            self.hostname.clone(),
            self.now_unix.to_string(),
            self.mac.clone(),
            self.address.clone(),
            self.gateway.clone(),
            self.machine_id.clone(),
            self.entropy_hex.clone(),
            self.host_key_private.trim_end().to_owned(),
            self.host_key_public.trim_end().to_owned(),
            self.user_ca_keys.join("\n"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_positional_parameters_not_script() {
        let id = CloneIdentity {
            sandbox_id: "SBX-1".into(),
            hostname: "h'; reboot #".into(),
            now_unix: 1,
            mac: "52:54:00:00:00:01".into(),
            address: "10.0.0.2/24".into(),
            gateway: "10.0.0.1".into(),
            machine_id: "0".repeat(32),
            entropy_hex: "00".into(),
            host_key_private: "-----BEGIN-----\nk\n-----END-----\n".into(),
            host_key_public: "ssh-ed25519 AAAA\n".into(),
            user_ca_keys: vec!["ca1".into(), "ca2".into()],
        };
        let argv = id.argv();
        assert_eq!(argv[..4], ["/bin/sh", "-c", SCRIPT, "fluid-identity"]);
        // $1 … $11 in the order the script reads them.
        assert_eq!(argv[4 + 1], "h'; reboot #");
        assert_eq!(argv[4 + 8], "-----BEGIN-----\nk\n-----END-----");
        assert_eq!(argv[4 + 10], "ca1\nca2");
        assert_eq!(argv.len(), 4 + 11);
        assert!(!SCRIPT.contains("reboot"));
    }

    #[test]
    fn a_rebind_quotes_every_value_for_the_shell() {
        let r = Rebind {
            sandbox_id: "SBX-abcdefgh".into(),
            hostname: "web-1".into(),
            now_unix: 1_700_000_000,
            user_ca_keys: vec![
                "ssh-ed25519 AAAA ca'1".into(),
                "ssh-ed25519 BBBB ca2".into(),
            ],
        };
        let cmd = r.command();
        assert!(
            cmd.starts_with(
                "set -- 'SBX-abcdefgh' 'web-1' 1700000000 'ssh-ed25519 AAAA ca'\\''1\nssh-ed25519 BBBB ca2'\nset -eu\n"
            ),
            "{cmd}"
        );
        assert!(cmd.ends_with(REBIND), "{cmd}");
        // The script sets what the claim changes, and the clock.
        for what in [
            "sandbox_id",
            "fluid_user_ca.pub",
            "/etc/hostname",
            "date -u -s",
        ] {
            assert!(REBIND.contains(what), "{what}");
        }
    }
}
