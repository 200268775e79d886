//! LIST semantics: resourceVersion "" (consistent read), "0" (any, served
//! like the watch cache: limit ignored), N with resourceVersionMatch
//! NotOlderThan / Exact (and the legacy exact match when a limit is set),
//! `limit` with etcd3-style opaque continue tokens over a consistent
//! snapshot, `remainingItemCount` (only without selectors), 410 Expired for
//! compacted revisions and continue tokens, and label/field selectors.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::Shared;
use super::objects::{field_value, labels_of};
use super::registry::ResourceType;
use super::selectors::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::ReadError;

/// How long a read waits for a resourceVersion newer than the store's.
const FRESHNESS_WAIT: Duration = Duration::from_secs(3);

/// Selectors of a list or watch, validated against the resource.
#[derive(Clone, Debug, Default)]
pub struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    pub fn parse(
        rt: &ResourceType,
        label: Option<&str>,
        field: Option<&str>,
    ) -> Result<Self, ApiError> {
        let labels = LabelSelector::parse(label.unwrap_or("")).map_err(ApiError::bad_request)?;
        let fields = FieldSelector::parse(field.unwrap_or("")).map_err(ApiError::bad_request)?;
        for f in fields.fields() {
            let known = matches!(f, "metadata.name" | "metadata.namespace")
                || rt.fields.iter().any(|x| x == f);
            if !known {
                return Err(if rt.builtin {
                    ApiError::bad_request(format!("field label not supported: {f}"))
                } else {
                    ApiError::bad_request(format!(
                        "{f:?} is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
                    ))
                });
            }
        }
        Ok(Self { labels, fields })
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(&labels_of(obj)) && self.fields.matches(|f| field_value(obj, f))
    }
}

/// Parsed LIST query parameters.
#[derive(Clone, Debug, Default)]
pub struct ListParams {
    pub selectors: Selectors,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
}

impl ListParams {
    /// Validates like ValidateListOptions.
    pub fn parse(
        rt: &ResourceType,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ApiError> {
        let selectors = Selectors::parse(
            rt,
            get("labelSelector").as_deref(),
            get("fieldSelector").as_deref(),
        )?;
        let limit = match get("limit") {
            Some(l) => {
                let n: i64 = l
                    .parse()
                    .map_err(|_| ApiError::bad_request(format!("limit: invalid value {l:?}")))?;
                (n > 0).then_some(n as usize)
            }
            None => None,
        };
        let continue_token = get("continue").filter(|c| !c.is_empty());
        let resource_version = get("resourceVersion").filter(|v| !v.is_empty());
        let resource_version_match = get("resourceVersionMatch").filter(|v| !v.is_empty());
        let invalid = |detail: &str, reason: &str| {
            ApiError::invalid(
                "ListOptions",
                "meta.k8s.io",
                "",
                "resourceVersionMatch",
                reason,
                detail,
            )
        };
        if let Some(m) = &resource_version_match {
            if !matches!(m.as_str(), "NotOlderThan" | "Exact") {
                return Err(invalid(
                    &format!("{m:?}: supported values: \"Exact\", \"NotOlderThan\", \"\""),
                    "FieldValueNotSupported",
                ));
            }
            if continue_token.is_some() {
                return Err(invalid(
                    "resourceVersionMatch is forbidden when continue is provided",
                    "FieldValueForbidden",
                ));
            }
            match resource_version.as_deref() {
                None => {
                    return Err(invalid(
                        "resourceVersionMatch is forbidden unless resourceVersion is provided",
                        "FieldValueForbidden",
                    ));
                }
                Some("0") if m == "Exact" => {
                    return Err(invalid(
                        "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                        "FieldValueForbidden",
                    ));
                }
                _ => {}
            }
        }
        if continue_token.is_some() && resource_version.as_deref().is_some_and(|v| v != "0") {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        Ok(Self {
            selectors,
            limit,
            continue_token,
            resource_version,
            resource_version_match,
        })
    }
}

/// An etcd3 continue token: the snapshot revision and the last key returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContinueToken {
    /// -1 continues at the latest revision (after the original was compacted).
    pub rv: i64,
    /// Relative key of the last item returned.
    pub last_key: String,
}

impl ContinueToken {
    pub fn encode(&self) -> String {
        let raw = json!({"v": "meta.k8s.io/v1", "rv": self.rv, "start": format!("{}\u{0}", self.last_key)});
        base64::engine::general_purpose::URL_SAFE.encode(raw.to_string())
    }

    pub fn decode(token: &str) -> Result<Self, ApiError> {
        let invalid =
            |why: &str| ApiError::bad_request(format!("continue key is not valid: {why}"));
        let bytes = base64::engine::general_purpose::URL_SAFE
            .decode(token)
            .or_else(|_| base64::engine::general_purpose::STANDARD.decode(token))
            .map_err(|_| invalid("illegal base64 data"))?;
        let raw: Value =
            serde_json::from_slice(&bytes).map_err(|_| invalid("not a JSON continue token"))?;
        if raw.get("v").and_then(Value::as_str) != Some("meta.k8s.io/v1") {
            return Err(invalid(
                "incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
            ));
        }
        let rv = raw
            .get("rv")
            .and_then(Value::as_i64)
            .ok_or_else(|| invalid("missing rv"))?;
        if rv == 0 || rv < -1 {
            return Err(invalid(
                "incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
            ));
        }
        let start = raw
            .get("start")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("missing start"))?;
        if start.is_empty()
            || start.starts_with('/')
            || start.contains("/../")
            || start.starts_with("../")
        {
            return Err(invalid("path traversal attempt detected"));
        }
        let last_key = start.strip_suffix('\u{0}').unwrap_or(start).to_owned();
        Ok(Self { rv, last_key })
    }
}

/// One page of a list.
#[derive(Debug)]
pub struct ListResult {
    pub items: Vec<Arc<Value>>,
    pub resource_version: u64,
    pub continue_token: Option<String>,
    pub remaining_item_count: Option<usize>,
}

/// Waits until the store has reached `rv`, or fails like the cacher does.
pub async fn wait_for_rv(shared: &Shared, rv: u64) -> Result<(), ApiError> {
    let mut rx = shared.store.subscribe();
    let deadline = tokio::time::Instant::now() + FRESHNESS_WAIT;
    loop {
        let current = *rx.borrow_and_update();
        if current >= rv {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            _ => {
                return Err(ApiError::too_large_resource_version(
                    rv,
                    shared.store.current_rv(),
                ));
            }
        }
    }
}

fn parse_rv(rv: &str) -> Result<u64, ApiError> {
    rv.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))
}

fn too_old_list() -> ApiError {
    ApiError::expired("The resourceVersion for the provided list is too old.")
}

/// Runs a LIST.
pub async fn list(
    shared: &Shared,
    rt: &ResourceType,
    namespace: Option<&str>,
    params: &ListParams,
) -> Result<ListResult, ApiError> {
    let gr = rt.storage_key();
    let current = shared.store.current_rv();
    let mut limit = params.limit;
    let mut start_after: Option<String> = None;
    let snapshot: u64 = if let Some(token) = &params.continue_token {
        let token = ContinueToken::decode(token)?;
        start_after = Some(token.last_key.clone());
        if token.rv == -1 {
            current
        } else {
            let rv = token.rv as u64;
            if rv < shared.store.oldest_rv() {
                return Err(expired_continue(shared, &gr, namespace, &token.last_key));
            }
            rv
        }
    } else {
        match (
            params.resource_version.as_deref(),
            params.resource_version_match.as_deref(),
        ) {
            (None, _) => current,
            (Some("0"), _) => {
                // Served from the watch cache, which ignores limit for RV=0.
                limit = None;
                current
            }
            (Some(rv), Some("Exact")) => {
                let rv = parse_rv(rv)?;
                wait_for_rv(shared, rv).await?;
                rv
            }
            (Some(rv), None) if limit.is_some() => {
                // Legacy: a limit with an explicit RV is an exact read from etcd.
                let rv = parse_rv(rv)?;
                wait_for_rv(shared, rv).await?;
                rv
            }
            (Some(rv), _) => {
                let rv = parse_rv(rv)?;
                wait_for_rv(shared, rv).await?;
                shared.store.current_rv()
            }
        }
    };
    let all = shared
        .store
        .list_at(&gr, namespace, snapshot, start_after.as_deref())
        .map_err(|ReadError::TooOld { .. }| too_old_list())?;
    let mut items = Vec::new();
    let mut last_index = None;
    for (i, (_, obj)) in all.iter().enumerate() {
        if limit.is_some_and(|l| items.len() >= l) {
            break;
        }
        last_index = Some(i);
        if params.selectors.matches(obj) {
            items.push(obj.clone());
        }
    }
    let (continue_token, remaining) = match (limit, last_index) {
        (Some(l), Some(i)) if items.len() >= l && i + 1 < all.len() => {
            let token = ContinueToken {
                rv: snapshot as i64,
                last_key: all[i].0.relative().to_owned(),
            };
            let remaining = params.selectors.is_empty().then_some(all.len() - i - 1);
            (Some(token.encode()), remaining)
        }
        _ => (None, None),
    };
    Ok(ListResult {
        items,
        resource_version: snapshot,
        continue_token,
        remaining_item_count: remaining,
    })
}

/// The 410 for a compacted continue token; its Status carries a token that
/// continues (inconsistently) at the latest revision, as etcd3's store does.
fn expired_continue(
    shared: &Shared,
    gr: &str,
    namespace: Option<&str>,
    last_key: &str,
) -> ApiError {
    let mut err = ApiError::expired(
        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
    );
    let rest = shared
        .store
        .list_at(gr, namespace, shared.store.current_rv(), Some(last_key))
        .unwrap_or_default();
    if !rest.is_empty() {
        err.continue_token = Some(
            ContinueToken {
                rv: -1,
                last_key: last_key.to_owned(),
            }
            .encode(),
        );
    }
    err
}

/// List metadata (resourceVersion, continue, remainingItemCount).
pub fn list_meta(result: &ListResult) -> Value {
    let mut meta = Map::new();
    meta.insert(
        "resourceVersion".into(),
        json!(result.resource_version.to_string()),
    );
    if let Some(c) = &result.continue_token {
        meta.insert("continue".into(), json!(c));
    }
    if let Some(n) = result.remaining_item_count {
        meta.insert("remainingItemCount".into(), json!(n));
    }
    Value::Object(meta)
}

/// The `<Kind>List` object. Typed (built-in) lists omit apiVersion/kind on
/// their items, unstructured (custom) lists keep them.
pub fn list_object(rt: &ResourceType, result: &ListResult) -> Value {
    let items: Vec<Value> = result
        .items
        .iter()
        .map(|o| {
            let mut o = (**o).clone();
            if rt.builtin
                && let Some(m) = o.as_object_mut()
            {
                m.remove("apiVersion");
                m.remove("kind");
            }
            o
        })
        .collect();
    json!({
        "kind": rt.list_kind(),
        "apiVersion": rt.api_version(),
        "metadata": list_meta(result),
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let t = ContinueToken {
            rv: 42,
            last_key: "default/pod-7".into(),
        };
        let encoded = t.encode();
        assert_eq!(ContinueToken::decode(&encoded).expect("decodes"), t);
        let raw = String::from_utf8(
            base64::engine::general_purpose::URL_SAFE
                .decode(&encoded)
                .expect("base64"),
        )
        .expect("utf8");
        assert!(raw.contains("\"start\":\"default/pod-7\\u0000\""), "{raw}");
        assert!(ContinueToken::decode("!!!").is_err());
        let bad =
            base64::engine::general_purpose::URL_SAFE.encode(r#"{"v":"x","rv":1,"start":"a"}"#);
        assert_eq!(
            ContinueToken::decode(&bad).expect_err("bad version").code,
            400
        );
    }

    #[test]
    fn list_options_validation() {
        let rt = ResourceType::custom("example.com", "v1", "widgets", "Widget", true);
        let params = |pairs: &'static [(&'static str, &'static str)]| {
            ListParams::parse(&rt, |k| {
                pairs
                    .iter()
                    .find(|(x, _)| *x == k)
                    .map(|(_, v)| (*v).to_owned())
            })
        };
        assert_eq!(
            params(&[("resourceVersionMatch", "Exact")])
                .expect_err("needs rv")
                .code,
            422
        );
        assert_eq!(
            params(&[("continue", "abc"), ("resourceVersion", "5")])
                .expect_err("rv with continue")
                .code,
            400
        );
        assert_eq!(
            params(&[("fieldSelector", "spec.foo=bar")])
                .expect_err("unknown field")
                .code,
            400
        );
        assert_eq!(params(&[("limit", "2")]).expect("ok").limit, Some(2));
    }
}
