//! The [`Store`] implementation (hosts, sandboxes, commands, access certificates),
//! written once for every [`Dialect`]; the SQL is in `rows.rs` and `audit_rows.rs`.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{ColumnIndex, Executor};

use super::audit_rows::{self, CertRow, CommandRow};
use super::dialect::{Conn, Dialect, Field, Param, Row, RowsAffected as _};
use super::rows::{self, HostRow, OneUsageRow, SandboxRow, UsageRow};
use super::trust_impl::append_in_tx;
use super::trust_rows;
use super::{
    Beat, CertRecord, CommandEnd, CommandRecord, CommandStatus, EgressStore, HostRecord, HostUsage,
    LoopKey, LoopLock, PlaybookStore, Reservation, ReserveError, SandboxFilter, SandboxRecord,
    SandboxUpdate, SnapshotStore, Store, StoreError, TrustStore, check_room,
};
use crate::support::ids::LegacyJobId;

#[async_trait]
impl<D> Store for D
where
    D: Dialect + TrustStore + EgressStore + PlaybookStore + SnapshotStore,
    for<'c> &'c mut Conn<D>: Executor<'c, Database = D::Db>,
    usize: ColumnIndex<Row<D>>,
    for<'r> &'r str: ColumnIndex<Row<D>>,
    for<'q> &'q str: Param<'q, D::Db>,
    for<'q> Option<&'q str>: Param<'q, D::Db>,
    String: Field<D::Db>,
    Option<String>: Field<D::Db>,
    i64: Field<D::Db>,
    Option<i64>: Field<D::Db>,
    bool: Field<D::Db>,
    DateTime<Utc>: Field<D::Db>,
    Option<DateTime<Utc>>: Field<D::Db>,
    Json<Vec<String>>: Field<D::Db>,
    for<'q> Json<&'q Vec<String>>: Param<'q, D::Db>,
{
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(self.pool()).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool().close().await;
    }

    async fn upsert_host(&self, name: &str, address: &str) -> Result<(), StoreError> {
        sqlx::query(rows::UPSERT_HOST)
            .bind(name)
            .bind(address)
            .bind(Utc::now())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn insert_host(
        &self,
        name: &str,
        address: &str,
        now: DateTime<Utc>,
    ) -> Result<HostRecord, StoreError> {
        let row: HostRow = sqlx::query_as(rows::INSERT_HOST)
            .bind(name)
            .bind(address)
            .bind(now)
            .fetch_one(self.pool())
            .await
            .map_err(|e| rows::unique_or(e, || format!("host {name:?}")))?;
        row.try_into()
    }

    async fn list_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        let rs: Vec<HostRow> = sqlx::query_as(rows::LIST_HOSTS)
            .fetch_all(self.pool())
            .await?;
        rows::hosts(rs)
    }

    async fn get_host(&self, name: &str) -> Result<Option<HostRecord>, StoreError> {
        let row: Option<HostRow> = sqlx::query_as(rows::HOST_BY_NAME)
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        row.map(HostRecord::try_from).transpose()
    }

    async fn record_beat(&self, name: &str, beat: &Beat) -> Result<(), StoreError> {
        sqlx::query(rows::RECORD_BEAT)
            .bind(name)
            .bind(i64::from(beat.cpus_total))
            .bind(beat.memory_mb_total as i64)
            .bind(Json(&beat.images))
            .bind(&beat.agent_version)
            .bind(beat.at)
            .bind(&beat.ssh_public_key)
            .bind(rows::pools_json(&beat.pools))
            .bind(beat.simulated)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn record_missed_beat(
        &self,
        name: &str,
        error: &str,
        offline_after: u32,
    ) -> Result<(), StoreError> {
        sqlx::query(rows::MISSED_BEAT)
            .bind(name)
            .bind(error)
            .bind(i64::from(offline_after))
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn host_usage(&self) -> Result<HashMap<String, HostUsage>, StoreError> {
        let rs: Vec<UsageRow> = sqlx::query_as(rows::HOST_USAGE)
            .fetch_all(self.pool())
            .await?;
        Ok(rs
            .into_iter()
            .filter_map(|r| {
                let host = r.host_name?;
                Some((
                    host,
                    HostUsage::from(OneUsageRow {
                        cpus: r.cpus,
                        memory_mb: r.memory_mb,
                        sandboxes: r.sandboxes,
                    }),
                ))
            })
            .collect())
    }

    async fn reserve(&self, r: &Reservation) -> Result<SandboxRecord, ReserveError> {
        let mut tx = self.begin_reservation().await.map_err(StoreError::from)?;
        if let Some(max) = r.max_owned {
            D::lock_owner(&mut tx, &r.agent_id)
                .await
                .map_err(StoreError::from)?;
            let (owned,): (i64,) = sqlx::query_as(rows::OWNED_LIVE)
                .bind(&r.agent_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(StoreError::from)?;
            if owned >= i64::from(max) {
                return Err(ReserveError::Quota(format!(
                    "agent {:?} owns {owned} live sandboxes, its quota (quotas.sandboxes_per_agent = {max}); destroy one first",
                    r.agent_id
                )));
            }
        }
        let host: Option<HostRow> = sqlx::query_as(D::HOST_FOR_RESERVATION)
            .bind(&r.host_name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        let host = HostRecord::try_from(host.ok_or_else(|| {
            ReserveError::NoRoom(format!("host {} is no longer registered", r.host_name))
        })?)?;
        if host.state != fluid_client::types::HostState::Online {
            return Err(ReserveError::NoRoom(
                format!("{:?}", host.state).to_lowercase(),
            ));
        }
        if !r.allow_overcommit {
            let usage: OneUsageRow = sqlx::query_as(rows::ONE_HOST_USAGE)
                .bind(&r.host_name)
                .fetch_one(&mut *tx)
                .await
                .map_err(StoreError::from)?;
            check_room(
                &host,
                usage.into(),
                r.cpus,
                r.memory_mb,
                r.cpu_overcommit_ratio,
            )
            .map_err(ReserveError::NoRoom)?;
        }
        let row: SandboxRow = sqlx::query_as(rows::INSERT_SANDBOX)
            .bind(&r.id)
            .bind(r.legacy_job_id.as_str())
            .bind(&r.agent_id)
            .bind(&r.name)
            .bind(&r.image)
            .bind(r.ttl_seconds)
            .bind(&r.host_name)
            .bind(i64::from(r.cpus))
            .bind(r.memory_mb as i64)
            .bind(r.now)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| match rows::unique_or(e, String::new) {
                StoreError::Conflict(_) => ReserveError::DuplicateName(r.name.clone()),
                other => ReserveError::Store(other),
            })?;
        let rec = SandboxRecord::try_from(row)?;
        append_in_tx::<D>(&mut tx, &trust_rows::created_event(r)).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(rec)
    }

    async fn get_sandbox(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError> {
        let row: Option<SandboxRow> = sqlx::query_as(rows::GET_SANDBOX)
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.map(SandboxRecord::try_from).transpose()
    }

    async fn list_sandboxes(
        &self,
        f: &SandboxFilter,
    ) -> Result<(Vec<SandboxRecord>, u64), StoreError> {
        let state = f.state.map(|s| s.as_str());
        let rs: Vec<SandboxRow> = sqlx::query_as(rows::LIST_SANDBOXES)
            .bind(&f.agent_id)
            .bind(f.legacy_job_id.as_ref().map(LegacyJobId::as_str))
            .bind(&f.image)
            .bind(state)
            .bind(&f.name)
            .bind(i64::from(f.limit))
            .bind(i64::try_from(f.offset).unwrap_or(i64::MAX))
            .fetch_all(self.pool())
            .await?;
        let (total,): (i64,) = sqlx::query_as(rows::COUNT_SANDBOXES)
            .bind(&f.agent_id)
            .bind(f.legacy_job_id.as_ref().map(LegacyJobId::as_str))
            .bind(&f.image)
            .bind(state)
            .bind(&f.name)
            .fetch_one(self.pool())
            .await?;
        Ok((rows::sandboxes(rs)?, total.max(0) as u64))
    }

    async fn sandboxes_on_host(&self, host: &str) -> Result<Vec<SandboxRecord>, StoreError> {
        let rs: Vec<SandboxRow> = sqlx::query_as(rows::SANDBOXES_ON_HOST)
            .bind(host)
            .fetch_all(self.pool())
            .await?;
        rows::sandboxes(rs)
    }

    async fn sandboxes_with_ttl(&self) -> Result<Vec<SandboxRecord>, StoreError> {
        let rs: Vec<SandboxRow> = sqlx::query_as(rows::SANDBOXES_WITH_TTL)
            .fetch_all(self.pool())
            .await?;
        rows::sandboxes(rs)
    }

    async fn update_sandbox(
        &self,
        id: &str,
        u: &SandboxUpdate,
        now: DateTime<Utc>,
    ) -> Result<Option<SandboxRecord>, StoreError> {
        let update = sqlx::query_as::<D::Db, SandboxRow>(rows::UPDATE_SANDBOX)
            .bind(id)
            .bind(u.state.map(|s| s.as_str()))
            .bind(u.ip_address.is_some())
            .bind(u.ip_address.clone().flatten())
            .bind(&u.network)
            .bind(u.error.is_some())
            .bind(u.error.clone().flatten())
            .bind(now)
            .bind(u.expect_state.map(|s| s.as_str()))
            .bind(u.start_path.map(|p| p.as_str()));
        if u.state.is_none() {
            // No change of state, nothing to audit: one statement.
            let row = update.fetch_optional(self.pool()).await?;
            return row.map(SandboxRecord::try_from).transpose();
        }
        let mut tx = self.begin_chain().await?;
        let from: Option<(String,)> = sqlx::query_as(D::SANDBOX_STATE_FOR_UPDATE)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let row: Option<SandboxRow> = match from {
            Some(_) => update.fetch_optional(&mut *tx).await?,
            None => None,
        };
        let (Some((from,)), Some(row)) = (from, row) else {
            tx.rollback().await?;
            return Ok(None);
        };
        let rec = SandboxRecord::try_from(row)?;
        let from = trust_rows::parse_state(id, &from)?;
        if from != rec.state {
            append_in_tx::<D>(&mut tx, &trust_rows::state_event(from, &rec)).await?;
        }
        tx.commit().await?;
        Ok(Some(rec))
    }

    async fn expire_command_output(
        &self,
        ended_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let r = sqlx::query(audit_rows::EXPIRE_COMMAND_OUTPUT)
            .bind(ended_before)
            .bind(i64::from(limit))
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected())
    }

    async fn insert_command(&self, c: &CommandRecord) -> Result<(), StoreError> {
        let conflict = |e| rows::unique_or(e, || format!("command {}", c.id));
        let insert = sqlx::query::<D::Db>(audit_rows::INSERT_COMMAND)
            .bind(&c.id)
            .bind(&c.sandbox_id)
            .bind(&c.agent_id)
            .bind(&c.kind)
            .bind(&c.command)
            .bind(&c.user)
            .bind(&c.workdir)
            .bind(&c.env_json)
            .bind(c.status.as_str())
            .bind(&c.stdout)
            .bind(&c.stderr)
            .bind(c.exit_code.map(i64::from))
            .bind(c.timed_out)
            .bind(c.truncated)
            .bind(&c.error)
            .bind(c.started_at)
            .bind(c.ended_at)
            .bind(c.duration_ms.map(|d| i64::try_from(d).unwrap_or(i64::MAX)));
        if c.status == CommandStatus::Running {
            // Audited when it ends (finish_command, interrupt_running_commands).
            insert.execute(self.pool()).await.map_err(conflict)?;
            return Ok(());
        }
        let mut tx = self.begin_chain().await?;
        insert.execute(&mut *tx).await.map_err(conflict)?;
        append_in_tx::<D>(&mut tx, &trust_rows::command_event(c)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn finish_command(
        &self,
        id: &str,
        end: &CommandEnd,
    ) -> Result<Option<CommandRecord>, StoreError> {
        let mut tx = self.begin_chain().await?;
        let row: Option<CommandRow> = sqlx::query_as(audit_rows::FINISH_COMMAND)
            .bind(id)
            .bind(end.status.as_str())
            .bind(&end.stdout)
            .bind(&end.stderr)
            .bind(end.exit_code.map(i64::from))
            .bind(end.timed_out)
            .bind(end.truncated)
            .bind(&end.error)
            .bind(end.ended_at)
            .bind(
                end.duration_ms
                    .map(|d| i64::try_from(d).unwrap_or(i64::MAX)),
            )
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let rec = CommandRecord::try_from(row)?;
        append_in_tx::<D>(&mut tx, &trust_rows::command_event(&rec)).await?;
        tx.commit().await?;
        Ok(Some(rec))
    }

    async fn get_command(&self, id: &str) -> Result<Option<CommandRecord>, StoreError> {
        let row: Option<CommandRow> = sqlx::query_as(audit_rows::GET_COMMAND)
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.map(CommandRecord::try_from).transpose()
    }

    async fn list_commands(
        &self,
        sandbox_id: &str,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<CommandRecord>, u64), StoreError> {
        let rs: Vec<CommandRow> = sqlx::query_as(audit_rows::LIST_COMMANDS)
            .bind(sandbox_id)
            .bind(i64::from(limit))
            .bind(i64::try_from(offset).unwrap_or(i64::MAX))
            .fetch_all(self.pool())
            .await?;
        let (total,): (i64,) = sqlx::query_as(audit_rows::COUNT_COMMANDS)
            .bind(sandbox_id)
            .fetch_one(self.pool())
            .await?;
        Ok((
            rs.into_iter()
                .map(CommandRecord::try_from)
                .collect::<Result<_, _>>()?,
            total.max(0) as u64,
        ))
    }

    async fn interrupt_running_commands(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut tx = self.begin_chain().await?;
        let rs: Vec<CommandRow> = sqlx::query_as(audit_rows::INTERRUPT_RUNNING)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
        let mut interrupted = rs
            .into_iter()
            .map(CommandRecord::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        interrupted.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
        for c in &interrupted {
            append_in_tx::<D>(&mut tx, &trust_rows::command_event(c)).await?;
        }
        tx.commit().await?;
        Ok(interrupted.len() as u64)
    }

    async fn insert_certificate(&self, c: &CertRecord) -> Result<(), StoreError> {
        sqlx::query(audit_rows::INSERT_CERT)
            .bind(&c.id)
            .bind(&c.sandbox_id)
            .bind(&c.user_id)
            .bind(&c.public_key)
            .bind(Json(&c.principals))
            .bind(i64::try_from(c.serial).unwrap_or(i64::MAX))
            .bind(c.valid_after)
            .bind(c.valid_until)
            .bind(c.created_at)
            .bind(c.revoked_at)
            .execute(self.pool())
            .await
            .map_err(|e| rows::unique_or(e, || format!("certificate {}", c.id)))?;
        Ok(())
    }

    async fn get_certificate(&self, id: &str) -> Result<Option<CertRecord>, StoreError> {
        let row: Option<CertRow> = sqlx::query_as(audit_rows::GET_CERT)
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.map(CertRecord::try_from).transpose()
    }

    async fn list_certificates(
        &self,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<CertRecord>, u64), StoreError> {
        let rs: Vec<CertRow> = sqlx::query_as(audit_rows::LIST_CERTS)
            .bind(i64::from(limit))
            .bind(i64::try_from(offset).unwrap_or(i64::MAX))
            .fetch_all(self.pool())
            .await?;
        let (total,): (i64,) = sqlx::query_as(audit_rows::COUNT_CERTS)
            .fetch_one(self.pool())
            .await?;
        let certs = rs
            .into_iter()
            .map(CertRecord::try_from)
            .collect::<Result<_, _>>()?;
        Ok((certs, total.max(0) as u64))
    }

    async fn revoke_certificate(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<CertRecord>, StoreError> {
        let row: Option<CertRow> = sqlx::query_as(audit_rows::REVOKE_CERT)
            .bind(id)
            .bind(now)
            .fetch_optional(self.pool())
            .await?;
        row.map(CertRecord::try_from).transpose()
    }

    async fn revoked_keys(&self, sandbox_id: &str) -> Result<Vec<String>, StoreError> {
        let rs: Vec<(String,)> = sqlx::query_as(audit_rows::REVOKED_KEYS)
            .bind(sandbox_id)
            .fetch_all(self.pool())
            .await?;
        Ok(rs.into_iter().map(|(k,)| k).collect())
    }

    async fn try_lock_loop(&self, key: LoopKey) -> Result<Option<LoopLock>, StoreError> {
        self.lock_loop(key).await
    }
}
