//! The access scripts the controller sends as an Exec's command: SSH revocation and
//! authorized keys. Values travel as environment variables or on standard input.

/// Replaces the sandbox's revoked-keys file (sshd's `RevokedKeys`, re-read at every
/// authentication) with the keys on standard input, through a temporary file and a
/// rename.
pub const REVOKE_SH: &str = r#"set -e
t=$(mktemp /etc/ssh/.fluid_revoked_keys.XXXXXX)
trap 'rm -f "$t"' EXIT
cat >"$t"
chmod 0644 "$t"
mv -f -- "$t" /etc/ssh/fluid_revoked_keys
trap - EXIT"#;

/// Appends `FLUID_KEY` to `FLUID_USER`'s `~/.ssh/authorized_keys` unless it is there
/// already (exit 3: no such user), with the modes and owner sshd requires.
pub const SSHKEY_SH: &str = r#"set -e
home=$(getent passwd "$FLUID_USER" | cut -d: -f6)
[ -n "$home" ] || { echo "$FLUID_USER: no such user" >&2; exit 3; }
group=$(id -g "$FLUID_USER")
mkdir -p "$home/.ssh"
touch "$home/.ssh/authorized_keys"
grep -qxF -- "$FLUID_KEY" "$home/.ssh/authorized_keys" || printf '%s\n' "$FLUID_KEY" >>"$home/.ssh/authorized_keys"
chmod 700 "$home/.ssh"
chmod 600 "$home/.ssh/authorized_keys"
chown "$FLUID_USER:$group" "$home/.ssh" "$home/.ssh/authorized_keys""#;
