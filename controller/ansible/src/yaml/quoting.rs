//! Strings that YAML 1.1 (PyYAML, Ansible's loader) would not read back as strings
//! when written plain. The patterns are PyYAML's implicit resolvers
//! (`yaml/resolver.py`): booleans, floats, integers, the merge key, null, timestamps
//! and the `=` "value" tag.

use std::sync::LazyLock;

use regex::Regex;

static YAML11_IMPLICIT: LazyLock<Regex> = LazyLock::new(|| {
    let patterns = [
        // bool
        r"yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF",
        // float
        r"[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?",
        r"\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?",
        r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*",
        r"[-+]?\.(?:inf|Inf|INF)",
        r"\.(?:nan|NaN|NAN)",
        // int
        r"[-+]?0b[0-1_]+",
        r"[-+]?0[0-7_]+",
        r"[-+]?(?:0|[1-9][0-9_]*)",
        r"[-+]?0x[0-9a-fA-F_]+",
        r"[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+",
        // merge, null, value
        r"<<",
        r"~|null|Null|NULL|",
        r"=",
        // timestamp
        r"[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]",
        r"[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[ \t]+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?",
    ];
    let joined = format!("^(?:{})$", patterns.join("|"));
    Regex::new(&joined).expect("constant YAML 1.1 resolver pattern compiles")
});

/// True when `s`, written as a plain scalar, would be read by YAML 1.1 as something
/// other than this string (so it must be quoted). Strings with a line break are
/// never plain and never need it.
pub fn yaml11_needs_quotes(s: &str) -> bool {
    !s.contains('\n') && YAML11_IMPLICIT.is_match(s)
}
