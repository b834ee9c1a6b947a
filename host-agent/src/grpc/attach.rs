//! The Attach RPC's message sequencing, apart from the service so it can be tested
//! with fake streams.
//!
//! - [`first_open`]: the first input message must be `open` (validated into an
//!   [`AttachOpen`]); anything else is INVALID_ARGUMENT.
//! - [`session_stream`]: the rest of the input is forwarded to the shell (`stdin`,
//!   checked `resize`s); a later `open`, a bad resize or an empty message ends the
//!   call with INVALID_ARGUMENT and hangs up. When the input ends or fails, the shell
//!   is hung up. The output carries the terminal's bytes, then one `exit`, and ends
//!   there even if the client keeps its input open.

use std::pin::Pin;

use fluid_proto::model::{AttachOpen, check_terminal_size};
use fluid_proto::pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::Status;

use crate::exec::shell::{QUEUE_DEPTH, Shell, ShellInput, ShellOutput};

/// The stream an Attach returns.
pub type AttachStream = Pin<Box<dyn Stream<Item = Result<pb::AttachOutput, Status>> + Send>>;

/// How long a caller has to send `open` after starting an Attach call.
const OPEN_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads the first message, which must be a valid `open` sent within [`OPEN_WITHIN`].
pub async fn first_open<S>(input: &mut S) -> Result<AttachOpen, Status>
where
    S: Stream<Item = Result<pb::AttachInput, Status>> + Unpin,
{
    let first = tokio::time::timeout(OPEN_WITHIN, input.next())
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!(
                "no open message within {} s",
                OPEN_WITHIN.as_secs()
            ))
        })?;
    match first {
        Some(Ok(pb::AttachInput {
            input: Some(pb::attach_input::Input::Open(open)),
        })) => Ok(AttachOpen::try_from(open)?),
        Some(Err(status)) => Err(status),
        Some(Ok(_)) | None => Err(Status::invalid_argument("first message must be open")),
    }
}

/// One later input message, checked.
fn shell_input(m: pb::AttachInput) -> Result<ShellInput, Status> {
    use pb::attach_input::Input;
    match m.input {
        Some(Input::Stdin(b)) => Ok(ShellInput::Stdin(b)),
        Some(Input::Resize(size)) => {
            let (cols, rows) = check_terminal_size("resize", Some(&size))?;
            Ok(ShellInput::Resize { cols, rows })
        }
        Some(Input::Open(_)) => Err(Status::invalid_argument(
            "open may only be the first message of a session",
        )),
        None => Err(Status::invalid_argument(
            "an AttachInput must carry stdin or resize",
        )),
    }
}

fn output_pb(o: ShellOutput) -> pb::AttachOutput {
    use pb::attach_output::Output;
    let output = match o {
        ShellOutput::Data(b) => Output::Data(b),
        ShellOutput::Exit { exit_code, error } => Output::Exit(pb::AttachExit {
            exit_code,
            error: error.unwrap_or_default(),
        }),
    };
    pb::AttachOutput {
        output: Some(output),
    }
}

/// Forwards the client's input to the shell until it ends, fails or is refused (the
/// refusal goes to `errors`, which ends the call). Dropping `shell_in` hangs up.
async fn forward_input<S>(
    mut input: S,
    shell_in: mpsc::Sender<ShellInput>,
    errors: mpsc::Sender<Result<pb::AttachOutput, Status>>,
) where
    S: Stream<Item = Result<pb::AttachInput, Status>> + Unpin,
{
    while let Some(m) = input.next().await {
        let m = match m {
            Ok(m) => m,
            Err(status) => {
                tracing::debug!(code = ?status.code(), "the session's input failed: {}", status.message());
                break;
            }
        };
        match shell_input(m) {
            Ok(i) => {
                if shell_in.send(i).await.is_err() {
                    // The shell ended.
                    break;
                }
            }
            Err(status) => {
                tracing::info!(op = "attach", "{}", status.message());
                let _ = errors.send(Err(status)).await;
                break;
            }
        }
    }
}

/// Runs the session: the client's remaining `input` to `shell`, the shell's output to
/// the returned stream.
pub fn session_stream<S>(input: S, shell: Shell) -> AttachStream
where
    S: Stream<Item = Result<pb::AttachInput, Status>> + Unpin + Send + 'static,
{
    let Shell {
        input: shell_in,
        output: mut shell_out,
    } = shell;
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    let forwarder = tokio::spawn(forward_input(input, shell_in, tx.clone()));
    tokio::spawn(async move {
        loop {
            let o = tokio::select! {
                o = shell_out.recv() => o,
                // The client went away while the shell was quiet.
                () = tx.closed() => None,
            };
            let Some(o) = o else { break };
            let last = matches!(o, ShellOutput::Exit { .. });
            if tx.send(Ok(output_pb(o))).await.is_err() || last {
                break;
            }
        }
        // The session is over (or the client gone): stop reading input, which drops
        // the forwarder's sender so the call's output ends here.
        forwarder.abort();
    });
    Box::pin(ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use pb::attach_input::Input;
    use pb::attach_output::Output;

    use super::*;

    fn open_msg() -> pb::AttachInput {
        pb::AttachInput {
            input: Some(Input::Open(pb::AttachOpen {
                sandbox_id: "SBX-0123abcd".into(),
                session_id: "SES-0123abcd".into(),
                user: String::new(),
                size: Some(pb::TerminalSize {
                    cols: 120,
                    rows: 40,
                }),
                term: String::new(),
                ssh_certificate: "cert".into(),
            })),
        }
    }

    fn msg(i: Input) -> pb::AttachInput {
        pb::AttachInput { input: Some(i) }
    }

    #[tokio::test]
    async fn the_first_message_must_be_a_valid_open() {
        let mut s = tokio_stream::iter(vec![Ok(open_msg()), Ok(msg(Input::Stdin(b"x".to_vec())))]);
        let open = first_open(&mut s).await.expect("open");
        assert_eq!(
            (open.cols, open.rows, open.user.as_str(), open.term.as_str()),
            (120, 40, "root", "xterm-256color")
        );
        // The rest is left for the session.
        assert!(s.next().await.is_some());

        for first in [
            vec![Ok(msg(Input::Stdin(b"ls\n".to_vec())))],
            vec![Ok(msg(Input::Resize(pb::TerminalSize {
                cols: 1,
                rows: 1,
            })))],
            vec![Ok(pb::AttachInput { input: None })],
            vec![],
        ] {
            let e = first_open(&mut tokio_stream::iter(first))
                .await
                .expect_err("not open");
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert_eq!(e.message(), "first message must be open");
        }
        let mut bad = open_msg();
        if let Some(Input::Open(o)) = &mut bad.input {
            o.size = Some(pb::TerminalSize { cols: 0, rows: 40 });
        }
        let e = first_open(&mut tokio_stream::iter(vec![Ok(bad)]))
            .await
            .expect_err("bad size");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("size"), "{}", e.message());
        let e = first_open(&mut tokio_stream::iter(vec![Err(Status::cancelled(
            "gone",
        ))]))
        .await
        .expect_err("failed stream");
        assert_eq!(e.code(), tonic::Code::Cancelled);
    }

    /// A fake shell: what the session sends it, and a handle to make it talk.
    fn fake_shell() -> (Shell, mpsc::Receiver<ShellInput>, mpsc::Sender<ShellOutput>) {
        let (in_tx, in_rx) = mpsc::channel(QUEUE_DEPTH);
        let (out_tx, out_rx) = mpsc::channel(QUEUE_DEPTH);
        (
            Shell {
                input: in_tx,
                output: out_rx,
            },
            in_rx,
            out_tx,
        )
    }

    #[tokio::test]
    async fn input_is_forwarded_and_its_end_hangs_up() {
        let (shell, mut shell_in, shell_out) = fake_shell();
        let input = tokio_stream::iter(vec![
            Ok(msg(Input::Stdin(b"echo hi\n".to_vec()))),
            Ok(msg(Input::Resize(pb::TerminalSize {
                cols: 100,
                rows: 30,
            }))),
        ]);
        let mut out = session_stream(input, shell);
        assert_eq!(
            shell_in.recv().await,
            Some(ShellInput::Stdin(b"echo hi\n".to_vec()))
        );
        assert_eq!(
            shell_in.recv().await,
            Some(ShellInput::Resize {
                cols: 100,
                rows: 30
            })
        );
        // The input ended: the shell's input closes (hang-up).
        assert_eq!(shell_in.recv().await, None);
        // The shell's output then its exit reach the client, and the call ends.
        shell_out
            .send(ShellOutput::Data(b"bye".to_vec()))
            .await
            .expect("send");
        shell_out
            .send(ShellOutput::Exit {
                exit_code: -1,
                error: Some("hung up".into()),
            })
            .await
            .expect("send");
        let o = out.next().await.expect("data").expect("ok");
        assert_eq!(o.output, Some(Output::Data(b"bye".to_vec())));
        let o = out.next().await.expect("exit").expect("ok");
        assert_eq!(
            o.output,
            Some(Output::Exit(pb::AttachExit {
                exit_code: -1,
                error: "hung up".into()
            }))
        );
        assert!(out.next().await.is_none());
    }

    #[tokio::test]
    async fn the_call_ends_after_the_exit_even_with_input_open() {
        let (shell, _shell_in, shell_out) = fake_shell();
        let input = tokio_stream::pending::<Result<pb::AttachInput, Status>>();
        let mut out = session_stream(input, shell);
        shell_out
            .send(ShellOutput::Exit {
                exit_code: 5,
                error: None,
            })
            .await
            .expect("send");
        let o = out.next().await.expect("exit").expect("ok");
        assert_eq!(
            o.output,
            Some(Output::Exit(pb::AttachExit {
                exit_code: 5,
                error: String::new()
            }))
        );
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), out.next()).await;
        assert!(matches!(end, Ok(None)), "the stream ends: {end:?}");
    }

    #[tokio::test]
    async fn a_second_open_or_a_bad_resize_is_refused_and_hangs_up() {
        let bad_resize = msg(Input::Resize(pb::TerminalSize {
            cols: 80,
            rows: 5000,
        }));
        for (bad, needle) in [
            (open_msg(), "open may only be the first"),
            (bad_resize, "resize"),
            (pb::AttachInput { input: None }, "must carry"),
        ] {
            let (shell, mut shell_in, _shell_out) = fake_shell();
            let input = tokio_stream::iter(vec![
                Ok(msg(Input::Stdin(b"a".to_vec()))),
                Ok(bad),
                Ok(msg(Input::Stdin(b"never".to_vec()))),
            ])
            .chain(tokio_stream::pending());
            let mut out = session_stream(input, shell);
            assert_eq!(
                shell_in.recv().await,
                Some(ShellInput::Stdin(b"a".to_vec()))
            );
            let e = out.next().await.expect("an error").expect_err("refused");
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(needle), "{}", e.message());
            // Nothing after the bad message reaches the shell; its input is closed.
            assert_eq!(shell_in.recv().await, None);
        }
    }

    #[tokio::test]
    async fn a_client_that_goes_away_hangs_up() {
        let (shell, mut shell_in, shell_out) = fake_shell();
        let input = tokio_stream::pending::<Result<pb::AttachInput, Status>>();
        let out = session_stream(input, shell);
        drop(out);
        // Noticed without any output: the output side stops and the input is closed.
        let closed = tokio::time::timeout(std::time::Duration::from_secs(5), shell_in.recv()).await;
        assert_eq!(closed, Ok(None));
        let closed =
            tokio::time::timeout(std::time::Duration::from_secs(5), shell_out.closed()).await;
        assert!(closed.is_ok(), "the shell's output receiver is dropped");
    }
}
