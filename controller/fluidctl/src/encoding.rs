//! Bytes on the wire: the API carries file contents and output chunks as UTF-8 text, or
//! as base64 when the bytes are not UTF-8 (`encoding: "base64"`).

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The bytes of a `content` / `data` field given its `encoding` (`utf-8`, `base64`;
/// empty means UTF-8).
pub fn decode(data: &str, encoding: &str) -> anyhow::Result<Vec<u8>> {
    match encoding.trim().to_ascii_lowercase().as_str() {
        "" | "utf-8" | "utf8" => Ok(data.as_bytes().to_vec()),
        "base64" => STANDARD
            .decode(data.trim())
            .context("the controller sent invalid base64"),
        other => anyhow::bail!("the controller sent data in an unknown encoding `{other}`"),
    }
}

/// What to send for `bytes`: the text itself when it is UTF-8 (no `encoding`), else its
/// base64 with `encoding: "base64"`.
pub fn encode(bytes: Vec<u8>) -> (String, Option<String>) {
    match String::from_utf8(bytes) {
        Ok(text) => (text, None),
        Err(e) => (STANDARD.encode(e.as_bytes()), Some("base64".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_text_and_base64() {
        assert_eq!(
            decode("héllo\n", "utf-8").expect("utf-8"),
            "héllo\n".as_bytes()
        );
        assert_eq!(decode("x", "").expect("default"), b"x");
        assert_eq!(
            decode("AP+A\n", "base64").expect("base64"),
            [0x00, 0xff, 0x80]
        );
        assert_eq!(
            decode("AP+A", "BASE64").expect("any case"),
            [0x00, 0xff, 0x80]
        );
    }

    #[test]
    fn rejects_bad_base64_and_unknown_encodings() {
        let e = decode("not base64!", "base64").expect_err("invalid");
        assert!(e.to_string().contains("invalid base64"), "{e}");
        let e = decode("x", "gzip").expect_err("unknown");
        assert!(e.to_string().contains("`gzip`"), "{e}");
    }

    #[test]
    fn encodes_only_what_is_not_utf8() {
        assert_eq!(
            encode(b"plain text\n".to_vec()),
            ("plain text\n".to_owned(), None)
        );
        let (content, enc) = encode(vec![0x7f, 0x45, 0x4c, 0x46, 0xff]);
        assert_eq!(enc.as_deref(), Some("base64"));
        assert_eq!(
            decode(&content, "base64").expect("round trip"),
            [0x7f, 0x45, 0x4c, 0x46, 0xff]
        );
    }
}
