//! A strict reader of the Prometheus / OpenMetrics text exposition format, for tests
//! of the `/metrics` endpoints (a scrape that this refuses, Prometheus would too).
//!
//! Checked: every sample follows a `# TYPE` line of its family and is named after it
//! (`_total`/`_created` for counters, `_bucket`/`_count`/`_sum`/`_created` for
//! histograms); names, label names and escaped label values are well formed; values
//! are numbers; a family is declared once; each histogram's buckets rise with `le`,
//! end with `+Inf` and that bucket equals its `_count`; `# EOF`, when present, is the
//! last line.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A metric family: its `# TYPE`, `# HELP` and samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub kind: String,
    pub help: Option<String>,
    pub samples: Vec<Sample>,
}

/// A parsed scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    pub families: Vec<Family>,
}

impl Exposition {
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    /// The sum of the samples named `sample` whose labels include every pair of
    /// `labels` (0 when there is none).
    pub fn sum(&self, sample: &str, labels: &[(&str, &str)]) -> f64 {
        self.families
            .iter()
            .flat_map(|f| &f.samples)
            .filter(|s| s.name == sample)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Every sample named `sample`.
    pub fn samples<'a>(&'a self, sample: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.families
            .iter()
            .flat_map(|f| &f.samples)
            .filter(move |s| s.name == sample)
    }
}

fn is_name(s: &str, colons: bool) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':'))
}

fn number(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// `{a="x",b="y"}` (the braces already removed) → labels.
fn labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .ok_or_else(|| format!("label without =\"…\" in {{{s}}}"))?;
        if !is_name(name, false) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in label {name}")),
                },
                Some((_, '\n')) => return Err(format!("newline in label {name}")),
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated value of label {name}")),
            }
        };
        if out.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} given twice"));
        }
        rest = &after[end + 1..];
        rest = match rest.strip_prefix(',') {
            Some(r) => r,
            None if rest.is_empty() => rest,
            None => return Err(format!("junk {rest:?} after label {name}")),
        };
    }
    Ok(out)
}

fn sample(line: &str) -> Result<Sample, String> {
    let (name, labels_text, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}').filter(|c| *c > open).ok_or("unclosed {")?;
            (&line[..open], &line[open + 1..close], &line[close + 1..])
        }
        None => {
            let (n, r) = line.split_once(' ').ok_or("no value")?;
            (n, "", r)
        }
    };
    if !is_name(name, true) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = number(value).ok_or_else(|| format!("value {value:?} is not a number"))?;
    if let Some(ts) = fields.next() {
        number(ts).ok_or_else(|| format!("timestamp {ts:?} is not a number"))?;
    }
    if fields.next().is_some() {
        return Err("junk after the timestamp".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels: labels(labels_text)?,
        value,
    })
}

fn suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "histogram" | "gaugehistogram" => {
            &["_bucket", "_count", "_sum", "_created", "_gcount", "_gsum"]
        }
        "summary" => &["", "_count", "_sum", "_created"],
        "info" => &["_info"],
        "stateset" | "gauge" | "unknown" | "untyped" => &[""],
        _ => &[],
    }
}

/// One histogram series: its `(le, count)` buckets in order, and its `_count`.
type Series = (Vec<(f64, f64)>, Option<f64>);

fn check_histogram(f: &Family) -> Result<(), String> {
    // Per label set (without `le`): its buckets in order, and its count.
    let mut series: BTreeMap<Vec<(String, String)>, Series> = BTreeMap::new();
    for s in &f.samples {
        let mut key: Vec<(String, String)> = s
            .labels
            .iter()
            .filter(|(k, _)| k.as_str() != "le")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        key.sort();
        let entry = series.entry(key).or_default();
        if s.name.ends_with("_bucket") {
            let le = s
                .labels
                .get("le")
                .and_then(|l| number(l))
                .ok_or_else(|| format!("{}: bucket without a numeric le", s.name))?;
            entry.0.push((le, s.value));
        } else if s.name.ends_with("_count") {
            entry.1 = Some(s.value);
        }
    }
    for (labels, (buckets, count)) in series {
        let what = format!("histogram {} {labels:?}", f.name);
        let last = buckets
            .last()
            .ok_or_else(|| format!("{what}: no buckets"))?;
        if last.0 != f64::INFINITY {
            return Err(format!("{what}: the last bucket is not +Inf"));
        }
        if buckets
            .windows(2)
            .any(|w| w[1].0 <= w[0].0 || w[1].1 < w[0].1)
        {
            return Err(format!("{what}: buckets do not rise"));
        }
        if count != Some(last.1) {
            return Err(format!("{what}: +Inf bucket {} != count {count:?}", last.1));
        }
    }
    Ok(())
}

/// Parses `text`; the error names the line.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    let mut eof = false;
    let mut typed = std::collections::HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if eof {
            return Err(at("content after # EOF".into()));
        }
        if line.trim().is_empty() {
            continue;
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let (keyword, name, rest) = (parts.next(), parts.next(), parts.next());
            let Some(name) = name.filter(|n| is_name(n, true)) else {
                return Err(at("a comment without a metric name".into()));
            };
            match keyword {
                Some("TYPE") => {
                    let kind = rest.unwrap_or_default().trim();
                    if suffixes(kind).is_empty() {
                        return Err(at(format!("unknown type {kind:?}")));
                    }
                    if !typed.insert(name.to_owned()) {
                        return Err(at(format!("family {name} declared twice")));
                    }
                    let helped_last = out
                        .families
                        .last()
                        .is_some_and(|f| f.name == name && f.samples.is_empty());
                    if helped_last {
                        // Its HELP came first.
                        if let Some(f) = out.families.last_mut() {
                            f.kind = kind.to_owned();
                        }
                    } else if out.family(name).is_some() {
                        return Err(at(format!("family {name} declared twice")));
                    } else {
                        out.families.push(Family {
                            name: name.to_owned(),
                            kind: kind.to_owned(),
                            help: None,
                            samples: Vec::new(),
                        });
                    }
                }
                Some("HELP") => {
                    let help = rest.unwrap_or_default().to_owned();
                    let last_is_it = out.families.last().is_some_and(|f| f.name == name);
                    if last_is_it {
                        if let Some(f) = out.families.last_mut() {
                            f.help = Some(help);
                        }
                    } else if out.family(name).is_some() {
                        return Err(at(format!("HELP of {name} away from its family")));
                    } else {
                        // HELP may come before TYPE.
                        out.families.push(Family {
                            name: name.to_owned(),
                            kind: "unknown".into(),
                            help: Some(help),
                            samples: Vec::new(),
                        });
                    }
                }
                Some("UNIT") => {}
                _ => return Err(at("unknown comment".into())),
            }
            continue;
        }
        let s = sample(line).map_err(at)?;
        let Some(f) = out.families.last_mut() else {
            return Err(at("a sample before any # TYPE".into()));
        };
        let belongs = suffixes(&f.kind)
            .iter()
            .any(|suffix| s.name == format!("{}{suffix}", f.name));
        if !belongs {
            return Err(at(format!("not a sample of {} ({})", f.name, f.kind)));
        }
        f.samples.push(s);
    }
    for f in &out.families {
        if f.kind.contains("histogram") {
            check_histogram(f)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "# HELP fluid_execs Commands.\n# TYPE fluid_execs counter\n\
        fluid_execs_total{kind=\"command\",outcome=\"ok\"} 2\n\
        # TYPE fluid_up gauge\nfluid_up 1\n\
        # TYPE fluid_lat histogram\n\
        fluid_lat_sum{op=\"a\"} 0.5\nfluid_lat_count{op=\"a\"} 2\n\
        fluid_lat_bucket{le=\"0.1\",op=\"a\"} 1\nfluid_lat_bucket{le=\"+Inf\",op=\"a\"} 2\n\
        # TYPE fluid_info info\nfluid_info_info{version=\"0.1.0\",q=\"a \\\"b\\\" \\\\ c\"} 1\n\
        # EOF\n";

    #[test]
    fn a_good_scrape_parses() {
        let e = parse(GOOD).expect("valid");
        assert_eq!(e.families.len(), 4);
        assert_eq!(e.sum("fluid_execs_total", &[("outcome", "ok")]), 2.0);
        assert_eq!(e.sum("fluid_execs_total", &[("outcome", "lost")]), 0.0);
        assert_eq!(e.sum("fluid_up", &[]), 1.0);
        assert_eq!(
            e.family("fluid_execs").and_then(|f| f.help.as_deref()),
            Some("Commands.")
        );
        let info = e.samples("fluid_info_info").next().expect("info");
        assert_eq!(info.labels["q"], "a \"b\" \\ c");
    }

    #[test]
    fn bad_scrapes_are_refused() {
        for (bad, why) in [
            ("fluid_up 1\n", "before any # TYPE"),
            ("# TYPE fluid_up gauge\nfluid_down 1\n", "not a sample"),
            ("# TYPE fluid_up gauge\nfluid_up one\n", "not a number"),
            ("# TYPE fluid_up gauge\nfluid_up{a=\"1\" 1\n", "unclosed"),
            ("# TYPE fluid_up gauge\nfluid_up{a=1} 1\n", "label without"),
            (
                "# TYPE fluid_up gauge\nfluid_up{a=\"1\",a=\"2\"} 1\n",
                "twice",
            ),
            (
                "# TYPE fluid_up gauge\nfluid_up{a=\"\\x\"} 1\n",
                "bad escape",
            ),
            (
                "# TYPE fluid_up gauge\n# TYPE fluid_up gauge\n",
                "declared twice",
            ),
            ("# TYPE fluid_up thing\n", "unknown type"),
            ("# TYPE fluid_up gauge\n# EOF\nfluid_up 1\n", "after # EOF"),
            ("# TYPE 1up gauge\n", "metric name"),
            (
                "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
                "do not rise",
            ),
            (
                "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\n",
                "not +Inf",
            ),
            (
                "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 3\n",
                "!= count",
            ),
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
