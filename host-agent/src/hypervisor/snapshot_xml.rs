//! libvirt domain snapshot XML (`<domainsnapshot>`): the document a create sends, built
//! with quick-xml's serializer (so the description, which holds the agent's JSON, is
//! escaped), and what the agent reads back from a snapshot's XML.

use serde::{Deserialize, Serialize};

use super::DomainSnapshot;

/// The XML for `virDomainSnapshotCreateXML`: a name and a description; libvirt picks
/// the rest (internal snapshot; memory included when the domain runs).
pub fn render_create(name: &str, description: &str) -> Result<String, quick_xml::SeError> {
    #[derive(Serialize)]
    struct Create<'a> {
        name: &'a str,
        description: &'a str,
    }
    let mut out = String::new();
    let ser = quick_xml::se::Serializer::with_root(&mut out, Some("domainsnapshot"))?;
    Create { name, description }.serialize(ser)?;
    Ok(out)
}

/// Reads a snapshot's XML (`virDomainSnapshotGetXMLDesc`). The embedded `<domain>`
/// is skipped.
pub fn parse(xml: &str) -> Result<DomainSnapshot, quick_xml::DeError> {
    #[derive(Deserialize)]
    struct Snap {
        name: String,
        #[serde(default)]
        description: String,
        #[serde(default)]
        state: String,
        #[serde(rename = "creationTime", default)]
        creation_time: i64,
        #[serde(default)]
        memory: Option<Memory>,
    }
    #[derive(Deserialize)]
    struct Memory {
        #[serde(rename = "@snapshot", default)]
        snapshot: String,
    }
    let s: Snap = quick_xml::de::from_str(xml)?;
    let memory = match &s.memory {
        Some(m) => m.snapshot == "internal" || m.snapshot == "external",
        // Older libvirt omits <memory> for a running snapshot; then the state tells.
        None => s.state == "running" || s.state == "paused",
    };
    Ok(DomainSnapshot {
        name: s.name,
        description: s.description,
        state: s.state,
        memory,
        creation_time: s.creation_time,
    })
}

/// The snapshot `snapshot_xml` moved onto another domain: its `<domain>` replaced by
/// `domain_xml` (the fork's, which libvirt starts when it reverts to it), its
/// `<inactiveDomain>` dropped, and its `<parent>` too (the other domain has none of
/// the source's snapshots, and libvirt refuses a redefined snapshot whose parent it
/// does not know). libvirt writes each once, and nothing inside a domain's XML opens
/// another `<domain` element.
pub fn rehome(snapshot_xml: &str, domain_xml: &str) -> Result<String, String> {
    let mut out = snapshot_xml.to_owned();
    for dropped in ["inactiveDomain", "parent"] {
        if let Some(range) = element(&out, dropped) {
            out.replace_range(range, "");
        }
    }
    let range = element(&out, "domain")
        .ok_or_else(|| "the snapshot's XML has no <domain> element".to_owned())?;
    out.replace_range(range, domain_xml.trim());
    Ok(out)
}

/// The byte range of the first `<tag …>…</tag>` in `xml`.
fn element(xml: &str, tag: &str) -> Option<std::ops::Range<usize>> {
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    let mut from = 0;
    let start = loop {
        let at = from + xml[from..].find(&open)?;
        let next = xml[at + open.len()..].chars().next();
        if matches!(next, Some(' ' | '>' | '\n' | '\t')) {
            break at;
        }
        from = at + open.len();
    };
    let end = start + xml[start..].find(&close)? + close.len();
    Some(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_is_escaped_and_reads_back() {
        let desc = r#"{"guest_sync":"failed: <oops> & 'x' \"y\"","active_services":["a.service"]}"#;
        let xml = render_create("before-nginx", desc).expect("xml");
        assert!(
            xml.starts_with("<domainsnapshot><name>before-nginx</name>"),
            "{xml}"
        );
        assert!(!xml.contains("<oops>"), "{xml}");
        // What libvirt answers: ours plus its own elements and the domain.
        let answer = xml.replace(
            "</domainsnapshot>",
            "<state>running</state><creationTime>1795453526</creationTime>\
             <memory snapshot='internal'/><disks><disk name='vda' snapshot='internal'/></disks>\
             <domain type='qemu'><name>x</name><devices><disk/></devices></domain></domainsnapshot>",
        );
        let s = parse(&answer).expect("parse");
        assert_eq!(
            s,
            DomainSnapshot {
                name: "before-nginx".into(),
                description: desc.into(),
                state: "running".into(),
                memory: true,
                creation_time: 1_795_453_526,
            }
        );
    }

    #[test]
    fn libvirts_disk_only_snapshot() {
        let xml = "<domainsnapshot>\n  <name>s1</name>\n  \
            <description>{&quot;a&quot;:&quot;&lt;x&gt; &amp;&quot;}</description>\n  \
            <state>shutoff</state>\n  <creationTime>1795453519</creationTime>\n  \
            <memory snapshot='no'/>\n  <disks>\n    <disk name='vda' snapshot='internal'/>\n  \
            </disks>\n  <domain type='qemu'>\n    <name>snapexp</name>\n  </domain>\n\
            </domainsnapshot>\n";
        let s = parse(xml).expect("parse");
        assert_eq!(s.name, "s1");
        assert_eq!(s.description, r#"{"a":"<x> &"}"#);
        assert_eq!(s.state, "shutoff");
        assert!(!s.memory);
        assert_eq!(s.creation_time, 1_795_453_519);
        // Made by someone else: no description.
        let s = parse("<domainsnapshot><name>n</name><state>running</state></domainsnapshot>")
            .expect("parse");
        assert_eq!((s.description.as_str(), s.memory), ("", true));
        assert!(parse("<nope/>").is_err());
    }

    #[test]
    fn a_snapshot_is_rehomed_onto_another_domain() {
        let snap = "<domainsnapshot>\n  <name>b</name>\n  <state>running</state>\n  \
            <parent>\n    <name>a</name>\n  </parent>\n  <memory snapshot='internal'/>\n  <domain type='qemu'>\n    <name>src</name>\n    \
            <address type='pci' domain='0x0000'/>\n  </domain>\n  <inactiveDomain type='qemu'>\n    \
            <name>src</name>\n  </inactiveDomain>\n  <cookie><cpu/></cookie>\n</domainsnapshot>";
        let fork = "<domain type='qemu'><name>fork</name><uuid>u-2</uuid></domain>\n";
        let out = rehome(snap, fork).expect("rehomed");
        assert!(!out.contains("<parent>"), "{out}");
        assert!(
            out.contains("<domain type='qemu'><name>fork</name><uuid>u-2</uuid></domain>"),
            "{out}"
        );
        assert!(
            !out.contains("src") && !out.contains("inactiveDomain"),
            "{out}"
        );
        assert!(out.contains("<cookie><cpu/></cookie>") && out.contains("<name>b</name>"));
        let parsed = parse(&out).expect("still a snapshot");
        assert!(parsed.memory);
        assert!(rehome("<domainsnapshot><name>b</name></domainsnapshot>", fork).is_err());
    }
}
