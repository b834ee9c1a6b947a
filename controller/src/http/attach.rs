//! `GET /v1/sandboxes/{id}/attach`: an interactive shell over a WebSocket.
//!
//! Frames: client → server binary frames are stdin bytes; a text frame
//! `{"resize":{"cols":N,"rows":M}}` resizes the terminal (other text frames are
//! ignored). Server → client binary frames are terminal output; at the end one text
//! frame `{"exit":{"exit_code":N,"error":…,"session_id":"SES-…"}}`, then a close.
//! Closing the socket hangs up. Everything that can refuse (400, 404, 409, 503) does
//! so before the upgrade, as a JSON error.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use fluid_client::types::{AttachControl, AttachEvent, AttachExit, ErrorBody};
use futures::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use tokio::sync::mpsc;
use utoipa::IntoParams;

use super::AppState;
use super::error::ApiError;
use super::params::{ApiPath, ApiQuery};
use crate::agents::AttachInput;
use crate::error::parse_id;
use crate::governance::auth::Caller;
use crate::work::attach::{
    AttachRequest, AttachService, PreparedSession, SESSION_BUFFER, SessionOutput,
};

/// Largest frame a client may send.
pub const MAX_FRAME: usize = 1024 * 1024;

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AttachParams {
    /// Terminal columns (default 80; 1-1000).
    pub cols: Option<u32>,
    /// Terminal rows (default 24; 1-1000).
    pub rows: Option<u32>,
    /// Unix user (default root).
    pub user: Option<String>,
    /// TERM (default xterm-256color).
    pub term: Option<String>,
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/attach", tag = "commands",
    params(("id" = String, Path, description = "SBX-…"), AttachParams),
    responses((status = 101, description = "WebSocket: binary frames are stdin (client) and terminal output (server); text frames {\"resize\":{cols,rows}} (client, AttachControl) and, last, {\"exit\":{exit_code,error,session_id}} (server, AttachEvent). Audited as a command of kind attach."),
        (status = 400, description = "bad parameters, or not a WebSocket upgrade", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "the sandbox is not RUNNING", body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn attach(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<AttachParams>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let req = AttachRequest {
        user: params.user,
        term: params.term,
        cols: params.cols,
        rows: params.rows,
    };
    let prepared = state.attach.prepare(&caller, &id, req).await?;
    let ws = ws.map_err(|e| {
        ApiError::new(e.status(), "attach needs a WebSocket upgrade").with_details(e.body_text())
    })?;
    let svc = state.attach.clone();
    Ok(ws
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .on_upgrade(move |socket| bridge(socket, svc, prepared)))
}

/// A client's text frame as input (`None` for anything but a valid resize).
fn control(text: &str) -> Option<AttachInput> {
    match serde_json::from_str::<AttachControl>(text) {
        Ok(AttachControl::Resize(s))
            if (1..=1000).contains(&s.cols) && (1..=1000).contains(&s.rows) =>
        {
            Some(AttachInput::Resize {
                cols: s.cols,
                rows: s.rows,
            })
        }
        _ => None,
    }
}

/// Runs a session over an upgraded socket: frames in become input, output becomes
/// frames, both through bounded channels; ends with the exit frame and a close.
pub async fn bridge(socket: WebSocket, svc: Arc<AttachService>, session: PreparedSession) {
    let session_id = session.session_id.clone();
    let (mut sink, mut frames) = socket.split();
    let (in_tx, in_rx) = mpsc::channel(SESSION_BUFFER);
    let (out_tx, mut out_rx) = mpsc::channel(SESSION_BUFFER);
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = frames.next().await {
            let input = match msg {
                Message::Binary(b) => AttachInput::Stdin(b.to_vec()),
                Message::Text(t) => match control(t.as_str()) {
                    Some(i) => i,
                    None => {
                        tracing::debug!(session = %session_id, "ignoring a text frame that is not a resize");
                        continue;
                    }
                },
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            if in_tx.send(input).await.is_err() {
                break;
            }
        }
        // Dropping `in_tx` hangs up.
    });
    let writer = async move {
        while let Some(o) = out_rx.recv().await {
            match o {
                SessionOutput::Data(b) => {
                    if sink.send(Message::Binary(b.into())).await.is_err() {
                        return;
                    }
                }
                SessionOutput::Exit {
                    session_id,
                    exit_code,
                    error,
                } => {
                    let end = AttachEvent::Exit(AttachExit {
                        exit_code,
                        error,
                        session_id,
                    });
                    let text = serde_json::to_string(&end).unwrap_or_else(|_| "{}".into());
                    let _ = sink.send(Message::Text(text.into())).await;
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame {
                            code: close_code::NORMAL,
                            reason: "session ended".into(),
                        })))
                        .await;
                    return;
                }
            }
        }
    };
    let run = svc.run(session, in_rx, out_tx);
    let _ = tokio::join!(run, writer);
    reader.abort();
}
