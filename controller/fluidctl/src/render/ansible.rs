//! Rendering of Ansible playbooks, verifications and jobs. Pure, like the rest of
//! [`super`].

use chrono::{DateTime, Utc};
use fluid_client::ansible::{
    Difference, GenerateAnsibleResponse, Job, Playbook, PlaybookWithTasks, Verification,
};

use super::{NONE, age, one_line, opt, rfc3339, table};

fn verified(p: &Playbook) -> &'static str {
    match &p.verification {
        None => NONE,
        Some(v) if v.reproduces => "yes",
        Some(_) => "no",
    }
}

/// `NAME HOSTS BECOME SOURCE REPRODUCES AGE`.
pub fn playbook_table(playbooks: &[Playbook], now: DateTime<Utc>) -> String {
    if playbooks.is_empty() {
        return "No playbooks.".to_owned();
    }
    let rows = playbooks
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.hosts.clone(),
                p.r#become.to_string(),
                p.source.as_ref().map_or_else(
                    || NONE.to_owned(),
                    |s| format!("{}@{}", s.sandbox_id, s.to_snapshot),
                ),
                verified(p).to_owned(),
                age(p.updated_at, now),
            ]
        })
        .collect();
    table(
        &["NAME", "HOSTS", "BECOME", "SOURCE", "REPRODUCES", "AGE"],
        rows,
    )
}

/// A playbook's fields, then its tasks (`POS ID NAME MODULE KIND`).
pub fn playbook_detail(p: &PlaybookWithTasks) -> String {
    let b = &p.playbook;
    let mut out = vec![
        format!("Name:        {}", b.name),
        format!("ID:          {}", b.id),
        format!("Hosts:       {}", b.hosts),
        format!("Become:      {}", b.r#become),
        format!("File:        {}", b.file_path),
        format!("Updated:     {}", rfc3339(b.updated_at)),
    ];
    if let Some(s) = &b.source {
        out.push(format!(
            "Source:      {} ({}) from {} to {}, diff {}",
            s.sandbox_id, s.base_image, s.from_snapshot, s.to_snapshot, s.diff_id
        ));
    }
    if let Some(v) = &b.verification {
        out.push(format!(
            "Reproduces:  {} ({} difference(s), job {}, {})",
            if v.reproduces { "yes" } else { "no" },
            v.differences.len(),
            v.job_id,
            rfc3339(v.verified_at)
        ));
    }
    out.push(String::new());
    if p.tasks.is_empty() {
        out.push("No tasks.".to_owned());
    } else {
        let rows = p
            .tasks
            .iter()
            .map(|t| {
                vec![
                    t.position.to_string(),
                    t.id.clone(),
                    one_line(&t.name),
                    t.module.clone(),
                    if t.handler { "handler" } else { "task" }.to_owned(),
                ]
            })
            .collect();
        out.push(table(&["POS", "ID", "NAME", "MODULE", "KIND"], rows));
    }
    out.join("\n")
}

/// The YAML, then what a human must review.
pub fn generated(g: &GenerateAnsibleResponse) -> String {
    let mut out = g.yaml.trim_end().to_owned();
    out.push_str(&format!(
        "\n\n# playbook {} ({} tasks) from diff {}\n",
        g.playbook.name,
        g.tasks.len(),
        g.diff_id
    ));
    if g.review.is_empty() {
        out.push_str("# nothing to review\n");
    } else {
        out.push_str("# review:\n");
        for r in &g.review {
            out.push_str(&format!("#  - {}\n", one_line(r)));
        }
    }
    out
}

/// `WHAT NAME EXPECTED ACTUAL`.
pub fn differences_table(diffs: &[Difference]) -> String {
    let rows = diffs
        .iter()
        .map(|d| {
            vec![
                d.what.clone(),
                d.name.clone(),
                one_line(&d.expected),
                one_line(&d.actual),
            ]
        })
        .collect();
    table(&["WHAT", "NAME", "EXPECTED", "ACTUAL"], rows)
}

/// `reproduces: yes|no`, and the differences when there are any.
pub fn verification(v: &Verification) -> String {
    let mut out = format!("reproduces: {}", if v.reproduces { "yes" } else { "no" });
    if !v.differences.is_empty() {
        out.push_str("\n\n");
        out.push_str(&differences_table(&v.differences));
    }
    out
}

/// `ID PLAYBOOK TARGET KIND STATUS PHASE AGE`.
pub fn job_table(jobs: &[Job], now: DateTime<Utc>) -> String {
    if jobs.is_empty() {
        return "No jobs.".to_owned();
    }
    let rows = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.clone(),
                j.playbook.clone(),
                format!("{} ({})", j.vm_name, j.target_kind),
                j.kind.clone(),
                j.status.as_str().to_owned(),
                j.phase.clone(),
                age(j.created_at, now),
            ]
        })
        .collect();
    table(
        &["ID", "PLAYBOOK", "TARGET", "KIND", "STATUS", "PHASE", "AGE"],
        rows,
    )
}

/// A job's fields, then its output.
pub fn job_detail(j: &Job) -> String {
    let mut out = vec![
        format!("Job:         {} ({})", j.id, j.kind),
        format!("Playbook:    {}", j.playbook),
        format!(
            "Target:      {} ({}){}",
            j.vm_name,
            j.target_kind,
            if j.check { ", --check" } else { "" }
        ),
        format!("Status:      {} (phase {})", j.status.as_str(), j.phase),
        format!("Approval:    {}", opt(j.approval_id.as_deref())),
        format!(
            "Exit code:   {}",
            j.exit_code
                .map_or_else(|| NONE.to_owned(), |c| c.to_string())
        ),
        format!("Created:     {} by {}", rfc3339(j.created_at), j.created_by),
    ];
    if let Some(e) = &j.error {
        out.push(format!("Error:       {}", one_line(e)));
    }
    if let Some(v) = &j.verification {
        out.push(String::new());
        out.push(verification(v));
    }
    out.push(String::new());
    out.push(j.output.trim_end().to_owned());
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use fluid_client::ansible::JobStatus;

    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn verifications_say_yes_or_no_and_list_differences() {
        let mut v = Verification {
            reproduces: true,
            differences: vec![],
            job_id: "JOB-1".into(),
            verify_sandbox_id: "SBX-2".into(),
            verified_at: t("2025-03-01T12:00:00Z"),
        };
        assert_eq!(verification(&v), "reproduces: yes");
        v.reproduces = false;
        v.differences.push(Difference {
            what: "package".into(),
            name: "nginx".into(),
            expected: "1.22.1-9".into(),
            actual: "absent".into(),
        });
        assert_eq!(
            verification(&v),
            "reproduces: no\n\nWHAT     NAME   EXPECTED  ACTUAL\npackage  nginx  1.22.1-9  absent"
        );
    }

    #[test]
    fn jobs_show_their_state_and_output() {
        let j = Job {
            id: "JOB-1".into(),
            kind: "run".into(),
            playbook: "web".into(),
            vm_name: "prod-web".into(),
            target_kind: "production".into(),
            check: false,
            status: JobStatus::Running,
            phase: "awaiting_approval".into(),
            approval_id: Some("APR-1".into()),
            check_output: None,
            output: "PLAY [check]\n".into(),
            exit_code: None,
            error: None,
            verification: None,
            created_by: "alice".into(),
            created_at: t("2025-03-01T12:00:00Z"),
            started_at: None,
            finished_at: None,
        };
        let d = job_detail(&j);
        assert!(
            d.contains("Status:      running (phase awaiting_approval)"),
            "{d}"
        );
        assert!(
            d.contains("Approval:    APR-1") && d.ends_with("PLAY [check]"),
            "{d}"
        );
        let table = job_table(&[j], t("2025-03-01T12:05:00Z"));
        assert!(
            table.contains("prod-web (production)") && table.contains("5m"),
            "{table}"
        );
    }
}
