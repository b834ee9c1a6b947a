//! The production-apply gate: `--check --diff` first, its output in a
//! `production_apply` approval, and the real run only once a human approves. A
//! rejection or an expiry ends the job `failed` without running anything.
//!
//! A job created by an agent (or any token that is not an operator's or admin's) asks
//! first: a `production_apply` approval with phase `check` must be granted before
//! even the check run starts (a check run still executes the playbook's code paths on
//! production hosts). Every approval shows the whole playbook, never a clipped one: a
//! playbook over [`APPROVAL_YAML_MAX`] is refused when the job is created.

use fluid_ansible::InventoryHost;
use fluid_client::governance::{ApprovalKind, ApprovalStatus};

use super::{
    JobEnd, JobService, PHASE_APPLY, PHASE_AWAITING_APPROVAL, PHASE_CHECK, PHASE_DONE, audit,
};
use crate::config::AnsibleTarget;
use crate::error::ServiceError;
use crate::governance::approvals::{INTERNAL_DETAILS_MAX, NewRequest, Requester, refusal_reason};
use crate::store::{JobRecord, JobUpdate};
use crate::support::addr::parse_target_host;

/// Most of the check run's output an approval shows.
pub const APPROVAL_CHECK_OUTPUT_MAX: usize = 48 * 1024;
/// Largest playbook a production job takes: an approval shows all of it, so a
/// larger one is refused up front rather than clipped.
pub const APPROVAL_YAML_MAX: usize = 512 * 1024;
/// The phase of a job waiting for the approval of its check run.
pub const PHASE_AWAITING_CHECK_APPROVAL: &str = "awaiting_check_approval";

/// Refuses a playbook too large to be shown whole in an approval.
pub fn check_approvable(yaml: &str) -> Result<(), ServiceError> {
    if yaml.len() > APPROVAL_YAML_MAX {
        return Err(ServiceError::Invalid(format!(
            "playbook: {} bytes of YAML; a production job's approval shows the whole playbook, at most {APPROVAL_YAML_MAX} bytes: split it",
            yaml.len()
        )));
    }
    Ok(())
}

/// The inventory of a production target: each `address[:port]` with the target's user,
/// key and SSH arguments.
pub fn production_hosts(t: &AnsibleTarget) -> Result<Vec<InventoryHost>, ServiceError> {
    t.hosts
        .iter()
        .map(|h| {
            let (address, port) = parse_target_host(h).map_err(ServiceError::Invalid)?;
            let mut name: String = address
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            if port != 22 {
                name.push_str(&format!("_{port}"));
            }
            Ok(InventoryHost {
                name,
                address,
                port,
                user: t.user.clone(),
                private_key: Some(t.private_key.clone()),
                certificate: None,
                ssh_common_args: t.ssh_common_args.clone(),
                ..Default::default()
            })
        })
        .collect()
}

/// `-e` arguments of a target (its `become` overrides the playbook's).
pub fn production_extra_args(t: &AnsibleTarget) -> Vec<String> {
    t.r#become
        .map(|b| vec!["-e".to_owned(), format!("{{\"ansible_become\": {b}}}")])
        .unwrap_or_default()
}

/// At most `max` bytes of `s`: its start and its end, with what was cut in between.
pub fn clip(s: &str, max: usize) -> (String, bool) {
    if s.len() <= max {
        return (s.to_owned(), false);
    }
    let floor = |mut i: usize| {
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let head = floor(max * 2 / 3);
    let mut tail = s.len() - max / 3;
    while !s.is_char_boundary(tail) {
        tail += 1;
    }
    let cut = tail - head;
    (
        format!("{}\n… [{cut} bytes cut] …\n{}", &s[..head], &s[tail..]),
        true,
    )
}

/// What a `production_apply` approval shows: the job, the target, the whole playbook
/// (and its SHA-256: what will run) and the check run's output (its start and end
/// when it is long; the job keeps all of it), within the size an approval may have.
/// `check_output` is `None` for the approval of a check run.
pub fn approval_details(
    job: &JobRecord,
    t: &AnsibleTarget,
    check_output: Option<&str>,
    check_exit_code: Option<i32>,
) -> serde_json::Value {
    let mut check_max = APPROVAL_CHECK_OUTPUT_MAX;
    loop {
        let mut v = serde_json::json!({
            "job_id": job.id,
            "playbook": job.playbook,
            "playbook_sha256": job.playbook_sha256,
            "target": t.name,
            "hosts": t.hosts,
            "user": t.user,
            "phase": if check_output.is_some() { "apply" } else { "check" },
            "playbook_yaml": job.playbook_yaml,
            "playbook_yaml_truncated": false,
        });
        if let Some(out) = check_output {
            let (check, check_cut) = clip(out, check_max);
            v["check_exit_code"] = serde_json::json!(check_exit_code);
            v["check_output"] = serde_json::json!(check);
            v["check_output_truncated"] = serde_json::json!(check_cut);
        }
        // JSON escapes can make the text longer than its parts: shrink the check
        // output (never the playbook) until it fits.
        if v.to_string().len() <= INTERNAL_DETAILS_MAX - 256 || check_max < 1024 {
            return v;
        }
        check_max = check_max * 3 / 4;
    }
}

fn trusted_role(role: &str) -> bool {
    matches!(role, "admin" | "operator")
}

impl JobService {
    /// The job's end; `None` when another controller took it over.
    pub(super) async fn drive_production(
        &self,
        job: &JobRecord,
        t: &AnsibleTarget,
        role: &str,
    ) -> Option<JobEnd> {
        let failed = |e: String| Some(JobEnd::failed(e));
        if let Err(e) = self.start(job, PHASE_CHECK).await {
            return failed(e.to_string());
        }
        if !trusted_role(role) || job.agent_id.is_some() {
            match self.approve_check(job, t, role).await {
                Ok(true) => {}
                Ok(false) => return None,
                Err(msg) => return failed(msg),
            }
        }
        self.check_then_apply(job, t, role).await
    }

    /// Goes on, after a controller restart, with a job that was waiting for the
    /// approval of its check run: waits for that same approval, then runs as
    /// [`Self::drive_production`] would. Only an agent's job waits there, so the
    /// approval of its apply is opened with the role `agent`.
    pub(super) async fn resume_production_check(
        &self,
        job: &JobRecord,
        t: &AnsibleTarget,
        approval_id: &str,
    ) -> Option<JobEnd> {
        self.say(
            &job.id,
            &format!("=== the controller restarted: still waiting for {approval_id} ==="),
        );
        match self.wait_check(job, approval_id).await {
            Ok(true) => self.check_then_apply(job, t, "agent").await,
            Ok(false) => None,
            Err(msg) => Some(JobEnd::failed(msg)),
        }
    }

    /// The check run on the target, then (unless the job is a check) the approval of
    /// the apply, and the apply once approved.
    async fn check_then_apply(
        &self,
        job: &JobRecord,
        t: &AnsibleTarget,
        role: &str,
    ) -> Option<JobEnd> {
        let failed = |e: String| Some(JobEnd::failed(e));
        let hosts = match production_hosts(t) {
            Ok(h) => h,
            Err(e) => return failed(e.to_string()),
        };
        let dir = match self.work_dir(job) {
            Ok(d) => d,
            Err(e) => return failed(e.to_string()),
        };
        self.say(
            &job.id,
            &format!(
                "=== check: ansible-playbook --check --diff on production target {} ===",
                t.name
            ),
        );
        let from = self.output_len(&job.id);
        let r = self
            .run_playbook(job, dir.path(), hosts, true, production_extra_args(t))
            .await;
        let check_output = self.output_since(&job.id, from);
        let check_end = JobEnd::of_run(&r);
        if job.check {
            return Some(check_end);
        }
        if let Err(e) = &r {
            return failed(format!("the check run failed: {e}"));
        }
        let exit = check_end.exit_code;
        let mut summary = format!(
            "apply playbook {} to production target {}",
            job.playbook, t.name
        );
        if exit != Some(0) {
            summary.push_str(&format!(
                " (its check run exited {}: read its output)",
                exit.map_or_else(|| "abnormally".to_owned(), |c| c.to_string())
            ));
        }
        let req = NewRequest {
            kind: ApprovalKind::ProductionApply,
            requester: Requester {
                name: job.created_by.clone(),
                agent_id: job.agent_id.clone(),
            },
            sandbox_id: None,
            summary,
            details: approval_details(job, t, Some(&check_output), exit),
            timeout: self.settings.approval_timeout,
        };
        let approval = match self.approvals.open(req, role).await {
            Ok(a) => a,
            Err(e) => return failed(format!("opening the production_apply approval: {e}")),
        };
        self.say(
            &job.id,
            &format!("=== waiting for approval {} ===", approval.id),
        );
        let e = audit(job, "awaiting_approval", "pending")
            .details(serde_json::json!({"approval_id": approval.id}));
        if let Err(err) = self
            .update(
                job,
                JobUpdate {
                    phase: Some(PHASE_AWAITING_APPROVAL.into()),
                    approval_id: Some(approval.id.clone()),
                    check_output: Some(check_output),
                    ..Default::default()
                },
                Some(e),
            )
            .await
        {
            tracing::error!(job = %job.id, error = %err, "recording a job's approval");
        }
        drop(dir);
        self.await_and_apply(job, t, &approval.id).await
    }

    /// The approval an untrusted creator's job needs before its check run: `Ok(true)`
    /// when approved, `Ok(false)` when another controller took the job over, `Err`
    /// with why it must fail (rejected, expired, …; nothing was run).
    async fn approve_check(
        &self,
        job: &JobRecord,
        t: &AnsibleTarget,
        role: &str,
    ) -> Result<bool, String> {
        let req = NewRequest {
            kind: ApprovalKind::ProductionApply,
            requester: Requester {
                name: job.created_by.clone(),
                agent_id: job.agent_id.clone(),
            },
            sandbox_id: None,
            summary: format!(
                "run playbook {} on production target {} in check mode (--check --diff), asked by {}",
                job.playbook, t.name, job.created_by
            ),
            details: approval_details(job, t, None, None),
            timeout: self.settings.approval_timeout,
        };
        let approval =
            self.approvals.open(req, role).await.map_err(|e| {
                format!("opening the production_apply approval of the check run: {e}")
            })?;
        self.say(
            &job.id,
            &format!(
                "=== a check run on production needs an approval: waiting for {} ===",
                approval.id
            ),
        );
        let e = audit(job, "awaiting_approval", "pending")
            .details(serde_json::json!({"approval_id": approval.id, "phase": "check"}));
        let u = JobUpdate {
            phase: Some(PHASE_AWAITING_CHECK_APPROVAL.into()),
            approval_id: Some(approval.id.clone()),
            ..Default::default()
        };
        if let Err(err) = self.update(job, u, Some(e)).await {
            tracing::error!(job = %job.id, error = %err, "recording a job's check approval");
        }
        self.wait_check(job, &approval.id).await
    }

    /// Waits for `approval_id`, the approval of `job`'s check run, and records the
    /// decision: `Ok(true)` when approved, `Ok(false)` when another controller took
    /// the job over, `Err` with why it must fail.
    async fn wait_check(&self, job: &JobRecord, approval_id: &str) -> Result<bool, String> {
        let fin = self
            .approvals
            .wait(approval_id)
            .await
            .map_err(|e| format!("waiting for approval {approval_id}: {e}"))?;
        let took = |phase: &str| JobUpdate {
            phase: Some(phase.into()),
            expect_phase: Some(PHASE_AWAITING_CHECK_APPROVAL.into()),
            ..Default::default()
        };
        if fin.status != ApprovalStatus::Approved {
            let why = refusal_reason(&fin).unwrap_or_else(|| "was not approved".into());
            let msg = format!("approval {approval_id} {why}");
            self.say(&job.id, &format!("=== {msg}: nothing was run ==="));
            let e = audit(job, "refused", fin.status.as_str()).details(
                serde_json::json!({"approval_id": approval_id, "reason": why, "phase": "check"}),
            );
            return match self.update(job, took(PHASE_DONE), Some(e)).await {
                Ok(false) => Ok(false),
                _ => Err(msg),
            };
        }
        let by = fin
            .decided_by
            .clone()
            .unwrap_or_else(|| "controller".into());
        self.say(
            &job.id,
            &format!("=== check run approved by {by} ({approval_id}) ==="),
        );
        let e = audit(job, "approved", "running").details(serde_json::json!({
            "approval_id": approval_id, "decided_by": by, "comment": fin.comment, "phase": "check",
        }));
        match self.update(job, took(PHASE_CHECK), Some(e)).await {
            Ok(true) => Ok(true),
            Ok(false) => Ok(false),
            Err(err) => Err(format!("recording the approval of {approval_id}: {err}")),
        }
    }

    /// Waits for the decision on `approval_id`; runs the playbook for real only when
    /// it is approved. The decision's effect is a compare-and-set on the job's phase,
    /// so of two controllers waiting on one job (a restart while the old one still
    /// ran), one acts: `None` for the other.
    pub(super) async fn await_and_apply(
        &self,
        job: &JobRecord,
        t: &AnsibleTarget,
        approval_id: &str,
    ) -> Option<JobEnd> {
        let failed = |e: String| Some(JobEnd::failed(e));
        let fin = match self.approvals.wait(approval_id).await {
            Ok(f) => f,
            Err(e) => return failed(format!("waiting for approval {approval_id}: {e}")),
        };
        let took = |phase: &str| JobUpdate {
            phase: Some(phase.into()),
            expect_phase: Some(PHASE_AWAITING_APPROVAL.into()),
            ..Default::default()
        };
        let decided_by = fin
            .decided_by
            .clone()
            .unwrap_or_else(|| "controller".into());
        if fin.status != ApprovalStatus::Approved {
            let why = refusal_reason(&fin).unwrap_or_else(|| "was not approved".into());
            let msg = format!("approval {approval_id} {why}");
            self.say(&job.id, &format!("=== {msg}: nothing was applied ==="));
            let e = audit(job, "refused", fin.status.as_str())
                .details(serde_json::json!({"approval_id": approval_id, "reason": why}));
            match self.update(job, took(PHASE_DONE), Some(e)).await {
                Ok(true) => {}
                Ok(false) => return None,
                Err(err) => {
                    tracing::error!(job = %job.id, error = %err, "recording a refused apply")
                }
            }
            return failed(msg);
        }
        self.say(
            &job.id,
            &format!(
                "=== approved by {decided_by} ({approval_id}): apply on production target {} ===",
                t.name
            ),
        );
        let e = audit(job, "approved", "running").details(serde_json::json!({
            "approval_id": approval_id,
            "decided_by": decided_by,
            "comment": fin.comment,
        }));
        match self.update(job, took(PHASE_APPLY), Some(e)).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(job = %job.id, "another controller applies this job");
                return None;
            }
            // Unsure whether the apply is ours: never run it twice.
            Err(err) => return failed(format!("recording the approval of {approval_id}: {err}")),
        }
        let hosts = match production_hosts(t) {
            Ok(h) => h,
            Err(e) => return failed(e.to_string()),
        };
        let dir = match self.work_dir(job) {
            Ok(d) => d,
            Err(e) => return failed(e.to_string()),
        };
        let r = self
            .run_playbook(job, dir.path(), hosts, false, production_extra_args(t))
            .await;
        Some(JobEnd::of_run(&r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_keeps_both_ends() {
        assert_eq!(clip("short", 10), ("short".into(), false));
        let s = format!("{}{}", "a".repeat(100), "é".repeat(100));
        let (c, cut) = clip(&s, 90);
        assert!(cut);
        assert!(c.starts_with("aaa") && c.ends_with('é'), "{c}");
        assert!(c.contains("bytes cut"));
    }

    /// With ansible-core installed: a target's inventory, key and arguments are what
    /// ansible-playbook accepts (an unreachable host exits 4, not a usage error).
    #[tokio::test]
    async fn ansible_playbook_takes_a_targets_inventory() {
        use crate::ansible::jobs::runner::{
            AnsibleRunner, PlaybookRunner as _, Sandbox, resolve_ansible_playbook,
        };
        let (bin, installed) = resolve_ansible_playbook("ansible-playbook");
        if !fluid_prereq::available("ansible", installed, "ansible-playbook is not installed") {
            return;
        }
        let dir = tempfile::tempdir().expect("tmp");
        let key = crate::ansible::jobs::access::JobKey::create(
            dir.path(),
            &crate::work::ssh_ca::SshCa::generate().expect("ca"),
            "JOB-x",
            "SBX-00000000",
        )
        .expect("key");
        let t = AnsibleTarget {
            name: "prod".into(),
            hosts: vec!["127.0.0.1:1".into()],
            user: "deploy".into(),
            private_key: key.key_path.clone(),
            ssh_common_args: vec![
                "-o".into(),
                "StrictHostKeyChecking=no".into(),
                "-o".into(),
                "ConnectTimeout=5".into(),
            ],
            r#become: Some(false),
        };
        let playbook = dir.path().join("p.yml");
        std::fs::write(&playbook, "- name: p\n  hosts: all\n  become: true\n  tasks:\n    - name: ping\n      ansible.builtin.ping:\n").expect("playbook");
        let spec = fluid_ansible::RunSpec {
            ansible_playbook: bin,
            playbook_path: playbook,
            hosts: production_hosts(&t).expect("hosts"),
            check: true,
            diff: true,
            work_dir: dir.path().join("work"),
            timeout: std::time::Duration::from_secs(120),
            extra_args: production_extra_args(&t),
            confine: None,
            read_only: Vec::new(),
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let (out, lines) = tokio::join!(
            AnsibleRunner {
                sandbox: Sandbox::Off
            }
            .run(&spec, tx),
            async {
                let mut all = Vec::new();
                while let Some(l) = rx.recv().await {
                    all.push(l);
                }
                all
            }
        );
        let out = out.expect("ran");
        let text = lines.join("\n");
        assert_eq!(out.exit_code, Some(4), "unreachable: {text}");
        assert!(text.contains("UNREACHABLE"), "{text}");
    }

    #[test]
    fn targets_become_inventories() {
        let t = AnsibleTarget {
            name: "web".into(),
            hosts: vec!["10.0.0.5".into(), "[2001:db8::1]:2222".into()],
            user: "deploy".into(),
            private_key: "/etc/fluid/prod.key".into(),
            ssh_common_args: vec!["-o".into(), "StrictHostKeyChecking=yes".into()],
            r#become: Some(false),
        };
        let h = production_hosts(&t).expect("valid");
        assert_eq!(
            h.iter()
                .map(|h| (h.name.as_str(), h.address.as_str(), h.port))
                .collect::<Vec<_>>(),
            [
                ("10.0.0.5", "10.0.0.5", 22),
                ("2001_db8__1_2222", "2001:db8::1", 2222)
            ]
        );
        assert_eq!(h[0].user, "deploy");
        assert_eq!(
            production_extra_args(&t),
            ["-e", "{\"ansible_become\": false}"]
        );
    }
}
