//! `[retention] command_output_days`, run against SQLite and PostgreSQL like
//! [`super::tests`]: the output of commands that ended before the cut is emptied (and
//! marked), in batches; newer ones, running ones and the rows themselves stay.

use std::sync::Arc;

use chrono::{Duration, Utc};

use super::tests::{beat, reservation};
use super::tests_trust::{Raw, both};
use super::*;
use crate::work::retention::RetentionConfig;

both!(old_output_is_dropped_in_batches_and_the_rest_stays);

async fn old_output_is_dropped_in_batches_and_the_rest_stays(store: Arc<dyn Store>, _raw: &Raw) {
    store.upsert_host("h1", "h1:7443").await.expect("host");
    beat(&*store, "h1", 8, 8192, &["debian-12"]).await;
    let sbx = store
        .reserve(&reservation(1, "h1", 1, 512))
        .await
        .expect("reserve");
    let now = Utc::now();
    // 1,202 commands: 1,200 that ended 40 days ago (more than two batches), one that
    // ended yesterday, one still running.
    let command = |i: usize, ended: Option<chrono::DateTime<Utc>>| CommandRecord {
        id: format!("CMD-ret{i:08}"),
        sandbox_id: sbx.id.clone(),
        agent_id: sbx.agent_id.clone(),
        kind: "command".into(),
        command: format!("step {i}"),
        user: "root".into(),
        workdir: None,
        env_json: "{}".into(),
        status: if ended.is_some() {
            CommandStatus::Completed
        } else {
            CommandStatus::Running
        },
        stdout: format!("output of step {i}\n"),
        stderr: "warning\n".into(),
        exit_code: ended.map(|_| 0),
        timed_out: false,
        truncated: false,
        error: None,
        started_at: ended.unwrap_or(now) - Duration::seconds(1),
        ended_at: ended,
        duration_ms: ended.map(|_| 1000),
        output_expired: false,
    };
    let old = now - Duration::days(40);
    for i in 0..1200 {
        store
            .insert_command(&command(i, Some(old)))
            .await
            .expect("old");
    }
    store
        .insert_command(&command(1200, Some(now - Duration::days(1))))
        .await
        .expect("recent");
    store
        .insert_command(&command(1201, None))
        .await
        .expect("running");
    let cfg = RetentionConfig {
        command_output_days: 30,
        ..RetentionConfig::default()
    };
    assert_eq!(cfg.expire(&*store, now).await.expect("expire"), 1200);
    assert_eq!(
        cfg.expire(&*store, now).await.expect("again"),
        0,
        "idempotent"
    );
    let expired = store
        .get_command("CMD-ret00000007")
        .await
        .expect("get")
        .expect("the row stays");
    assert!(expired.output_expired && expired.stdout.is_empty() && expired.stderr.is_empty());
    assert_eq!(expired.exit_code, Some(0));
    assert!(expired.to_api().output_expired);
    for (id, why) in [
        ("CMD-ret00001200", "ended yesterday"),
        ("CMD-ret00001201", "running"),
    ] {
        let kept = store.get_command(id).await.expect("get").expect("row");
        assert!(
            !kept.output_expired && kept.stdout.starts_with("output of step"),
            "{why}: {kept:?}"
        );
    }
    let forever = RetentionConfig {
        command_output_days: 0,
        ..RetentionConfig::default()
    };
    assert_eq!(
        forever
            .expire(&*store, now + Duration::days(400))
            .await
            .expect("0"),
        0
    );
}
