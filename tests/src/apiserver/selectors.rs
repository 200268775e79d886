//! Label and field selectors with apimachinery's grammar and semantics:
//! labels support `=`, `==`, `!=`, `in`, `notin`, `exists`, `!key`, `>`/`<`;
//! fields support `=`, `==`, `!=` over the fields a resource declares
//! selectable (values are strings; missing fields read as "").

use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq)]
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

#[derive(Clone, Debug, PartialEq)]
struct Requirement {
    key: String,
    op: Op,
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector {
    reqs: Vec<Requirement>,
}

impl LabelSelector {
    pub fn parse(input: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in split_top_level(input)? {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            reqs.push(parse_requirement(part)?);
        }
        Ok(Self { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.reqs.iter().all(|r| {
            let value = labels.get(&r.key);
            match &r.op {
                Op::Equals(v) => value == Some(v),
                Op::NotEquals(v) => value != Some(v),
                Op::In(vs) => value.is_some_and(|x| vs.contains(x)),
                Op::NotIn(vs) => value.is_none_or(|x| !vs.contains(x)),
                Op::Exists => value.is_some(),
                Op::DoesNotExist => value.is_none(),
                Op::Gt(n) => value
                    .and_then(|x| x.parse::<i64>().ok())
                    .is_some_and(|x| x > *n),
                Op::Lt(n) => value
                    .and_then(|x| x.parse::<i64>().ok())
                    .is_some_and(|x| x < *n),
            }
        })
    }
}

/// Splits on commas that are not inside `( ... )`.
fn split_top_level(input: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth.checked_sub(1).ok_or_else(|| {
                    format!("unable to parse requirement: unbalanced ')' in {input:?}")
                })?;
            }
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!(
            "unable to parse requirement: unterminated '(' in {input:?}"
        ));
    }
    parts.push(&input[start..]);
    Ok(parts)
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement {
            key: valid_key(key.trim())?,
            op: Op::DoesNotExist,
        });
    }
    for (token, make) in [
        ("!=", Op::NotEquals as fn(String) -> Op),
        ("==", Op::Equals),
        ("=", Op::Equals),
    ] {
        if let Some((k, v)) = part.split_once(token) {
            return Ok(Requirement {
                key: valid_key(k.trim())?,
                op: make(valid_value(v.trim())?),
            });
        }
    }
    for (token, gt) in [(">", true), ("<", false)] {
        if let Some((k, v)) = part.split_once(token) {
            let n: i64 = v.trim().parse().map_err(|_| {
                format!("unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer: {part:?}")
            })?;
            return Ok(Requirement {
                key: valid_key(k.trim())?,
                op: if gt { Op::Gt(n) } else { Op::Lt(n) },
            });
        }
    }
    let mut words = part.splitn(2, char::is_whitespace);
    let key = valid_key(words.next().unwrap_or("").trim())?;
    let rest = words.next().unwrap_or("").trim();
    if rest.is_empty() {
        return Ok(Requirement {
            key,
            op: Op::Exists,
        });
    }
    let (op_word, list) = rest.split_once('(').ok_or_else(|| {
        format!(
            "unable to parse requirement: found '{rest}', expected: in, notin, =, ==, !=, gt, lt"
        )
    })?;
    let list = list
        .strip_suffix(')')
        .ok_or_else(|| format!("unable to parse requirement: expected ')' in {part:?}"))?;
    let values = list
        .split(',')
        .map(|v| valid_value(v.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let op = match op_word.trim() {
        "in" => Op::In(values),
        "notin" => Op::NotIn(values),
        other => {
            return Err(format!(
                "unable to parse requirement: found '{other}', expected: in, notin, =, ==, !=, gt, lt"
            ));
        }
    };
    Ok(Requirement { key, op })
}

fn valid_key(key: &str) -> Result<String, String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
    });
    if name_ok && prefix_ok {
        Ok(key.to_owned())
    } else {
        Err(format!(
            "unable to parse requirement: invalid label key {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ))
    }
}

fn valid_value(value: &str) -> Result<String, String> {
    let ok = value.is_empty()
        || (value.len() <= 63
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric())
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "unable to parse requirement: invalid label value: {value:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ))
    }
}

/// A parsed field selector (conjunction of `field=value` / `field!=value`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

impl FieldSelector {
    pub fn parse(input: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for part in split_unescaped(input, ',') {
            if part.trim().is_empty() {
                continue;
            }
            let (field, equal, value) = if let Some((f, v)) = split_once_unescaped(&part, "!=") {
                (f, false, v)
            } else if let Some((f, v)) = split_once_unescaped(&part, "==") {
                (f, true, v)
            } else if let Some((f, v)) = split_once_unescaped(&part, "=") {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                ));
            };
            terms.push((field.trim().to_owned(), equal, unescape(value.trim())));
        }
        Ok(Self { terms })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Field names used, for checking them against a resource's selectable fields.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.terms.iter().map(|(f, _, _)| f.as_str())
    }

    /// `value_of` returns the value of a field of the object.
    pub fn matches(&self, value_of: impl Fn(&str) -> String) -> bool {
        self.terms
            .iter()
            .all(|(field, equal, value)| (value_of(field) == *value) == *equal)
    }
}

fn split_unescaped(input: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut escaped = false;
    for c in input.chars() {
        if escaped {
            if let Some(last) = parts.last_mut() {
                last.push('\\');
                last.push(c);
            }
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(String::new());
        } else if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    parts
}

fn split_once_unescaped<'a>(input: &'a str, token: &str) -> Option<(&'a str, &'a str)> {
    let mut search = 0;
    while let Some(pos) = input[search..].find(token) {
        let at = search + pos;
        let backslashes = input[..at].chars().rev().take_while(|&c| c == '\\').count();
        if backslashes % 2 == 0 {
            return Some((&input[..at], &input[at + token.len()..]));
        }
        search = at + token.len();
    }
    None
}

fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
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
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn equality_and_inequality() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        assert!(LabelSelector::parse("app=web").expect("parse").matches(&l));
        assert!(
            LabelSelector::parse("app==web,tier=front")
                .expect("parse")
                .matches(&l)
        );
        assert!(!LabelSelector::parse("app!=web").expect("parse").matches(&l));
        assert!(
            LabelSelector::parse("env!=prod")
                .expect("parse")
                .matches(&l),
            "!= matches a missing label"
        );
    }

    #[test]
    fn set_based_requirements() {
        let l = labels(&[("app", "web")]);
        let sel = |s: &str| LabelSelector::parse(s).expect("parse");
        assert!(sel("app in (web, db)").matches(&l));
        assert!(!sel("app notin (web,db)").matches(&l));
        assert!(sel("env notin (prod)").matches(&l));
        assert!(!sel("env in (prod)").matches(&l));
        assert!(sel("app").matches(&l));
        assert!(!sel("!app").matches(&l));
        assert!(sel("!env").matches(&l));
        assert!(sel("app in (web),!env,app").matches(&l));
        assert!(sel("").matches(&l));
    }

    #[test]
    fn numeric_comparisons() {
        let l = labels(&[("replicas", "3")]);
        assert!(
            LabelSelector::parse("replicas>2")
                .expect("parse")
                .matches(&l)
        );
        assert!(
            !LabelSelector::parse("replicas<2")
                .expect("parse")
                .matches(&l)
        );
    }

    #[test]
    fn invalid_selectors_are_rejected() {
        assert!(LabelSelector::parse("app in (web").is_err());
        assert!(LabelSelector::parse("app within (web)").is_err());
        assert!(LabelSelector::parse("-bad=x").is_err());
        assert!(LabelSelector::parse("app=bad value").is_err());
    }

    #[test]
    fn field_selectors() {
        let sel = FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed").expect("parse");
        let obj = |f: &str| match f {
            "spec.nodeName" => "n1".to_owned(),
            "status.phase" => "Running".to_owned(),
            _ => String::new(),
        };
        assert!(sel.matches(obj));
        let sel = FieldSelector::parse("metadata.name==a\\,b").expect("parse");
        assert!(sel.matches(|_| "a,b".to_owned()));
        assert!(FieldSelector::parse("nonsense").is_err());
        assert_eq!(
            sel.fields().collect::<Vec<_>>(),
            ["metadata.name"],
            "field names are exposed for validation"
        );
    }
}
