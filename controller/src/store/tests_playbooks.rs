//! Playbooks, tasks and Ansible jobs, run against SQLite and PostgreSQL like
//! [`super::tests`].

use std::sync::Arc;

use chrono::Utc;
use fluid_client::ansible::{JobStatus, PlaybookSource, Verification};
use serde_json::json;

use super::*;

macro_rules! both {
    ($($suite:ident),* $(,)?) => {$(
        mod $suite {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().expect("tmp");
                super::$suite(super::super::tests::sqlite(&dir).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(pg) = super::super::tests::pg().await else { return };
                super::$suite(pg.store.clone()).await;
                pg.cleanup().await;
            }
        }
    )*};
}

both!(
    playbooks_are_named_uniquely_and_cascade,
    tasks_keep_contiguous_positions,
    jobs_are_compare_and_set_and_audited,
);

fn playbook(name: &str) -> PlaybookRecord {
    let now = Utc::now();
    PlaybookRecord {
        id: crate::support::ids::new_id("PBK-"),
        name: name.into(),
        hosts: "all".into(),
        r#become: true,
        source: None,
        verification: None,
        owner_agent_id: Some("agent-1".into()),
        created_by: Some("bot".into()),
        created_at: now,
        updated_at: now,
    }
}

fn task(playbook_id: &str, name: &str, position: i64) -> TaskRecord {
    TaskRecord {
        id: crate::support::ids::new_id("TSK-"),
        playbook_id: playbook_id.into(),
        position,
        name: name.into(),
        module: "ansible.builtin.apt".into(),
        params: json!({"name": ["nginx"], "state": "present"}),
        options: json!({"notify": ["restart nginx"]}),
        handler: false,
        created_at: Utc::now(),
    }
}

fn names(ts: &[TaskRecord]) -> Vec<(String, i64)> {
    ts.iter().map(|t| (t.name.clone(), t.position)).collect()
}

async fn playbooks_are_named_uniquely_and_cascade(store: Arc<dyn Store>) {
    let s = &*store;
    let mut p = playbook("web");
    p.source = Some(PlaybookSource {
        sandbox_id: "SBX-abcdefghij".into(),
        base_image: "debian-12".into(),
        from_snapshot: "a".into(),
        to_snapshot: "now".into(),
        diff_id: "DIF-abcdefghij".into(),
    });
    let tasks = [task(&p.id, "one", 0), task(&p.id, "two", 1)];
    s.create_playbook(&p, &tasks).await.expect("create");
    let got = s.get_playbook("web").await.expect("get").expect("exists");
    assert_eq!(got.source, p.source);
    assert_eq!(got.hosts, "all");
    assert!(got.r#become);
    let ts = s.list_tasks(&p.id).await.expect("tasks");
    assert_eq!(names(&ts), [("one".into(), 0), ("two".into(), 1)]);
    assert_eq!(ts[0].params, tasks[0].params);
    assert_eq!(ts[0].options, tasks[0].options);

    // The name is unique; a failed create leaves nothing behind.
    let dup = playbook("web");
    let e = s
        .create_playbook(&dup, &[task(&dup.id, "x", 0)])
        .await
        .expect_err("duplicate");
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    assert!(s.list_tasks(&dup.id).await.expect("tasks").is_empty());

    s.create_playbook(&playbook("db"), &[]).await.expect("db");
    let (page, total) = s.list_playbooks(1, 0).await.expect("list");
    assert_eq!(total, 2);
    assert_eq!(page[0].name, "db");

    let v = Verification {
        reproduces: true,
        differences: vec![],
        job_id: "JOB-abcdefghij".into(),
        verify_sandbox_id: "SBX-bcdefghijk".into(),
        verified_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("time"),
    };
    assert!(
        s.set_playbook_verification("web", &v, Utc::now())
            .await
            .expect("verify")
    );
    assert!(
        !s.set_playbook_verification("nosuch", &v, Utc::now())
            .await
            .expect("unknown")
    );
    let got = s.get_playbook("web").await.expect("get").expect("exists");
    assert_eq!(got.verification, Some(v));

    assert!(s.delete_playbook("web").await.expect("delete"));
    assert!(!s.delete_playbook("web").await.expect("again"));
    assert!(s.get_playbook("web").await.expect("get").is_none());
    assert!(
        s.list_tasks(&p.id).await.expect("tasks").is_empty(),
        "tasks go with their playbook"
    );
}

async fn tasks_keep_contiguous_positions(store: Arc<dyn Store>) {
    let s = &*store;
    let p = playbook("pos");
    s.create_playbook(&p, &[]).await.expect("create");
    let mut ids = Vec::new();
    for n in ["a", "b", "c", "d"] {
        // The given position is ignored: tasks are appended.
        match s
            .add_task(&task(&p.id, n, 99), Utc::now())
            .await
            .expect("add")
        {
            TaskWrite::Done(t) => ids.push(t.id),
            other => panic!("{other:?}"),
        }
    }
    let ts = s.list_tasks(&p.id).await.expect("tasks");
    assert_eq!(
        names(&ts),
        [
            ("a".into(), 0),
            ("b".into(), 1),
            ("c".into(), 2),
            ("d".into(), 3)
        ]
    );
    match s.delete_task(&p.id, &ids[1], Utc::now()).await.expect("rm") {
        TaskWrite::Done(t) => assert_eq!(t.name, "b"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.delete_task(&p.id, &ids[1], Utc::now()).await.expect("rm"),
        TaskWrite::NoTask
    );
    assert_eq!(
        s.delete_task("PBK-nosuch0000", &ids[0], Utc::now())
            .await
            .expect("rm"),
        TaskWrite::NoPlaybook
    );
    let ts = s.list_tasks(&p.id).await.expect("tasks");
    assert_eq!(
        names(&ts),
        [("a".into(), 0), ("c".into(), 1), ("d".into(), 2)]
    );

    let order = vec![ids[3].clone(), ids[0].clone(), ids[2].clone()];
    assert!(
        s.reorder_tasks(&p.id, &order, Utc::now())
            .await
            .expect("ok")
    );
    let ts = s.list_tasks(&p.id).await.expect("tasks");
    assert_eq!(
        names(&ts),
        [("d".into(), 0), ("a".into(), 1), ("c".into(), 2)]
    );
    for bad in [
        vec![ids[3].clone(), ids[0].clone()],
        vec![ids[3].clone(), ids[0].clone(), ids[0].clone()],
        vec![ids[3].clone(), ids[0].clone(), ids[1].clone()],
    ] {
        assert!(!s.reorder_tasks(&p.id, &bad, Utc::now()).await.expect("no"));
    }
    assert_eq!(
        names(&s.list_tasks(&p.id).await.expect("tasks")),
        names(&ts),
        "a refused reorder changes nothing"
    );

    let mut t = ts[1].clone();
    t.name = "renamed".into();
    t.params = json!("echo hi");
    match s.update_task(&t, Utc::now()).await.expect("update") {
        TaskWrite::Done(u) => {
            assert_eq!((u.name.as_str(), u.position), ("renamed", 1));
            assert_eq!(u.params, json!("echo hi"));
        }
        other => panic!("{other:?}"),
    }
    t.id = "TSK-nosuch0000".into();
    assert_eq!(
        s.update_task(&t, Utc::now()).await.expect("update"),
        TaskWrite::NoTask
    );
}

fn job(id: &str) -> JobRecord {
    JobRecord {
        id: id.into(),
        kind: "run".into(),
        playbook: "web".into(),
        vm_name: "prod-web".into(),
        target_kind: "production".into(),
        sandbox_id: None,
        check: false,
        status: JobStatus::Pending,
        phase: "check".into(),
        approval_id: None,
        playbook_yaml: "- hosts: all\n".into(),
        playbook_sha256: "00".into(),
        check_output: None,
        output: String::new(),
        exit_code: None,
        error: None,
        verification: None,
        created_by: "alice".into(),
        agent_id: Some("agent-7".into()),
        created_at: Utc::now(),
        started_at: None,
        finished_at: None,
    }
}

async fn jobs_are_compare_and_set_and_audited(store: Arc<dyn Store>) {
    let s = &*store;
    let ev = |action: &str| NewAuditEvent::system("ansible_job", action, "ok").target("JOB-a");
    s.insert_job(&job("JOB-a"), &ev("created"))
        .await
        .expect("insert");
    s.insert_job(&job("JOB-b"), &ev("created"))
        .await
        .expect("insert");
    let e = s
        .insert_job(&job("JOB-a"), &ev("created"))
        .await
        .expect_err("dup");
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");

    let started = s
        .update_job(
            "JOB-a",
            &JobUpdate {
                status: Some(JobStatus::Running),
                started_at: Some(Utc::now()),
                output: Some("PLAY [all]\n".into()),
                expect_status: Some(JobStatus::Pending),
                ..Default::default()
            },
            None,
        )
        .await
        .expect("update")
        .expect("was pending");
    assert_eq!(started.status, JobStatus::Running);
    assert_eq!(started.phase, "check", "unchanged fields stay");
    assert!(
        s.update_job(
            "JOB-a",
            &JobUpdate {
                status: Some(JobStatus::Failed),
                expect_status: Some(JobStatus::Pending),
                ..Default::default()
            },
            Some(&ev("lost")),
        )
        .await
        .expect("cas")
        .is_none(),
        "compare-and-set refuses a stale status"
    );
    let v = Verification {
        reproduces: false,
        differences: vec![fluid_client::ansible::Difference {
            what: "file".into(),
            name: "/etc/x".into(),
            expected: "absent".into(),
            actual: "file 0644 root:root 3 B".into(),
        }],
        job_id: "JOB-a".into(),
        verify_sandbox_id: "SBX-bcdefghijk".into(),
        verified_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("time"),
    };
    let done = s
        .update_job(
            "JOB-a",
            &JobUpdate {
                status: Some(JobStatus::Finished),
                phase: Some("done".into()),
                exit_code: Some(0),
                verification: Some(v.clone()),
                finished_at: Some(Utc::now()),
                expect_status: Some(JobStatus::Running),
                ..Default::default()
            },
            Some(&ev("finished")),
        )
        .await
        .expect("finish")
        .expect("was running");
    assert_eq!(
        (done.status, done.exit_code, done.output.as_str()),
        (JobStatus::Finished, Some(0), "PLAY [all]\n")
    );
    assert_eq!(done.verification, Some(v));
    assert_eq!(s.get_job("JOB-a").await.expect("get"), Some(done));
    assert!(s.get_job("JOB-zz").await.expect("get").is_none());

    let unfinished = s.unfinished_jobs().await.expect("unfinished");
    assert_eq!(
        unfinished.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        ["JOB-b"]
    );
    let (page, total) = s
        .list_jobs(&JobFilter {
            status: Some(JobStatus::Finished),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!((page.len(), total), (1, 1));
    let (_, total) = s
        .list_jobs(&JobFilter {
            playbook: Some("web".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(total, 2);
    for (agent, want) in [("agent-7", 2), ("agent-9", 0)] {
        let (_, total) = s
            .list_jobs(&JobFilter {
                agent_id: Some(agent.into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .expect("list");
        assert_eq!(total, want, "{agent}");
    }

    let actions: Vec<String> = s
        .list_audit(&AuditFilter {
            kind: Some("ansible_job".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        ["created", "created", "finished"],
        "a refused insert or update appends nothing"
    );
}
