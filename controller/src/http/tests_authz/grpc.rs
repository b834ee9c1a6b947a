//! The public gRPC API's calls, by caller: the same permissions as REST, on a sandbox
//! and approvals agent-7 made through the REST API.

use fluid_client::governance::Role;
use fluid_proto::api;
use fluid_proto::api::approvals_client::ApprovalsClient;
use fluid_proto::api::sandboxes_client::SandboxesClient;
use futures::StreamExt as _;
use tonic::Code;

use super::{COLUMNS, Matrix, fill};
use crate::grpc::tests::{Bearer, serve_api};

/// A call's outcome: `Ok` or the status code.
type Outcome = Result<(), Code>;

const OK: Outcome = Ok(());
const DENIED: Outcome = Err(Code::PermissionDenied);

/// Each call and what each column gets (admin, operator, agent-7, agent-9, readonly,
/// readonly scoped to agent-9).
const WANT: [(&str, [Outcome; 6]); 4] = [
    ("Sandboxes.Exec", [OK, DENIED, OK, DENIED, DENIED, DENIED]),
    ("Sandboxes.GetSandbox", [OK, OK, OK, DENIED, OK, DENIED]),
    ("Approvals.ListApprovals", [OK, OK, OK, OK, OK, OK]),
    ("Approvals.Decide", [OK, OK, DENIED, DENIED, DENIED, DENIED]),
];

async fn calls(
    channel: tonic::transport::Channel,
    token: Option<String>,
    sandbox: &str,
    approval: &str,
) -> [Outcome; 4] {
    let mut sb = SandboxesClient::with_interceptor(channel.clone(), Bearer(token.clone()));
    let mut ap = ApprovalsClient::with_interceptor(channel, Bearer(token));
    let exec = match sb
        .exec(api::ExecCommandRequest {
            sandbox_id: sandbox.to_owned(),
            command: "true".into(),
            ..Default::default()
        })
        .await
    {
        // Drained: the command completes.
        Ok(s) => {
            let _ = s.into_inner().collect::<Vec<_>>().await;
            Ok(())
        }
        Err(e) => Err(e),
    };
    let get = sb
        .get_sandbox(api::GetSandboxRequest {
            sandbox_id: sandbox.to_owned(),
        })
        .await
        .map(|_| ());
    let list = ap
        .list_approvals(api::ListApprovalsRequest::default())
        .await
        .map(|_| ());
    let decide = ap
        .decide(api::DecideRequest {
            approval_id: approval.to_owned(),
            approve: true,
            comment: String::new(),
        })
        .await
        .map(|_| ());
    [exec, get, list, decide].map(|r| r.map_err(|s| s.code()))
}

#[tokio::test]
async fn grpc_calls_by_role() {
    let m = Matrix::new().await;
    let (channel, stop) = serve_api(&m.app).await;
    let revoked = m.app.token("gone", Role::Admin, None).await;
    m.app.state.auth.revoke("gone").await.expect("revoke");
    let mut callers: Vec<(&str, Option<String>, [Outcome; 4])> = COLUMNS
        .iter()
        .enumerate()
        .map(|(col, who)| {
            let want = WANT.map(|(_, w)| w[col]);
            (*who, Some(m.tokens[col].clone()), want)
        })
        .collect();
    let unauthenticated = [Err(Code::Unauthenticated); 4];
    callers.push(("no token", None, unauthenticated));
    callers.push(("a bad token", Some("fluid_nope".into()), unauthenticated));
    callers.push(("a revoked token", Some(revoked), unauthenticated));
    let mut checked = 0;
    for (who, token, want) in callers {
        // A fresh approval each time: a decision uses it up.
        let with = m.objects("{sbx} {apr}").await;
        let (sandbox, approval) = (fill("{sbx}", &with), fill("{apr}", &with));
        let got = calls(channel.clone(), token, &sandbox, &approval).await;
        for (i, (call, _)) in WANT.iter().enumerate() {
            assert_eq!(got[i], want[i], "{call} as {who}");
            checked += 1;
        }
        m.clean().await;
    }
    assert_eq!(checked, (COLUMNS.len() + 3) * WANT.len());
    stop.cancel();
}
