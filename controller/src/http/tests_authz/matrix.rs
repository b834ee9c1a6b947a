//! The role matrix: one row per route (method and path template, as the OpenAPI
//! document names it, plus [`crate::http::UNDOCUMENTED`]), with the exact status each
//! caller gets. Stated by hand from the permission table in `governance/auth.rs`, not
//! derived from the code under test.
//!
//! Columns: admin, operator, agent-7 (the agent that made the objects), agent-9 (an
//! agent acting on agent-7's objects), readonly (unscoped), and readonly scoped to
//! agent-9.
//!
//! In `uri` and `body`, `{sbx}` is a running sandbox of agent-7, `{snap}` a snapshot of
//! it, `{diff}` a diff of it, `{pb}` a playbook of agent-7 with one task `{task}`,
//! `{gen}` a playbook agent-7 generated from `{sbx}`, `{job}` a job agent-7 ran on
//! `{sbx}`, `{apr}` a pending approval agent-7 asked for (an egress request on `{sbx}`),
//! `{crt}` an SSH certificate agent-7 got for `{sbx}`, `{tok}` an API token, `{n}` a
//! number unique to the call: each made afresh, through the API, for every call.

use axum::http::Method;
use serde_json::{Value, json};

use crate::testing::fake_agents::AGENT_SSH_KEY;

/// How a row's answer is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    /// An ordinary request; the body is read.
    Http,
    /// Server-sent events: the answer never ends, so only its status is read.
    Events,
    /// A WebSocket upgrade over a real connection (101 when allowed).
    WebSocket,
}

#[derive(Debug)]
pub(super) struct Row {
    pub method: Method,
    /// The path template, exactly as in the OpenAPI document.
    pub route: &'static str,
    /// What is requested: `route` with its parameters filled in.
    pub uri: &'static str,
    pub body: Option<Value>,
    pub via: Via,
    /// admin, operator, agent-7, agent-9, readonly, readonly scoped to agent-9.
    pub want: [u16; 6],
}

fn row(
    method: Method,
    route: &'static str,
    uri: &'static str,
    body: Option<Value>,
    want: [u16; 6],
) -> Row {
    Row {
        method,
        route,
        uri,
        body,
        via: Via::Http,
        want,
    }
}

fn get(route: &'static str, uri: &'static str, want: [u16; 6]) -> Row {
    row(Method::GET, route, uri, None, want)
}

fn post(route: &'static str, uri: &'static str, body: Value, want: [u16; 6]) -> Row {
    row(Method::POST, route, uri, Some(body), want)
}

fn delete(route: &'static str, uri: &'static str, want: [u16; 6]) -> Row {
    row(Method::DELETE, route, uri, None, want)
}

fn via(via: Via, r: Row) -> Row {
    Row { via, ..r }
}

// Named by who gets a 2xx; every other caller gets 403. A readonly token scoped to
// agent-9 reads only what is not agent-7's, and never the fleet.
/// Everyone.
const ALL_200: [u16; 6] = [200, 200, 200, 200, 200, 200];
/// `Read` on agent-7's object: all but agent-9.
const READ_OWN: [u16; 6] = [200, 200, 200, 403, 200, 403];
/// `ReadFleet`: admin, operator, unscoped readonly.
const FLEET: [u16; 6] = [200, 200, 403, 403, 200, 403];
/// `Work` on agent-7's sandbox: admin and agent-7.
const WORK_200: [u16; 6] = [200, 403, 200, 403, 403, 403];
const WORK_201: [u16; 6] = [201, 403, 201, 403, 403, 403];
const WORK_204: [u16; 6] = [204, 403, 204, 403, 403, 403];
/// `Control` on agent-7's sandbox: admin, operator, agent-7.
const CONTROL: [u16; 6] = [200, 200, 200, 403, 403, 403];
/// `Playbooks` on agent-7's playbook (or sandbox): admin, operator, agent-7.
const OWN_PB_200: [u16; 6] = [200, 200, 200, 403, 403, 403];
const OWN_PB_201: [u16; 6] = [201, 201, 201, 403, 403, 403];
const OWN_PB_204: [u16; 6] = [204, 204, 204, 403, 403, 403];
/// Operators' permissions (`Decide`, `ManageNetwork`, `SetMode`, `RevokeAccess`).
const OPERATORS: [u16; 6] = [200, 200, 403, 403, 403, 403];
/// `ManageTokens`: admin only.
const ADMIN_200: [u16; 6] = [200, 403, 403, 403, 403, 403];

/// Every route, in the order of `docs/API.md`.
pub(super) fn rows() -> Vec<Row> {
    let key = AGENT_SSH_KEY;
    vec![
        get("/v1/health", "/v1/health", ALL_200),
        get("/v1/hosts", "/v1/hosts", ALL_200),
        post(
            "/v1/hosts",
            "/v1/hosts",
            json!({"name": "kvm-{n}", "address": "10.9.9.9:7443"}),
            [201, 201, 403, 403, 403, 403],
        ),
        get("/v1/vms", "/v1/vms", ALL_200),
        // Sandboxes.
        get("/v1/sandboxes", "/v1/sandboxes", ALL_200),
        post(
            "/v1/sandboxes",
            "/v1/sandboxes",
            json!({"source_vm_name": "debian-12", "agent_id": "agent-7"}),
            WORK_201,
        ),
        get("/v1/sandboxes/{id}", "/v1/sandboxes/{sbx}", READ_OWN),
        delete("/v1/sandboxes/{id}", "/v1/sandboxes/{sbx}", CONTROL),
        post(
            "/v1/sandboxes/{id}/start",
            "/v1/sandboxes/{sbx}/start",
            json!({}),
            CONTROL,
        ),
        post(
            "/v1/sandboxes/{id}/stop",
            "/v1/sandboxes/{sbx}/stop",
            json!({}),
            CONTROL,
        ),
        get("/v1/sandboxes/{id}/ip", "/v1/sandboxes/{sbx}/ip", READ_OWN),
        get(
            "/v1/sandboxes/{id}/mode",
            "/v1/sandboxes/{sbx}/mode",
            READ_OWN,
        ),
        row(
            Method::PUT,
            "/v1/sandboxes/{id}/mode",
            "/v1/sandboxes/{sbx}/mode",
            Some(json!({"mode": "read-only"})),
            OPERATORS,
        ),
        // Commands, files, sessions.
        post(
            "/v1/sandboxes/{id}/run",
            "/v1/sandboxes/{sbx}/run",
            json!({"command": "true"}),
            WORK_200,
        ),
        post(
            "/v1/sandboxes/{id}/command",
            "/v1/sandboxes/{sbx}/command",
            json!({"command": "true"}),
            WORK_200,
        ),
        get(
            "/v1/sandboxes/{id}/commands",
            "/v1/sandboxes/{sbx}/commands",
            READ_OWN,
        ),
        via(
            Via::Events,
            get(
                "/v1/sandboxes/{id}/stream",
                "/v1/sandboxes/{sbx}/stream",
                READ_OWN,
            ),
        ),
        via(
            Via::WebSocket,
            get(
                "/v1/sandboxes/{id}/attach",
                "/v1/sandboxes/{sbx}/attach",
                [101, 403, 101, 403, 403, 403],
            ),
        ),
        post(
            "/v1/sandboxes/{id}/files/read",
            "/v1/sandboxes/{sbx}/files/read",
            json!({"path": "/etc/hostname"}),
            READ_OWN,
        ),
        post(
            "/v1/sandboxes/{id}/files/write",
            "/v1/sandboxes/{sbx}/files/write",
            json!({"path": "/tmp/w-{n}", "content": "x"}),
            WORK_200,
        ),
        post(
            "/v1/sandboxes/{id}/files/edit",
            "/v1/sandboxes/{sbx}/files/edit",
            json!({"path": "/tmp/e-{n}", "old_str": "", "new_str": "y"}),
            WORK_200,
        ),
        // Access.
        post(
            "/v1/sandboxes/{id}/sshkey",
            "/v1/sandboxes/{sbx}/sshkey",
            json!({"public_key": key, "username": "root"}),
            WORK_204,
        ),
        post(
            "/v1/access/request",
            "/v1/access/request",
            json!({"sandbox_id": "{sbx}", "user_id": "u", "public_key": key, "ttl_minutes": 5}),
            WORK_200,
        ),
        get("/v1/access/ca-pubkey", "/v1/access/ca-pubkey", ALL_200),
        get("/v1/access/certificates", "/v1/access/certificates", FLEET),
        get(
            "/v1/access/certificate/{id}",
            "/v1/access/certificate/{crt}",
            FLEET,
        ),
        delete(
            "/v1/access/certificate/{id}",
            "/v1/access/certificate/{crt}",
            OPERATORS,
        ),
        // Network.
        get(
            "/v1/sandboxes/{id}/network",
            "/v1/sandboxes/{sbx}/network",
            READ_OWN,
        ),
        row(
            Method::PUT,
            "/v1/sandboxes/{id}/network",
            "/v1/sandboxes/{sbx}/network",
            Some(json!({"allow": [{"domain": "deb.debian.org", "protocol": "tcp", "port": 443}]})),
            OPERATORS,
        ),
        post(
            "/v1/sandboxes/{id}/network/requests",
            "/v1/sandboxes/{sbx}/network/requests?wait=false",
            json!({"destination": "10.{n}.0.0/16", "reason": "authz"}),
            [202, 202, 202, 403, 403, 403],
        ),
        // Snapshots and diffs.
        post(
            "/v1/sandboxes/{id}/snapshots",
            "/v1/sandboxes/{sbx}/snapshots",
            json!({"name": "s-{n}"}),
            WORK_201,
        ),
        post(
            "/v1/sandboxes/{id}/snapshot",
            "/v1/sandboxes/{sbx}/snapshot",
            json!({"name": "t-{n}"}),
            WORK_201,
        ),
        get(
            "/v1/sandboxes/{id}/snapshots",
            "/v1/sandboxes/{sbx}/snapshots",
            READ_OWN,
        ),
        post(
            "/v1/sandboxes/{id}/snapshots/{name}/restore",
            "/v1/sandboxes/{sbx}/snapshots/{snap}/restore",
            json!({}),
            WORK_200,
        ),
        delete(
            "/v1/sandboxes/{id}/snapshots/{name}",
            "/v1/sandboxes/{sbx}/snapshots/{snap}",
            WORK_204,
        ),
        post(
            "/v1/sandboxes/{id}/fork",
            "/v1/sandboxes/{sbx}/fork",
            json!({"snapshot": "{snap}"}),
            WORK_201,
        ),
        post(
            "/v1/sandboxes/{id}/diff",
            "/v1/sandboxes/{sbx}/diff",
            json!({"from_snapshot": "{snap}"}),
            READ_OWN,
        ),
        get(
            "/v1/sandboxes/{id}/diffs",
            "/v1/sandboxes/{sbx}/diffs",
            READ_OWN,
        ),
        get(
            "/v1/sandboxes/{id}/diffs/{diff_id}",
            "/v1/sandboxes/{sbx}/diffs/{diff}",
            READ_OWN,
        ),
        // Ansible.
        post(
            "/v1/sandboxes/{id}/generate/ansible",
            "/v1/sandboxes/{sbx}/generate/ansible",
            json!({"name": "g-{n}", "from_snapshot": "{snap}"}),
            OWN_PB_201,
        ),
        get("/v1/ansible/playbooks", "/v1/ansible/playbooks", ALL_200),
        post(
            "/v1/ansible/playbooks",
            "/v1/ansible/playbooks",
            json!({"name": "p-{n}"}),
            [201, 201, 201, 201, 403, 403],
        ),
        get(
            "/v1/ansible/playbooks/{name}",
            "/v1/ansible/playbooks/{pb}",
            READ_OWN,
        ),
        delete(
            "/v1/ansible/playbooks/{name}",
            "/v1/ansible/playbooks/{pb}",
            OWN_PB_204,
        ),
        get(
            "/v1/ansible/playbooks/{name}/export",
            "/v1/ansible/playbooks/{pb}/export",
            READ_OWN,
        ),
        post(
            "/v1/ansible/playbooks/{name}/verify",
            "/v1/ansible/playbooks/{gen}/verify",
            json!({"wait": true}),
            OWN_PB_200,
        ),
        post(
            "/v1/ansible/playbooks/{name}/tasks",
            "/v1/ansible/playbooks/{pb}/tasks",
            json!({"name": "again", "module": "ping"}),
            OWN_PB_201,
        ),
        row(
            Method::PATCH,
            "/v1/ansible/playbooks/{name}/tasks/reorder",
            "/v1/ansible/playbooks/{pb}/tasks/reorder",
            Some(json!({"task_ids": ["{task}"]})),
            OWN_PB_200,
        ),
        row(
            Method::PUT,
            "/v1/ansible/playbooks/{name}/tasks/{task_id}",
            "/v1/ansible/playbooks/{pb}/tasks/{task}",
            Some(json!({"name": "renamed"})),
            OWN_PB_200,
        ),
        delete(
            "/v1/ansible/playbooks/{name}/tasks/{task_id}",
            "/v1/ansible/playbooks/{pb}/tasks/{task}",
            OWN_PB_204,
        ),
        get("/v1/ansible/jobs", "/v1/ansible/jobs", ALL_200),
        // Playbooks, and Work on the sandbox it runs on.
        post(
            "/v1/ansible/jobs",
            "/v1/ansible/jobs",
            json!({"vm_name": "{sbx}", "playbook": "{pb}"}),
            WORK_201,
        ),
        get(
            "/v1/ansible/jobs/{job_id}",
            "/v1/ansible/jobs/{job}",
            READ_OWN,
        ),
        via(
            Via::WebSocket,
            get(
                "/v1/ansible/jobs/{job_id}/stream",
                "/v1/ansible/jobs/{job}/stream",
                [101, 101, 101, 403, 101, 403],
            ),
        ),
        // Approvals: a question about agent-7's sandbox (times out unanswered).
        post(
            "/v1/human/ask",
            "/v1/human/ask",
            json!({"prompt": "ok?", "timeout_secs": 1, "sandbox_id": "{sbx}"}),
            [200, 200, 200, 403, 403, 403],
        ),
        post(
            "/api/v1/human/ask",
            "/api/v1/human/ask",
            json!({"prompt": "ok?", "timeout_secs": 1, "sandbox_id": "{sbx}"}),
            [200, 200, 200, 403, 403, 403],
        ),
        get("/v1/approvals", "/v1/approvals", ALL_200),
        get("/v1/approvals/{id}", "/v1/approvals/{apr}", READ_OWN),
        post(
            "/v1/approvals/{id}/approve",
            "/v1/approvals/{apr}/approve",
            json!({}),
            OPERATORS,
        ),
        post(
            "/v1/approvals/{id}/reject",
            "/v1/approvals/{apr}/reject",
            json!({"comment": "no"}),
            OPERATORS,
        ),
        // Identity, tokens, audit.
        get("/v1/whoami", "/v1/whoami", ALL_200),
        get("/v1/roles", "/v1/roles", ALL_200),
        get("/v1/tokens", "/v1/tokens", ADMIN_200),
        post(
            "/v1/tokens",
            "/v1/tokens",
            json!({"name": "t-{n}", "role": "readonly"}),
            [201, 403, 403, 403, 403, 403],
        ),
        delete("/v1/tokens/{id}", "/v1/tokens/{tok}", ADMIN_200),
        get("/v1/audit", "/v1/audit", FLEET),
        // Not in the OpenAPI document (crate::http::UNDOCUMENTED).
        get("/openapi.json", "/openapi.json", ALL_200),
        get("/metrics", "/metrics", FLEET),
    ]
}
