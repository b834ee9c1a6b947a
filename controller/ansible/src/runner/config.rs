//! The files a run needs beside the playbook: the inventory (JSON, which Ansible's
//! YAML inventory plugin reads, and in which every string stays a string) and
//! `ansible.cfg` (constant settings only; paths travel as environment variables, which
//! Ansible does not interpolate).

use std::path::Path;

use serde_json::{Map, Value, json};

use super::InventoryHost;
use crate::error::RunError;
use crate::model::has_template_markers;

/// `ansible.cfg` of every run.
pub(super) const ANSIBLE_CFG: &str = "\
# Written by fluid for one run.
[defaults]
retry_files_enabled = False
nocows = 1
stdout_callback = default
force_color = False
interpreter_python = auto_silent
# The SSH options of each host (ssh_common_args) decide how host keys are checked.
host_key_checking = True
forks = 10

[ssh_connection]
pipelining = True
# No -C: module payloads are small, and compressing them costs a slow guest more than it saves.
ssh_args = -o ControlMaster=auto -o ControlPersist=30s
";

/// `s` quoted for a POSIX shell (and Python's `shlex.split`, which Ansible uses on
/// `ansible_ssh_common_args`).
pub fn sh_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r#"'"'"'"#))
    }
}

fn check_text(what: &str, s: &str) -> Result<(), RunError> {
    if s.chars().any(char::is_control) {
        return Err(RunError::Invalid(format!(
            "{what}: control characters are not allowed"
        )));
    }
    if has_template_markers(s) {
        return Err(RunError::Invalid(format!(
            "{what}: must not contain template delimiters ({{{{, {{% or {{#)"
        )));
    }
    Ok(())
}

fn check_token(what: &str, s: &str, extra: &[u8]) -> Result<(), RunError> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b));
    if ok {
        Ok(())
    } else {
        Err(RunError::Invalid(format!(
            "{what}: {s:?} is not acceptable"
        )))
    }
}

fn check_path(what: &str, p: &Path) -> Result<String, RunError> {
    let s = p
        .to_str()
        .ok_or_else(|| RunError::Invalid(format!("{what}: not UTF-8")))?;
    check_text(what, s)?;
    Ok(s.to_owned())
}

/// The inventory: every host under `all`, with its connection variables.
pub(super) fn inventory_json(hosts: &[InventoryHost]) -> Result<String, RunError> {
    if hosts.is_empty() {
        return Err(RunError::Invalid("no hosts to run on".into()));
    }
    let mut all = Map::new();
    for h in hosts {
        check_token("host name", &h.name, b"._-")?;
        if all.contains_key(&h.name) {
            return Err(RunError::Invalid(format!("host {:?} given twice", h.name)));
        }
        check_token("address", &h.address, b".:-_[]%")?;
        check_token("user", &h.user, b"._-")?;
        let mut vars = Map::new();
        vars.insert("ansible_host".into(), json!(h.address));
        vars.insert("ansible_port".into(), json!(h.port));
        vars.insert("ansible_user".into(), json!(h.user));
        let mut ssh_args = Vec::new();
        if let Some(key) = &h.private_key {
            vars.insert(
                "ansible_ssh_private_key_file".into(),
                json!(check_path("private_key", key)?),
            );
            ssh_args.push("-o".to_owned());
            ssh_args.push("IdentitiesOnly=yes".to_owned());
        }
        if let Some(cert) = &h.certificate {
            ssh_args.push("-o".to_owned());
            ssh_args.push(format!(
                "CertificateFile={}",
                check_path("certificate", cert)?
            ));
        }
        for a in &h.ssh_common_args {
            check_text("ssh_common_args", a)?;
            ssh_args.push(a.clone());
        }
        if !ssh_args.is_empty() {
            let joined: Vec<String> = ssh_args.iter().map(|a| sh_quote(a)).collect();
            vars.insert("ansible_ssh_common_args".into(), json!(joined.join(" ")));
        }
        if let Some(c) = &h.connection {
            check_token("connection", c, b"._")?;
            vars.insert("ansible_connection".into(), json!(c));
        }
        if let Some(py) = &h.python_interpreter {
            check_text("python_interpreter", py)?;
            vars.insert("ansible_python_interpreter".into(), json!(py));
        }
        all.insert(h.name.clone(), Value::Object(vars));
    }
    let inventory = json!({ "all": { "hosts": all } });
    serde_json::to_string_pretty(&inventory)
        .map_err(|e| RunError::Invalid(format!("inventory: {e}")))
}
