//! Percent-encoding of what goes into a URL: ids and names in paths, query values.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Everything but RFC 3986's unreserved characters (letters, digits, `-._~`).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes a path segment or query value, so an id or name can never change
/// the path or query it is put in.
pub fn encode_component(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::encode_component;

    #[test]
    fn only_unreserved_characters_pass() {
        assert_eq!(encode_component("TOK-1a2b_c.d~e"), "TOK-1a2b_c.d~e");
        assert_eq!(encode_component("../x?y=1#z"), "..%2Fx%3Fy%3D1%23z");
        assert_eq!(encode_component("ü +"), "%C3%BC%20%2B");
        assert_eq!(encode_component("é/+"), "%C3%A9%2F%2B");
    }
}
