//! `fluidctl read`, `write` and `edit`: files inside a sandbox.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use fluid_client::types::{EditFileRequest, ReadFileRequest, WriteFileRequest};

use crate::sandboxes::check_id;
use crate::{Ctx, emit, emit_json, encoding};

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Sandbox id (`SBX-…`).
    pub sandbox: String,
    /// Absolute path of the file in the sandbox.
    pub path: String,
    /// Start at this byte.
    #[arg(long, value_name = "N")]
    pub offset: Option<u64>,
    /// Read at most this many bytes [default: the controller's, 1 MiB].
    #[arg(long, short = 'l', value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Write the bytes to this local file instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").args(["from", "content"])))]
pub struct WriteArgs {
    /// Sandbox id (`SBX-…`).
    pub sandbox: String,
    /// Absolute path of the file in the sandbox (created or replaced).
    pub path: String,
    /// Upload this local file [default: read standard input].
    #[arg(long, short = 'f', value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// Write this text.
    #[arg(long, short = 'c', value_name = "TEXT")]
    pub content: Option<String>,
    /// Octal permission bits [default: kept, or 0644 for a new file].
    #[arg(long, short = 'm', value_name = "MODE", value_parser = parse_mode)]
    pub mode: Option<String>,
}

#[derive(Debug, Args)]
pub struct EditArgs {
    /// Sandbox id (`SBX-…`).
    pub sandbox: String,
    /// Absolute path of the file in the sandbox.
    pub path: String,
    /// Text to replace; it must occur exactly once. Empty: create the file with --new.
    #[arg(long, value_name = "STR", allow_hyphen_values = true)]
    pub old: String,
    /// Replacement text.
    #[arg(long, value_name = "STR", allow_hyphen_values = true)]
    pub new: String,
}

/// `644`, `0644`, `0o755` → the API's `0644` form.
pub fn parse_mode(s: &str) -> Result<String, String> {
    let digits = s.trim().trim_start_matches("0o");
    let value = u32::from_str_radix(digits, 8)
        .ok()
        .filter(|v| *v <= 0o7777 && !digits.is_empty())
        .ok_or_else(|| format!("`{s}` is not an octal file mode like 0644"))?;
    Ok(format!("{value:04o}"))
}

/// The note for a partial read, when more of the file remains.
pub fn truncation_note(offset: u64, got: usize, size: u64) -> String {
    let got = u64::try_from(got).unwrap_or(u64::MAX);
    let next = offset.saturating_add(got);
    format!("note: showed bytes {offset}..{next} of {size}; continue with --offset {next}")
}

pub async fn read(ctx: &Ctx, args: ReadArgs) -> anyhow::Result<()> {
    let id = check_id(&args.sandbox)?;
    let req = ReadFileRequest {
        path: args.path.clone(),
        offset: args.offset,
        limit: args.limit,
    };
    let resp = ctx
        .client
        .read_file(id, &req)
        .await
        .with_context(|| format!("cannot read {} in {id}", args.path))?;
    if ctx.json {
        return emit_json(&resp);
    }
    let bytes = encoding::decode(&resp.content, &resp.encoding)?;
    match &args.output {
        Some(file) => std::fs::write(file, &bytes)
            .with_context(|| format!("cannot write {}", file.display()))?,
        None => {
            let mut out = std::io::stdout().lock();
            // `fluidctl read … | head` closing the pipe is fine.
            let _ = out.write_all(&bytes).and_then(|()| out.flush());
        }
    }
    if resp.truncated {
        eprintln!(
            "{}",
            truncation_note(args.offset.unwrap_or(0), bytes.len(), resp.size)
        );
    }
    Ok(())
}

impl WriteArgs {
    /// The bytes to upload: `--content`, `--from`, else standard input.
    fn bytes(&self) -> anyhow::Result<Vec<u8>> {
        if let Some(text) = &self.content {
            return Ok(text.clone().into_bytes());
        }
        if let Some(file) = &self.from {
            return std::fs::read(file).with_context(|| format!("cannot read {}", file.display()));
        }
        use std::io::IsTerminal;
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            eprintln!("reading the content from standard input (end with Ctrl-D)");
        }
        let mut buf = Vec::new();
        stdin
            .lock()
            .read_to_end(&mut buf)
            .context("cannot read standard input")?;
        Ok(buf)
    }

    pub fn to_request(&self, bytes: Vec<u8>) -> WriteFileRequest {
        let (content, encoding) = encoding::encode(bytes);
        WriteFileRequest {
            path: self.path.clone(),
            content,
            encoding,
            mode: self.mode.clone(),
        }
    }
}

pub async fn write(ctx: &Ctx, args: WriteArgs) -> anyhow::Result<()> {
    let id = check_id(&args.sandbox)?;
    let req = args.to_request(args.bytes()?);
    let resp = ctx
        .client
        .write_file(id, &req)
        .await
        .with_context(|| format!("cannot write {} in {id}", args.path))?;
    if ctx.json {
        return emit_json(&resp);
    }
    emit(&format!("wrote {} ({} bytes)", resp.path, resp.size));
    Ok(())
}

pub async fn edit(ctx: &Ctx, args: EditArgs) -> anyhow::Result<()> {
    let id = check_id(&args.sandbox)?;
    let req = EditFileRequest {
        path: args.path.clone(),
        old_str: args.old,
        new_str: args.new,
    };
    let resp = ctx
        .client
        .edit_file(id, &req)
        .await
        .with_context(|| format!("cannot edit {} in {id}", args.path))?;
    if ctx.json {
        return emit_json(&resp);
    }
    if req.old_str.is_empty() {
        emit(&format!("created {}", resp.path));
    } else {
        emit(&format!(
            "edited {} ({} replacement{})",
            resp.path,
            resp.replaced,
            if resp.replaced == 1 { "" } else { "s" }
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        let mut full = vec!["fluidctl"];
        full.extend_from_slice(args);
        Cli::try_parse_from(full).map(|c| c.command)
    }

    #[test]
    fn read_parses() {
        let Ok(Command::Read(a)) = parse(&[
            "read",
            "SBX-1",
            "/etc/hosts",
            "--offset",
            "10",
            "--limit",
            "20",
            "-o",
            "out.txt",
        ]) else {
            panic!("read")
        };
        assert_eq!(
            (a.sandbox.as_str(), a.path.as_str()),
            ("SBX-1", "/etc/hosts")
        );
        assert_eq!((a.offset, a.limit), (Some(10), Some(20)));
        assert_eq!(a.output, Some(PathBuf::from("out.txt")));
        let Ok(Command::Read(a)) = parse(&["read", "SBX-1", "/x"]) else {
            panic!("read")
        };
        assert_eq!((a.offset, a.limit, a.output), (None, None, None));
        assert!(parse(&["read", "SBX-1"]).is_err());
        assert!(parse(&["read", "SBX-1", "/x", "--limit", "0"]).is_err());
    }

    #[test]
    fn write_parses_one_source() {
        let Ok(Command::Write(a)) = parse(&[
            "write",
            "SBX-1",
            "/etc/motd",
            "--content",
            "hi",
            "--mode",
            "600",
        ]) else {
            panic!("write")
        };
        assert_eq!(a.content.as_deref(), Some("hi"));
        assert_eq!(a.mode.as_deref(), Some("0600"));
        assert_eq!(a.bytes().expect("content"), b"hi");
        let Ok(Command::Write(a)) = parse(&["write", "SBX-1", "/bin/x", "--from", "./x"]) else {
            panic!("write")
        };
        assert_eq!(a.from, Some(PathBuf::from("./x")));
        let e =
            parse(&["write", "SBX-1", "/x", "--from", "a", "--content", "b"]).expect_err("both");
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        let e = parse(&["write", "SBX-1", "/x", "-c", "b", "--mode", "0999"]).expect_err("mode");
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[test]
    fn write_is_binary_safe() {
        let Ok(Command::Write(a)) = parse(&["write", "SBX-1", "/x", "-c", "unused"]) else {
            panic!("write")
        };
        let req = a.to_request(b"text\n".to_vec());
        assert_eq!((req.content.as_str(), req.encoding), ("text\n", None));
        let req = a.to_request(vec![0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(req.encoding.as_deref(), Some("base64"));
        assert_eq!(req.content, "3q2+7w==");
        let body = serde_json::to_value(&req).expect("serialise");
        assert_eq!(body["encoding"], "base64");
        assert!(body.get("mode").is_none());
    }

    #[test]
    fn edit_parses_and_allows_empty_old() {
        let Ok(Command::Edit(a)) =
            parse(&["edit", "SBX-1", "/etc/x", "--old", "", "--new", "-v\n"])
        else {
            panic!("edit")
        };
        assert_eq!((a.old.as_str(), a.new.as_str()), ("", "-v\n"));
        assert_eq!(
            parse(&["edit", "SBX-1", "/etc/x", "--new", "y"])
                .map(|_| ())
                .expect_err("no old")
                .kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn modes_and_notes() {
        assert_eq!(parse_mode("644").as_deref(), Ok("0644"));
        assert_eq!(parse_mode("0o755").as_deref(), Ok("0755"));
        assert_eq!(parse_mode("4755").as_deref(), Ok("4755"));
        for bad in ["", "rw-r--r--", "0888", "17777"] {
            assert!(parse_mode(bad).is_err(), "{bad}");
        }
        assert_eq!(
            truncation_note(0, 1024, 4096),
            "note: showed bytes 0..1024 of 4096; continue with --offset 1024"
        );
    }
}
