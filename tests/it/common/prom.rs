//! A strict parser for the Prometheus text exposition format 0.0.4, for
//! checking what ringlb's /metrics serves without promtool.
//!
//! Stricter than Prometheus where the canonical form is unambiguous: single
//! spaces between tokens, no leading or trailing blanks, `\n` line ends
//! only, a final newline. Checked:
//! - `# HELP name text` and `# TYPE name type` at most once per family, both
//!   before the family's first sample; HELP text escapes only `\\` and `\n`;
//!   type one of counter, gauge, histogram, summary, untyped. Other `#`
//!   lines are comments.
//! - metric names `[a-zA-Z_:][a-zA-Z0-9_:]*`, label names
//!   `[a-zA-Z_][a-zA-Z0-9_]*` (not `__*`), label values quoted with only
//!   `\\`, `\"` and `\n` escapes, no label twice, an optional trailing comma;
//!   values in decimal syntax or exactly `NaN`, `+Inf`, `-Inf` (Go would
//!   also take `inf`, hex floats and `_` digit separators); an
//!   optional integer timestamp.
//! - every sample belongs to a family declared by TYPE (counter, gauge and
//!   untyped: the name itself; histogram: `_bucket` with `le`, `_sum`,
//!   `_count`; summary: the name with `quantile`, `_sum`, `_count`); a
//!   family's lines form one group; no series twice.
//! - counters are >= 0 and not NaN.
//! - histograms: per label set, buckets in increasing `le` order ending in
//!   `+Inf`, whole non-negative cumulative (non-decreasing) counts, one
//!   `_sum` (not NaN) and one `_count` equal to the `+Inf` bucket; `le`
//!   parses as a float; no `le` on `_sum` / `_count`.
//! - every HELP has a TYPE and every TYPE a HELP.

use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    /// In the order written.
    pub labels: Vec<(String, String)>,
    pub value: f64,
    pub line: usize,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether every (name, value) in `want` is among the labels.
    pub fn has(&self, want: &[(&str, &str)]) -> bool {
        want.iter().all(|(n, v)| self.label(n) == Some(v))
    }

    /// Whether the labels are exactly `want` (any order).
    pub fn exactly(&self, want: &[(&str, &str)]) -> bool {
        self.labels.len() == want.len() && self.has(want)
    }

    /// The label names, sorted.
    pub fn label_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.labels.iter().map(|(n, _)| n.as_str()).collect();
        v.sort_unstable();
        v
    }
}

#[derive(Clone, Debug)]
pub struct Family {
    pub name: String,
    pub kind: String,
    pub help: String,
    pub samples: Vec<Sample>,
}

/// A parsed, validated exposition.
#[derive(Clone, Debug, Default)]
pub struct Exposition {
    /// In the order they appear.
    pub families: Vec<Family>,
}

impl Exposition {
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    /// Samples named `name` (a family name, or a histogram's `x_bucket` etc.).
    pub fn samples(&self, name: &str) -> Vec<&Sample> {
        self.families
            .iter()
            .flat_map(|f| f.samples.iter())
            .filter(|s| s.name == name)
            .collect()
    }

    /// The value of the sample `name` whose labels are exactly `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples(name)
            .into_iter()
            .find(|s| s.exactly(labels))
            .map(|s| s.value)
    }

    /// The sum over samples `name` having at least `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name)
            .into_iter()
            .filter(|s| s.has(labels))
            .map(|s| s.value)
            .sum()
    }

    /// The lines of samples whose name starts with `prefix`, for messages.
    pub fn dump(&self, prefix: &str) -> String {
        let mut out = String::new();
        for f in &self.families {
            for s in &f.samples {
                if s.name.starts_with(prefix) {
                    let labels: Vec<String> =
                        s.labels.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
                    out.push_str(&format!("{}{{{}}} {}\n", s.name, labels.join(","), s.value));
                }
            }
        }
        out
    }
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    (first.is_ascii_alphabetic() || first == '_' || (colon && first == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

pub fn is_metric_name(s: &str) -> bool {
    is_name(s, true)
}

pub fn is_label_name(s: &str) -> bool {
    is_name(s, false) && !s.starts_with("__")
}

/// A sample value or `le`: Go ParseFloat's decimal syntax, `NaN`, `+Inf`, `-Inf`.
pub fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "NaN" => return Ok(f64::NAN),
        "+Inf" => return Ok(f64::INFINITY),
        "-Inf" => return Ok(f64::NEG_INFINITY),
        _ => {}
    }
    let b = s.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut digits = i - int_start;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let f = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        digits += i - f;
    }
    if digits == 0 {
        return Err(format!("bad value {s:?}"));
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let e = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == e {
            return Err(format!("bad exponent in {s:?}"));
        }
    }
    if i != b.len() {
        return Err(format!("bad value {s:?}"));
    }
    s.parse::<f64>()
        .map_err(|e| format!("bad value {s:?}: {e}"))
}

/// HELP text: any characters, escapes only `\\` and `\n`.
fn check_help(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut it = text.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                other => return Err(format!("bad escape \\{other:?} in HELP text")),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// `name{labels} value [timestamp]`.
fn parse_sample(line: &str, n: usize) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or("no value after the metric name")?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels: Vec<(String, String)> = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=').ok_or("label without '='")?;
            let lname = &rest[..eq];
            if !is_label_name(lname) {
                return Err(format!("bad label name {lname:?}"));
            }
            if labels.iter().any(|(l, _)| l == lname) {
                return Err(format!("label {lname:?} twice"));
            }
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or_else(|| format!("label {lname:?}: value not quoted"))?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    None => return Err(format!("label {lname:?}: unterminated value")),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => {
                            return Err(format!(
                                "label {lname:?}: bad escape \\{:?}",
                                other.map(|o| o.1)
                            ))
                        }
                    },
                    Some((_, c)) => value.push(c),
                }
            };
            labels.push((lname.to_string(), value));
            rest = &rest[end + 1..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.starts_with('}') {
                return Err(format!("expected ',' or '}}' after label {lname:?}"));
            }
        }
    }
    let rest = rest
        .strip_prefix(' ')
        .ok_or("expected one space before the value")?;
    let mut parts = rest.split(' ');
    let value = parse_value(parts.next().unwrap_or(""))?;
    if let Some(ts) = parts.next() {
        let digits = ts.strip_prefix('-').unwrap_or(ts);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("bad timestamp {ts:?}"));
        }
        ts.parse::<i64>()
            .map_err(|_| format!("timestamp {ts:?} out of range"))?;
    }
    if parts.next().is_some() {
        return Err("extra tokens after the timestamp".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
        line: n,
    })
}

/// The family a sample named `name` belongs to, among declared ones.
fn family_of<'a>(name: &'a str, kinds: &HashMap<String, String>) -> Option<&'a str> {
    if let Some(k) = kinds.get(name) {
        if k != "histogram" {
            return Some(name);
        }
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(stem) = name.strip_suffix(suffix) {
            match kinds.get(stem).map(String::as_str) {
                Some("histogram") => return Some(stem),
                Some("summary") if suffix != "_bucket" => return Some(stem),
                _ => {}
            }
        }
    }
    None
}

/// Lines of family `name` start (or go on): a finished family may not return.
fn switch_to(
    name: &str,
    current: &mut Option<String>,
    finished: &mut HashSet<String>,
) -> Result<(), String> {
    if current.as_deref() == Some(name) {
        return Ok(());
    }
    if finished.contains(name) {
        return Err(format!(
            "family {name} continues after other families' lines (not one group)"
        ));
    }
    if let Some(c) = current.take() {
        finished.insert(c);
    }
    *current = Some(name.to_string());
    Ok(())
}

/// Parse and validate a whole exposition.
pub fn parse(text: &str) -> Result<Exposition, String> {
    parse_inner(text).map_err(|(n, e)| {
        let line = text.split('\n').nth(n.saturating_sub(1)).unwrap_or("");
        format!("line {n}: {e}\n  {line:?}")
    })
}

fn parse_inner(text: &str) -> Result<Exposition, (usize, String)> {
    if text.is_empty() {
        return Ok(Exposition::default());
    }
    if !text.ends_with('\n') {
        return Err((text.split('\n').count(), "no final newline".into()));
    }
    let mut kinds: HashMap<String, String> = HashMap::new();
    let mut helps: HashMap<String, String> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut samples: HashMap<String, Vec<Sample>> = HashMap::new();
    // The family whose lines are being read; finished ones may not return.
    let mut current: Option<String> = None;
    let mut finished: HashSet<String> = HashSet::new();
    let mut series: HashSet<String> = HashSet::new();

    for (idx, line) in text[..text.len() - 1].split('\n').enumerate() {
        let n = idx + 1;
        let e = |m: String| (n, m);
        if line.is_empty() {
            continue;
        }
        if line.contains('\r') {
            return Err(e("carriage return".into()));
        }
        if line.starts_with([' ', '\t']) || line.ends_with([' ', '\t']) {
            return Err(e("leading or trailing blank".into()));
        }
        if let Some(rest) = line.strip_prefix('#') {
            let (kw, rest) = match rest.strip_prefix(' ') {
                Some(r) => match r.split_once(' ') {
                    Some((k, r)) => (k, r),
                    None => (r, ""),
                },
                None => ("", ""),
            };
            match kw {
                "HELP" => {
                    let (name, help) = rest
                        .split_once(' ')
                        .ok_or_else(|| e("HELP without text".into()))?;
                    if !is_metric_name(name) {
                        return Err(e(format!("bad metric name {name:?} in HELP")));
                    }
                    if helps.contains_key(name) {
                        return Err(e(format!("second HELP for {name}")));
                    }
                    let help = check_help(help).map_err(e)?;
                    if help.trim().is_empty() {
                        return Err(e(format!("empty HELP for {name}")));
                    }
                    if samples.contains_key(name) {
                        return Err(e(format!("HELP for {name} after its samples")));
                    }
                    switch_to(name, &mut current, &mut finished).map_err(e)?;
                    helps.insert(name.to_string(), help);
                }
                "TYPE" => {
                    let (name, kind) = rest
                        .split_once(' ')
                        .ok_or_else(|| e("TYPE without a type".into()))?;
                    if !is_metric_name(name) {
                        return Err(e(format!("bad metric name {name:?} in TYPE")));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(e(format!("unknown type {kind:?}")));
                    }
                    if kinds.contains_key(name) {
                        return Err(e(format!("second TYPE for {name}")));
                    }
                    if samples.contains_key(name) {
                        return Err(e(format!("TYPE for {name} after its samples")));
                    }
                    switch_to(name, &mut current, &mut finished).map_err(e)?;
                    kinds.insert(name.to_string(), kind.to_string());
                    order.push(name.to_string());
                }
                _ => {} // a comment
            }
            continue;
        }
        let s = parse_sample(line, n).map_err(e)?;
        let Some(fam) = family_of(&s.name, &kinds) else {
            return Err(e(format!(
                "sample {} before (or without) its family's TYPE line",
                s.name
            )));
        };
        let fam = fam.to_string();
        if !helps.contains_key(&fam) {
            return Err(e(format!("sample of {fam} before its HELP line")));
        }
        switch_to(&fam, &mut current, &mut finished).map_err(e)?;
        let kind = kinds[&fam].as_str();
        let mut key_labels = s.labels.clone();
        key_labels.sort();
        let key = format!("{}{:?}", s.name, key_labels);
        if !series.insert(key) {
            return Err(e(format!("series {} {:?} twice", s.name, s.labels)));
        }
        match kind {
            "counter" if s.value.is_nan() || s.value < 0.0 => {
                return Err(e(format!("counter {} is {}", s.name, s.value)));
            }
            "histogram" => {
                let is_bucket = s.name.ends_with("_bucket");
                match (is_bucket, s.label("le")) {
                    (true, None) => return Err(e("bucket without le".into())),
                    (false, Some(_)) => return Err(e(format!("le on {}", s.name))),
                    (true, Some(le)) => {
                        parse_value(le).map_err(|m| e(format!("le: {m}")))?;
                    }
                    _ => {}
                }
            }
            "summary" if s.name == fam && s.label("quantile").is_none() => {
                return Err(e("summary sample without quantile".into()));
            }
            _ => {}
        }
        samples.entry(fam).or_default().push(s);
    }

    for name in helps.keys() {
        if !kinds.contains_key(name) {
            return Err((0, format!("HELP for {name} without a TYPE")));
        }
    }
    let mut families = Vec::new();
    for name in order {
        let Some(help) = helps.get(&name) else {
            return Err((0, format!("TYPE for {name} without a HELP")));
        };
        let kind = kinds[&name].clone();
        let fam_samples = samples.remove(&name).unwrap_or_default();
        if kind == "histogram" {
            check_histogram(&name, &fam_samples)?;
        }
        families.push(Family {
            name,
            kind,
            help: help.clone(),
            samples: fam_samples,
        });
    }
    Ok(Exposition { families })
}

fn check_histogram(name: &str, samples: &[Sample]) -> Result<(), (usize, String)> {
    #[derive(Default)]
    struct Series {
        buckets: Vec<(f64, f64, usize)>,
        sum: Option<f64>,
        count: Option<(f64, usize)>,
    }
    let mut by_labels: BTreeMap<Vec<(String, String)>, Series> = BTreeMap::new();
    for s in samples {
        let mut key: Vec<(String, String)> = s
            .labels
            .iter()
            .filter(|(n, _)| n != "le")
            .cloned()
            .collect();
        key.sort();
        let entry = by_labels.entry(key).or_default();
        if s.name == format!("{name}_bucket") {
            let le = parse_value(s.label("le").unwrap()).unwrap();
            entry.buckets.push((le, s.value, s.line));
        } else if s.name == format!("{name}_sum") {
            if s.value.is_nan() {
                return Err((s.line, format!("{name}_sum is NaN")));
            }
            entry.sum = Some(s.value);
        } else {
            entry.count = Some((s.value, s.line));
        }
    }
    for (labels, s) in by_labels {
        let what = format!("{name} {labels:?}");
        let last_line = s.buckets.last().map_or(0, |b| b.2);
        if s.buckets.is_empty() {
            return Err((0, format!("{what}: no buckets")));
        }
        let mut prev: Option<(f64, f64)> = None;
        for &(le, v, line) in &s.buckets {
            if le.is_nan() {
                return Err((line, format!("{what}: le is NaN")));
            }
            if v.is_nan() || v < 0.0 || v.fract() != 0.0 {
                return Err((
                    line,
                    format!("{what}: bucket count {v} is not a whole number >= 0"),
                ));
            }
            if let Some((ple, pv)) = prev {
                if le <= ple {
                    return Err((
                        line,
                        format!("{what}: le {le} after {ple} (not increasing)"),
                    ));
                }
                if v < pv {
                    return Err((
                        line,
                        format!("{what}: bucket le={le} has {v} < {pv} (not cumulative)"),
                    ));
                }
            }
            prev = Some((le, v));
        }
        let (last_le, inf) = prev.unwrap();
        if last_le != f64::INFINITY {
            return Err((last_line, format!("{what}: last bucket is not le=\"+Inf\"")));
        }
        if s.sum.is_none() {
            return Err((last_line, format!("{what}: no _sum")));
        }
        let Some((count, line)) = s.count else {
            return Err((last_line, format!("{what}: no _count")));
        };
        if count != inf {
            return Err((line, format!("{what}: _count {count} != +Inf bucket {inf}")));
        }
    }
    Ok(())
}

const GOOD_EXPOSITION: &str = r#"# HELP ringlb_x_total Things, with a \\ and a \n.
# TYPE ringlb_x_total counter
ringlb_x_total{listener="a",path="q\"uote\\back\nnl"} 3
ringlb_x_total{listener="b",} 0
# a comment
# HELP ringlb_g A gauge.
# TYPE ringlb_g gauge
ringlb_g -1.5e3
ringlb_g{a="1"} NaN
ringlb_g{a="2"} +Inf 1700000000000

# HELP ringlb_h_seconds Latency.
# TYPE ringlb_h_seconds histogram
ringlb_h_seconds_bucket{listener="a",le="0.1"} 1
ringlb_h_seconds_bucket{listener="a",le="1"} 3
ringlb_h_seconds_bucket{listener="a",le="+Inf"} 4
ringlb_h_seconds_sum{listener="a"} 7.25
ringlb_h_seconds_count{listener="a"} 4
ringlb_h_seconds_bucket{listener="b",le="0.1"} 0
ringlb_h_seconds_bucket{listener="b",le="+Inf"} 0
ringlb_h_seconds_sum{listener="b"} 0
ringlb_h_seconds_count{listener="b"} 0
"#;

#[test]
fn prometheus_parser_accepts_valid_and_rejects_invalid_text() {
    let m = parse(GOOD_EXPOSITION).unwrap();
    assert_eq!(m.families.len(), 3);
    assert_eq!(
        m.get(
            "ringlb_x_total",
            &[("listener", "a"), ("path", "q\"uote\\back\nnl")]
        ),
        Some(3.0)
    );
    assert_eq!(
        m.family("ringlb_x_total").unwrap().help,
        "Things, with a \\ and a \n."
    );
    assert_eq!(m.get("ringlb_g", &[]), Some(-1500.0));
    assert_eq!(
        m.get("ringlb_h_seconds_count", &[("listener", "a")]),
        Some(4.0)
    );
    assert_eq!(m.sum("ringlb_h_seconds_count", &[]), 4.0);

    let head = "# HELP m_total x\n# TYPE m_total counter\n";
    let hist = "# HELP h x\n# TYPE h histogram\n";
    let bad: Vec<(String, &str)> = vec![
        ("m_total 1\n".into(), "no TYPE"),
        (format!("{head}m_total 1"), "no final newline"),
        ("# TYPE m_total counter\nm_total 1\n".into(), "no HELP"),
        ("# HELP m_total x\nm_total 1\n".into(), "HELP, no TYPE"),
        (format!("{head}# TYPE m_total counter\nm_total 1\n"), "TYPE twice"),
        (format!("{head}m_total 1\n# HELP m_total y\n"), "HELP twice"),
        ("# HELP m x\n# TYPE m countr\nm 1\n".into(), "unknown type"),
        ("# HELP m x\n# TYPE m gauge\n# TYPE m gauge\n".into(), "TYPE twice, no samples"),
        (format!("{head}m_total -1\n"), "negative counter"),
        (format!("{head}m_total NaN\n"), "NaN counter"),
        (format!("{head}m_total 1.2.3\n"), "bad value"),
        (format!("{head}m_total inf\n"), "inf (Go accepts it; not canonical)"),
        (format!("{head}m_total 0x10\n"), "hex value"),
        (format!("{head}m_total\n"), "no value"),
        (format!("{head}m_total  1\n"), "two spaces"),
        (format!("{head}m_total 1 \n"), "trailing blank"),
        (format!("{head} m_total 1\n"), "leading blank"),
        (format!("{head}m_total 1 12.5\n"), "float timestamp"),
        (format!("{head}m_total 1\r\n"), "CRLF"),
        (format!("{head}m_total{{a=\"1\"}} 1\nm_total{{a=\"1\"}} 2\n"), "series twice"),
        (format!("{head}m_total{{a=1}} 1\n"), "unquoted label value"),
        (format!("{head}m_total{{a=\"x\\t\"}} 1\n"), "bad label escape"),
        (format!("{head}m_total{{a=\"x}} 1\n"), "unterminated label value"),
        (format!("{head}m_total{{a=\"1\",a=\"2\"}} 1\n"), "label twice"),
        (format!("{head}m_total{{1a=\"1\"}} 1\n"), "bad label name"),
        (format!("{head}m_total{{__a=\"1\"}} 1\n"), "reserved label name"),
        (format!("{head}m_total{{a=\"1\"b=\"2\"}} 1\n"), "no comma between labels"),
        (format!("{head}m_total{{a=\"1\",,}} 1\n"), "two commas"),
        ("# HELP 1m x\n# TYPE 1m gauge\n1m 1\n".into(), "bad metric name"),
        ("# HELP m x\\t\n# TYPE m gauge\nm 1\n".into(), "bad HELP escape"),
        ("# HELP m \n# TYPE m gauge\nm 1\n".into(), "empty HELP"),
        (
            "# HELP a x\n# TYPE a gauge\na 1\n# HELP b x\n# TYPE b gauge\nb 1\na{x=\"1\"} 2\n".into(),
            "family not in one group",
        ),
        (format!("{head}m_total 1\n# TYPE m_total counter\n"), "TYPE after samples"),
        (format!("{hist}h_bucket{{le=\"1\"}} 1\nh_sum 1\nh_count 1\n"), "no +Inf bucket"),
        (
            format!("{hist}h_bucket{{le=\"1\"}} 2\nh_bucket{{le=\"+Inf\"}} 1\nh_sum 1\nh_count 1\n"),
            "not cumulative",
        ),
        (
            format!("{hist}h_bucket{{le=\"2\"}} 1\nh_bucket{{le=\"1\"}} 1\nh_bucket{{le=\"+Inf\"}} 1\nh_sum 1\nh_count 1\n"),
            "le not increasing",
        ),
        (
            format!("{hist}h_bucket{{le=\"+Inf\"}} 3\nh_sum 1\nh_count 2\n"),
            "count != +Inf",
        ),
        (format!("{hist}h_bucket{{le=\"+Inf\"}} 3\nh_count 3\n"), "no _sum"),
        (format!("{hist}h_bucket{{le=\"+Inf\"}} 3\nh_sum 1\n"), "no _count"),
        (format!("{hist}h_bucket 3\nh_sum 1\nh_count 3\n"), "bucket without le"),
        (format!("{hist}h_bucket{{le=\"x\"}} 3\nh_sum 1\nh_count 3\n"), "bad le"),
        (
            format!("{hist}h_bucket{{le=\"+Inf\"}} 1.5\nh_sum 1\nh_count 1.5\n"),
            "fractional bucket",
        ),
        (format!("{hist}h_bucket{{le=\"+Inf\"}} 1\nh_sum{{le=\"1\"}} 1\nh_count 1\n"), "le on _sum"),
        (format!("{hist}h 1\n"), "bare histogram sample"),
        (format!("{head}m_total_bucket{{le=\"1\"}} 1\n"), "bucket of a counter"),
    ];
    for (text, what) in bad {
        assert!(parse(&text).is_err(), "accepted ({what}):\n{text}");
    }
}
