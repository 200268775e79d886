//! Label and field selectors with the apiserver's grammar, so offline lists
//! filter cached objects exactly as the apiserver would have (upstream
//! ignores selectors offline and therefore refuses to cache a second one).

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {selector:?}: {reason}")]
pub struct Error {
    pub selector: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    Gt(i64),
    Lt(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

/// A parsed `labelSelector`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    reqs: Vec<Requirement>,
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<LabelSelector, Error> {
        let fail = |reason: &str| Error {
            selector: s.to_string(),
            reason: reason.to_string(),
        };
        let mut reqs = Vec::new();
        for term in split_top_level(s) {
            let t = term.trim();
            if t.is_empty() {
                continue;
            }
            let req = if let Some(key) = t.strip_prefix('!') {
                Requirement {
                    key: valid_key(key.trim()).map_err(|r| fail(&r))?,
                    op: Op::DoesNotExist,
                }
            } else if let Some((k, rest)) = split_word_op(t, " notin ") {
                Requirement {
                    key: valid_key(k).map_err(|r| fail(&r))?,
                    op: Op::NotIn(parse_set(rest).map_err(|r| fail(&r))?),
                }
            } else if let Some((k, rest)) = split_word_op(t, " in ") {
                Requirement {
                    key: valid_key(k).map_err(|r| fail(&r))?,
                    op: Op::In(parse_set(rest).map_err(|r| fail(&r))?),
                }
            } else if let Some((k, v)) = t.split_once("!=") {
                Requirement {
                    key: valid_key(k.trim()).map_err(|r| fail(&r))?,
                    op: Op::NotEquals(v.trim().to_string()),
                }
            } else if let Some((k, v)) = t.split_once("==") {
                Requirement {
                    key: valid_key(k.trim()).map_err(|r| fail(&r))?,
                    op: Op::Equals(v.trim().to_string()),
                }
            } else if let Some((k, v)) = t.split_once('=') {
                Requirement {
                    key: valid_key(k.trim()).map_err(|r| fail(&r))?,
                    op: Op::Equals(v.trim().to_string()),
                }
            } else if let Some((k, v)) = t.split_once('>') {
                let n = v.trim().parse().map_err(|_| fail("'>' needs an integer"))?;
                Requirement {
                    key: valid_key(k.trim()).map_err(|r| fail(&r))?,
                    op: Op::Gt(n),
                }
            } else if let Some((k, v)) = t.split_once('<') {
                let n = v.trim().parse().map_err(|_| fail("'<' needs an integer"))?;
                Requirement {
                    key: valid_key(k.trim()).map_err(|r| fail(&r))?,
                    op: Op::Lt(n),
                }
            } else {
                Requirement {
                    key: valid_key(t).map_err(|r| fail(&r))?,
                    op: Op::Exists,
                }
            };
            reqs.push(req);
        }
        Ok(LabelSelector { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.reqs.iter().all(|r| {
            let v = labels.get(&r.key);
            match &r.op {
                Op::Equals(x) => v == Some(x),
                Op::NotEquals(x) => v != Some(x),
                Op::In(xs) => v.is_some_and(|v| xs.contains(v)),
                Op::NotIn(xs) => v.is_none_or(|v| !xs.contains(v)),
                Op::Exists => v.is_some(),
                Op::DoesNotExist => v.is_none(),
                Op::Gt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v > *n),
                Op::Lt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v < *n),
            }
        })
    }
}

/// A parsed `fieldSelector`: only =, == and != exist for fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

impl FieldSelector {
    pub fn parse(s: &str) -> Result<FieldSelector, Error> {
        let mut reqs = Vec::new();
        for term in split_unescaped(s, ',') {
            if term.is_empty() {
                continue;
            }
            let (field, eq, value) = if let Some((f, v)) = split_once_unescaped(&term, "!=") {
                (f, false, v)
            } else if let Some((f, v)) = split_once_unescaped(&term, "==") {
                (f, true, v)
            } else if let Some((f, v)) = split_once_unescaped(&term, "=") {
                (f, true, v)
            } else {
                return Err(Error {
                    selector: s.to_string(),
                    reason: format!("{term:?} is not field=value"),
                });
            };
            reqs.push((field.trim().to_string(), eq, unescape(value.trim())));
        }
        Ok(FieldSelector { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// The fields this selector reads.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.reqs.iter().map(|(f, _, _)| f.as_str())
    }

    /// `fields` maps a field path to the object's value; a missing field is "".
    pub fn matches(&self, fields: &BTreeMap<String, String>) -> bool {
        self.reqs.iter().all(|(f, eq, v)| {
            let actual = fields.get(f).map(String::as_str).unwrap_or("");
            (actual == v) == *eq
        })
    }

    /// The value required by `field=value`, if the selector has one.
    pub fn required(&self, field: &str) -> Option<&str> {
        self.reqs
            .iter()
            .find(|(f, eq, _)| f == field && *eq)
            .map(|(_, _, v)| v.as_str())
    }
}

fn valid_key(k: &str) -> Result<String, String> {
    let k = k.trim();
    if k.is_empty() || k.len() > 317 || k.contains(char::is_whitespace) {
        return Err(format!("invalid label key {k:?}"));
    }
    Ok(k.to_string())
}

fn split_word_op<'a>(t: &'a str, op: &str) -> Option<(&'a str, &'a str)> {
    let i = t.find(op)?;
    Some((t[..i].trim(), t[i + op.len()..].trim()))
}

fn parse_set(s: &str) -> Result<Vec<String>, String> {
    let inner = s
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("{s:?} is not a (value, ...) set"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

/// Splits on commas outside parentheses ("a in (x,y),b" → two terms).
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            cur.push(c);
            if let Some(n) = chars.next() {
                cur.push(n);
            }
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

fn split_once_unescaped<'a>(s: &'a str, op: &str) -> Option<(&'a str, &'a str)> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i + op.len() <= s.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if s[i..].starts_with(op) {
            return Some((&s[..i], &s[i + op.len()..]));
        }
        i += 1;
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selector_grammar() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("n", "5")]);
        for (sel, want) in [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app=db", false),
            ("app in (web, db)", true),
            ("app notin (web)", false),
            ("missing notin (x)", true),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("app=web,tier in (front,back),!missing", true),
            ("n>3", true),
            ("n<3", false),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&l),
                want,
                "{sel}"
            );
        }
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("n>x").is_err());
    }

    #[test]
    fn field_selector_grammar() {
        let f = labels(&[("spec.nodeName", "n1"), ("metadata.name", "a,b")]);
        assert!(
            FieldSelector::parse("spec.nodeName=n1")
                .unwrap()
                .matches(&f)
        );
        assert!(
            FieldSelector::parse("spec.nodeName==n1")
                .unwrap()
                .matches(&f)
        );
        assert!(
            !FieldSelector::parse("spec.nodeName!=n1")
                .unwrap()
                .matches(&f)
        );
        assert!(
            FieldSelector::parse(r"metadata.name=a\,b")
                .unwrap()
                .matches(&f)
        );
        assert!(
            FieldSelector::parse("status.phase!=Running")
                .unwrap()
                .matches(&f),
            "missing field is empty"
        );
        assert_eq!(
            FieldSelector::parse("spec.nodeName=n1,metadata.namespace=x")
                .unwrap()
                .required("spec.nodeName"),
            Some("n1")
        );
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
