//! Who is calling, and what they may do.
//!
//! Every REST and gRPC call carries `Authorization: Bearer <token>` (only `GET
//! /v1/health` is open). A token is 32 random bytes; the store keeps only its SHA-256,
//! so a leaked database grants nothing. A token has one [`Role`]; `agent` tokens (and
//! optionally `readonly` ones) are scoped to one `agent_id` and see only that agent's
//! sandboxes and requests.
//!
//! The whole policy is [`Permission::allows`], one table:
//!
//! | permission | admin | operator | agent | readonly |
//! |---|---|---|---|---|
//! | `Read` (sandboxes, commands, files, hosts, images, own approvals) | ✓ | ✓ | own | ✓ (own if scoped) |
//! | `ReadFleet` (audit trail, SSH certificates, `/metrics`) | ✓ | ✓ | — | unscoped only |
//! | `CreateSandbox` | ✓ | — | own agent_id | — |
//! | `Control` (start, stop, destroy) | ✓ | ✓ | own | — |
//! | `Work` (run, files write/edit, ssh keys, attach, SSH access) | ✓ | — | own | — |
//! | `Ask` (open an approval request) | ✓ | ✓ | ✓ | — |
//! | `Decide` (approve, reject) | ✓ | ✓ | — | — |
//! | `ManageHosts`, `SetMode`, `RevokeAccess` | ✓ | ✓ | — | — |
//! | `ManageNetwork` (set a sandbox's egress allow-list) | ✓ | ✓ | — | — |
//! | `Playbooks` (write playbooks, generate, verify, start Ansible jobs) | ✓ | ✓ | own | — |
//! | `ManageTokens` | ✓ | — | — | — |
//!
//! Ansible limits (each role's `limits` in [`role_table`], served by `GET /v1/roles`):
//! an agent token owns the playbooks it creates and sees only those; what it writes
//! is untrusted ([`crate::governance::auth::trusted`]): no templates or lookups, no
//! delegation, `connection`, `check_mode`, `ansible_*` variables or controller-side
//! modules (a 400 naming the field); and each of its production jobs, check runs
//! included, waits for a human's `production_apply` approval. Operators and admins
//! may use the whole of Ansible. Every job runs in the confined runner.
//!
//! A sandbox in read-only mode refuses `Control` and `Work` to everyone, admin
//! included, until an operator switches it back. An egress request
//! (`POST /v1/sandboxes/{id}/network/requests`) needs `Ask` and `Read` on the sandbox:
//! an agent asks only for its own. Generating a playbook from a sandbox also needs
//! `Read` on it, and a job against a sandbox `Work` on it; reading playbooks and jobs
//! is `Read` (a scoped caller sees only its own agent's jobs and the playbooks not
//! generated from another agent's sandbox).

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use fluid_client::governance::{Role, TokenInfo, WhoAmI};
use rand::RngCore as _;
use sha2::{Digest, Sha256};

use crate::error::ServiceError;
use crate::store::{SandboxRecord, Store, StoreError, TokenRecord};
use crate::support::ids::new_id;

/// The prefix of every token's secret (so scanners can find leaked ones).
pub const TOKEN_PREFIX: &str = "fluid_";
/// Longest token name.
pub const TOKEN_NAME_MAX: usize = 64;

/// What an authenticated caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub token_id: String,
    pub name: String,
    pub role: Role,
    pub agent_id: Option<String>,
}

impl Caller {
    /// The agent id this caller is confined to, if any.
    pub fn scope(&self) -> Option<&str> {
        match self.role {
            Role::Agent | Role::Readonly => self.agent_id.as_deref(),
            Role::Admin | Role::Operator => None,
        }
    }

    pub fn whoami(&self) -> WhoAmI {
        WhoAmI {
            token_id: self.token_id.clone(),
            name: self.name.clone(),
            role: self.role,
            agent_id: self.agent_id.clone(),
        }
    }
}

/// Classes of operation; each endpoint belongs to exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    Read,
    ReadFleet,
    CreateSandbox,
    Control,
    Work,
    Ask,
    Decide,
    ManageHosts,
    SetMode,
    RevokeAccess,
    ManageTokens,
    ManageNetwork,
    Playbooks,
}

impl Permission {
    pub const ALL: [Permission; 13] = [
        Self::Read,
        Self::ReadFleet,
        Self::CreateSandbox,
        Self::Control,
        Self::Work,
        Self::Ask,
        Self::Decide,
        Self::ManageHosts,
        Self::SetMode,
        Self::RevokeAccess,
        Self::ManageTokens,
        Self::ManageNetwork,
        Self::Playbooks,
    ];

    /// The roles that hold this permission (before scoping and read-only mode).
    pub fn roles(self) -> &'static [Role] {
        use Role::*;
        match self {
            Self::Read => &[Admin, Operator, Agent, Readonly],
            Self::ReadFleet => &[Admin, Operator, Readonly],
            Self::CreateSandbox | Self::Work => &[Admin, Agent],
            Self::Control | Self::Ask | Self::Playbooks => &[Admin, Operator, Agent],
            Self::Decide
            | Self::ManageHosts
            | Self::SetMode
            | Self::RevokeAccess
            | Self::ManageNetwork => &[Admin, Operator],
            Self::ManageTokens => &[Admin],
        }
    }

    /// What the permission covers, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Read => "reading",
            Self::ReadFleet => "reading the audit trail, certificates and metrics",
            Self::CreateSandbox => "creating sandboxes",
            Self::Control => "starting, stopping and destroying sandboxes",
            Self::Work => "changing what is inside a sandbox",
            Self::Ask => "asking for a human decision",
            Self::Decide => "deciding approvals",
            Self::ManageHosts => "managing hosts",
            Self::SetMode => "changing a sandbox's mode",
            Self::RevokeAccess => "revoking SSH certificates",
            Self::ManageTokens => "managing API tokens",
            Self::ManageNetwork => "changing a sandbox's network egress",
            Self::Playbooks => "writing and running Ansible playbooks",
        }
    }

    /// The permission's name, as `GET /v1/roles` lists it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "Read",
            Self::ReadFleet => "ReadFleet",
            Self::CreateSandbox => "CreateSandbox",
            Self::Control => "Control",
            Self::Work => "Work",
            Self::Ask => "Ask",
            Self::Decide => "Decide",
            Self::ManageHosts => "ManageHosts",
            Self::SetMode => "SetMode",
            Self::RevokeAccess => "RevokeAccess",
            Self::ManageTokens => "ManageTokens",
            Self::ManageNetwork => "ManageNetwork",
            Self::Playbooks => "Playbooks",
        }
    }

    /// What the permission covers, in one line (`GET /v1/roles`).
    pub fn summary(self) -> &'static str {
        match self {
            Self::Read => {
                "read sandboxes, commands, files, hosts, images, playbooks, jobs and own approvals"
            }
            Self::ReadFleet => "read the audit trail, SSH certificates and metrics",
            Self::CreateSandbox => "create (and fork) sandboxes",
            Self::Control => "start, stop and destroy sandboxes",
            Self::Work => {
                "run commands, write files, attach, take SSH access and snapshots in a sandbox"
            }
            Self::Ask => "open approval requests (questions, egress requests)",
            Self::Decide => "approve or reject approval requests",
            Self::ManageHosts => "manage hosts",
            Self::SetMode => "switch a sandbox between read-only and read-write",
            Self::RevokeAccess => "revoke SSH certificates",
            Self::ManageTokens => "create, list and revoke API tokens",
            Self::ManageNetwork => "set a sandbox's egress allow-list",
            Self::Playbooks => {
                "write playbooks, generate them from sandboxes, verify them, start Ansible jobs"
            }
        }
    }

    /// Operations a read-only sandbox refuses.
    pub fn changes_sandbox(self) -> bool {
        matches!(self, Self::Control | Self::Work)
    }
}

/// Who each role is for (`GET /v1/roles`).
pub fn role_description(role: Role) -> &'static str {
    match role {
        Role::Admin => "everything, including API tokens",
        Role::Operator => {
            "a human running the fleet: hosts, modes, network, approvals; no work inside sandboxes"
        }
        Role::Agent => {
            "an AI agent: works in its own agent's sandboxes, writes and runs its own playbooks"
        }
        Role::Readonly => "an observer: reads (only one agent's things when scoped)",
    }
}

/// Limits beyond the permissions (`GET /v1/roles`): scoping, Ansible content,
/// production jobs.
pub fn role_limits(role: Role) -> &'static [&'static str] {
    match role {
        Role::Admin | Role::Operator => &[
            "Ansible: trusted with the whole of Ansible in playbooks (templates, lookups, delegation, any module); jobs still run in the confined runner (bubblewrap, [ansible] sandbox), which sees only the job's playbook, inventory and key",
            "Ansible: production jobs run the check (--check --diff) at once; the apply waits for a production_apply approval that shows the whole playbook",
            "a read-only sandbox refuses Control and Work to every role",
        ],
        Role::Agent => &[
            "scoped to its agent_id: sandboxes, playbooks, jobs and approvals of another agent are refused (403) or left out of lists",
            "Ansible: owns the playbooks it creates; reads, edits, deletes, exports, verifies and runs only those",
            "Ansible: its content never runs on the controller: no templates ({{ }}, {% %}, {# #}) or lookups in any string, no delegate_to, local_action, connection, check_mode, run_once, delegate_facts, no ansible_* or magic variables in vars/set_fact, no controller-side modules (add_host, group_by, include_*/import_*, include_vars, script, fetch, …), copy/template src only a generated artefact; conditions compare and call nothing (400 naming the field; unsafe strings {\"__ansible_unsafe\": …} may hold anything)",
            "Ansible: every production job, check runs included, waits for a production_apply approval showing the whole playbook before anything runs",
            "a read-only sandbox refuses Control and Work to every role",
        ],
        Role::Readonly => &[
            "scoped when it has an agent_id: sees only that agent's sandboxes, playbooks and jobs, and not the fleet (ReadFleet)",
            "Ansible: writes nothing (no Playbooks permission); were it allowed, its content would get the agent's rules",
        ],
    }
}

/// The whole role table, from [`Permission::roles`] (the table the checks use).
pub fn role_table() -> Vec<fluid_client::governance::RoleInfo> {
    use fluid_client::governance::{RoleInfo, RolePermission};
    [Role::Admin, Role::Operator, Role::Agent, Role::Readonly]
        .into_iter()
        .map(|role| RoleInfo {
            role,
            description: role_description(role).to_owned(),
            permissions: Permission::ALL
                .into_iter()
                .filter(|p| p.roles().contains(&role))
                .map(|p| {
                    let scoped = match role {
                        Role::Agent => !matches!(p, Permission::Ask),
                        Role::Readonly => p == Permission::Read,
                        Role::Admin | Role::Operator => false,
                    };
                    RolePermission {
                        permission: p.name().to_owned(),
                        description: p.summary().to_owned(),
                        scope: if scoped {
                            if role == Role::Readonly {
                                "own agent if scoped".to_owned()
                            } else {
                                "own agent".to_owned()
                            }
                        } else {
                            "all".to_owned()
                        },
                    }
                })
                .collect(),
            limits: role_limits(role).iter().map(|s| (*s).to_owned()).collect(),
        })
        .collect()
}

/// The role table for `caller` (`Read`: any authenticated caller).
pub fn role_table_for(
    caller: &Caller,
) -> Result<Vec<fluid_client::governance::RoleInfo>, ServiceError> {
    check(caller, Permission::Read)?;
    Ok(role_table())
}

/// Why a caller is refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// 401.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403.
    #[error("{0}")]
    Forbidden(String),
    /// The tokens could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The sandbox `id`, once `caller` may do `p` on it: role, ownership, read-only mode.
/// A sandbox that does not exist is NotFound, after the role check, so a role without
/// the permission learns nothing. Every service method that takes a caller and a
/// sandbox id asks this first; the edges (REST, gRPC) check nothing themselves.
pub async fn authorized_sandbox(
    store: &dyn Store,
    caller: &Caller,
    id: &fluid_proto::model::SandboxId,
    p: Permission,
) -> Result<SandboxRecord, ServiceError> {
    check(caller, p)?;
    let sb = store
        .get_sandbox(id.as_str())
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("sandbox {id} not found")))?;
    check_sandbox(caller, p, &sb)?;
    Ok(sb)
}

impl From<AuthError> for ServiceError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthenticated(m) => Self::Unauthenticated(m),
            AuthError::Forbidden(m) => Self::Forbidden(m),
            AuthError::Store(e) => Self::Store(e),
        }
    }
}

impl From<TokenError> for ServiceError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Invalid(m) => Self::Invalid(m),
            TokenError::NotFound(m) => Self::NotFound(m),
            TokenError::Store(e) => Self::Store(e),
        }
    }
}

fn role_list(roles: &[Role]) -> String {
    let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    match names.as_slice() {
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
        [] => "no role".to_owned(),
    }
}

/// Checks the caller's role for `p` (not scope or mode: see [`check_sandbox`]).
pub fn check(caller: &Caller, p: Permission) -> Result<(), AuthError> {
    let roles = p.roles();
    if roles.contains(&caller.role) {
        if p == Permission::ReadFleet && caller.scope().is_some() {
            return Err(AuthError::Forbidden(format!(
                "token {:?} is scoped to agent {:?}: {} needs an unscoped admin, operator or readonly token",
                caller.name,
                caller.agent_id.as_deref().unwrap_or_default(),
                p.describe()
            )));
        }
        return Ok(());
    }
    Err(AuthError::Forbidden(format!(
        "role {} may not do this ({}): needs role {}",
        caller.role,
        p.describe(),
        role_list(roles)
    )))
}

/// Checks `p` on one sandbox: the role, the caller's scope (an agent works only on its
/// own sandboxes) and the sandbox's read-only mode.
pub fn check_sandbox(caller: &Caller, p: Permission, sb: &SandboxRecord) -> Result<(), AuthError> {
    check(caller, p)?;
    check_owner(caller, &sb.agent_id, &sb.id)?;
    if p.changes_sandbox() && sb.read_only {
        return Err(AuthError::Forbidden(format!(
            "sandbox {} is read-only: {} is refused until an operator sets PUT /v1/sandboxes/{}/mode to read-write",
            sb.id,
            p.describe(),
            sb.id
        )));
    }
    Ok(())
}

/// A scoped caller may only touch what belongs to its agent id.
pub fn check_owner(caller: &Caller, owner: &str, what: &str) -> Result<(), AuthError> {
    match caller.scope() {
        Some(own) if own != owner => Err(AuthError::Forbidden(format!(
            "{what} belongs to another agent; token {:?} is scoped to agent {own:?}",
            caller.name
        ))),
        _ => Ok(()),
    }
}

/// A new token's secret: the prefix and 32 random bytes, base64url.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// What the store keeps of a secret.
pub fn secret_sha256(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The token in an `Authorization` header value, if it is a bearer token.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Validates a token's name and scope for its role.
pub fn check_new_token(name: &str, role: Role, agent_id: Option<&str>) -> Result<(), String> {
    if name.is_empty()
        || name.len() > TOKEN_NAME_MAX
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
    {
        return Err(format!(
            "name: 1-{TOKEN_NAME_MAX} characters of letters, digits, - _ . @"
        ));
    }
    if let Some(a) = agent_id {
        crate::support::ids::check_agent_id(a).map_err(|e| e.to_string())?;
    }
    match (role, agent_id) {
        (Role::Agent, None) => Err("agent_id: an agent token needs --agent-id".into()),
        (Role::Admin | Role::Operator, Some(_)) => Err(format!(
            "agent_id: a {role} token is not scoped to an agent; leave agent_id out"
        )),
        _ => Ok(()),
    }
}

/// Tokens: creation, lookup, revocation.
pub struct Authenticator {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator")
    }
}

impl Authenticator {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// The caller a bearer token belongs to.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Caller, AuthError> {
        let Some(token) = token else {
            return Err(AuthError::Unauthenticated(
                "missing bearer token: send Authorization: Bearer <token> (create one with fluid-controller token create)".into(),
            ));
        };
        let rec = self
            .store
            .token_by_hash(&secret_sha256(token))
            .await?
            .ok_or_else(|| AuthError::Unauthenticated("invalid token".into()))?;
        if rec.revoked_at.is_some() {
            return Err(AuthError::Unauthenticated(format!(
                "token {:?} has been revoked",
                rec.name
            )));
        }
        Ok(Caller {
            token_id: rec.id,
            name: rec.name,
            role: rec.role,
            agent_id: rec.agent_id,
        })
    }

    /// Creates a token; the secret is returned once and never stored.
    pub async fn create(
        &self,
        name: &str,
        role: Role,
        agent_id: Option<&str>,
    ) -> Result<(String, TokenInfo), TokenError> {
        check_new_token(name, role, agent_id).map_err(TokenError::Invalid)?;
        let secret = new_secret();
        let rec = TokenRecord {
            id: new_id("TOK-"),
            name: name.to_owned(),
            role,
            agent_id: agent_id.map(str::to_owned),
            created_at: Utc::now(),
            revoked_at: None,
        };
        self.store
            .insert_token(&rec, &secret_sha256(&secret))
            .await?;
        Ok((secret, rec.to_api()))
    }

    pub async fn list(&self) -> Result<Vec<TokenInfo>, TokenError> {
        Ok(self
            .store
            .list_tokens()
            .await?
            .iter()
            .map(TokenRecord::to_api)
            .collect())
    }

    /// [`Self::create`] for `caller` (`ManageTokens`): the API's.
    pub async fn create_for(
        &self,
        caller: &Caller,
        name: &str,
        role: Role,
        agent_id: Option<&str>,
    ) -> Result<(String, TokenInfo), ServiceError> {
        check(caller, Permission::ManageTokens)?;
        Ok(self.create(name, role, agent_id).await?)
    }

    /// [`Self::list`] for `caller` (`ManageTokens`).
    pub async fn list_for(&self, caller: &Caller) -> Result<Vec<TokenInfo>, ServiceError> {
        check(caller, Permission::ManageTokens)?;
        Ok(self.list().await?)
    }

    /// [`Self::revoke`] for `caller` (`ManageTokens`).
    pub async fn revoke_for(&self, caller: &Caller, id: &str) -> Result<TokenInfo, ServiceError> {
        check(caller, Permission::ManageTokens)?;
        Ok(self.revoke(id).await?)
    }

    pub async fn revoke(&self, id_or_name: &str) -> Result<TokenInfo, TokenError> {
        self.store
            .revoke_token(id_or_name, Utc::now())
            .await?
            .map(|r| r.to_api())
            .ok_or_else(|| TokenError::NotFound(format!("no token {id_or_name:?}")))
    }
}

/// What `fluid-controller token …` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenAction {
    Create {
        role: Role,
        name: String,
        agent_id: Option<String>,
    },
    List,
    Revoke {
        id_or_name: String,
    },
}

/// Runs a token command on the store: the new secret alone on stdout (so
/// `TOKEN=$(fluid-controller token create …)` works), everything else on stderr or as
/// a table. Audited with the local user as the actor.
pub async fn token_command(store: Arc<dyn Store>, action: TokenAction) -> anyhow::Result<()> {
    let auth = Authenticator::new(store.clone());
    let actor = format!(
        "local:{}",
        std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "unknown".into())
    );
    let audit = |action: &str, t: &TokenInfo| {
        crate::store::NewAuditEvent::system("token", action, action)
            .target(t.id.clone())
            .details(serde_json::json!({"name": t.name, "role": t.role, "agent_id": t.agent_id}))
            .by(&actor, "cli")
    };
    match action {
        TokenAction::Create {
            role,
            name,
            agent_id,
        } => {
            let (secret, info) = auth.create(&name, role, agent_id.as_deref()).await?;
            store.append_audit(&audit("created", &info)).await?;
            println!("{secret}");
            eprintln!(
                "created token {} ({}, role {}{}); the secret above is shown only now",
                info.id,
                info.name,
                info.role,
                info.agent_id
                    .as_deref()
                    .map(|a| format!(", agent {a}"))
                    .unwrap_or_default()
            );
        }
        TokenAction::List => {
            println!(
                "{:<16} {:<24} {:<9} {:<20} {:<26} REVOKED",
                "ID", "NAME", "ROLE", "AGENT", "CREATED"
            );
            for t in auth.list().await? {
                println!(
                    "{:<16} {:<24} {:<9} {:<20} {:<26} {}",
                    t.id,
                    t.name,
                    t.role,
                    t.agent_id.as_deref().unwrap_or("-"),
                    t.created_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    t.revoked_at
                        .map(|r| r.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_else(|| "-".into())
                );
            }
        }
        TokenAction::Revoke { id_or_name } => {
            let info = auth.revoke(&id_or_name).await?;
            store.append_audit(&audit("revoked", &info)).await?;
            eprintln!("revoked token {} ({})", info.id, info.name);
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether `caller` is trusted with the whole of Ansible (templates, delegation,
/// controller-side modules): operators and admins. Agent and readonly tokens are not.
pub fn trusted(caller: &Caller) -> bool {
    matches!(caller.role, Role::Admin | Role::Operator)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: Role, agent: Option<&str>) -> Caller {
        Caller {
            token_id: "TOK-x".into(),
            name: "t".into(),
            role,
            agent_id: agent.map(str::to_owned),
        }
    }

    #[test]
    fn every_role_is_named_in_refusals() {
        let e = check(&caller(Role::Agent, Some("a")), Permission::Decide).expect_err("refused");
        assert_eq!(
            e.to_string(),
            "role agent may not do this (deciding approvals): needs role admin or operator"
        );
        let e = check(&caller(Role::Operator, None), Permission::ManageTokens).expect_err("no");
        assert!(e.to_string().ends_with("needs role admin"), "{e}");
    }

    #[test]
    fn scoped_tokens_cannot_read_the_fleet() {
        assert!(check(&caller(Role::Readonly, None), Permission::ReadFleet).is_ok());
        assert!(check(&caller(Role::Readonly, Some("a")), Permission::ReadFleet).is_err());
        assert!(check(&caller(Role::Agent, Some("a")), Permission::ReadFleet).is_err());
    }

    #[test]
    fn owners_and_strangers() {
        let a = caller(Role::Agent, Some("a"));
        assert!(check_owner(&a, "a", "SBX-1").is_ok());
        let e = check_owner(&a, "b", "sandbox SBX-1").expect_err("stranger");
        assert!(e.to_string().contains("belongs to another agent"), "{e}");
        assert!(check_owner(&caller(Role::Operator, None), "b", "x").is_ok());
    }

    #[test]
    fn the_role_table_is_the_checks_table() {
        let t = role_table();
        assert_eq!(t.len(), 4);
        for r in &t {
            for p in Permission::ALL {
                let listed = r.permissions.iter().any(|x| x.permission == p.name());
                assert_eq!(
                    listed,
                    p.roles().contains(&r.role),
                    "{} {}",
                    r.role,
                    p.name()
                );
            }
        }
        let agent = t.iter().find(|r| r.role == Role::Agent).expect("agent");
        assert!(agent.limits.iter().any(|l| l.contains("delegate_to")));
        assert!(!agent.permissions.iter().any(|p| p.permission == "Decide"));
    }

    #[test]
    fn bearer_headers() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
    }

    #[test]
    fn secrets_are_random_and_hashed() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 43);
        assert_eq!(secret_sha256(&a).len(), 64);
        assert_ne!(secret_sha256(&a), secret_sha256(&b));
    }

    #[test]
    fn token_names_and_scopes_are_checked() {
        assert!(check_new_token("ci-bot", Role::Agent, Some("agent-1")).is_ok());
        assert!(check_new_token("ci-bot", Role::Agent, None).is_err());
        assert!(check_new_token("root", Role::Admin, Some("x")).is_err());
        assert!(check_new_token("", Role::Admin, None).is_err());
        assert!(check_new_token("a b", Role::Admin, None).is_err());
        assert!(check_new_token("viewer", Role::Readonly, Some("a")).is_ok());
    }
}
