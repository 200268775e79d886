//! Media types and content negotiation, following the apiserver
//! (`k8s.io/apiserver/pkg/endpoints/handlers/negotiation/negotiate.go`) and the
//! `goautoneg` Accept parser it uses:
//!
//! * Accept clauses are split on `,` and parameters on `;`; `q` is parsed as a float
//!   (an unparsable q counts as 0 — and a q of 0 is not excluded); other parameters are
//!   kept verbatim; a clause with no `/` other than `*` is dropped.
//! * Clauses are ordered by Go's `sort.Sort` with goautoneg's comparator (higher q
//!   first, then concrete type before `*`, concrete subtype before `*`); for up to 12
//!   clauses that is an insertion sort, reproduced here exactly.
//! * The first clause, in that order, that matches an offered format (exact, `type/*`
//!   or `*/*`) and whose parameters the endpoint allows wins; the formats are tried in
//!   the order offered (the apiserver offers JSON, YAML, protobuf).
//! * An empty header picks the first offered format.

use super::Format;

/// One clause of an Accept header.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptClause<'a> {
    pub type_: &'a str,
    pub subtype: &'a str,
    pub q: f64,
    pub params: Vec<(&'a str, &'a str)>,
}

impl AcceptClause<'_> {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }
}

/// Parses an Accept header into clauses, in goautoneg's preference order.
pub fn parse_accept(header: &str) -> Vec<AcceptClause<'_>> {
    let mut clauses = Vec::new();
    for part in header.split(',') {
        let part = part.trim_matches(' ');
        let mut pieces = part.split(';');
        let range = pieces.next().unwrap_or_default();
        let mut sp = range.split('/');
        let type_ = sp.next().unwrap_or_default().trim_matches(' ');
        let subtype = match (sp.next(), sp.next()) {
            (None, _) if type_ == "*" => "*",
            (Some(sub), None) => sub.trim_matches(' '),
            _ => continue,
        };
        let mut clause = AcceptClause {
            type_,
            subtype,
            q: 1.0,
            params: Vec::new(),
        };
        for param in pieces {
            let Some((k, v)) = param.split_once('=') else {
                continue;
            };
            let k = k.trim_matches(' ');
            if k == "q" {
                // Go: strconv.ParseFloat(sp[1], 32) on the untrimmed value; errors give 0.
                clause.q = v.parse::<f32>().map(f64::from).unwrap_or(0.0);
            } else {
                clause.params.push((k, v.trim_matches(' ')));
            }
        }
        clauses.push(clause);
    }
    // Go's sort.Sort uses insertion sort below 13 elements; its comparator is not a
    // strict weak order, so the algorithm matters for odd headers.
    if clauses.len() <= 12 {
        for i in 1..clauses.len() {
            let mut j = i;
            while j > 0 && accept_less(&clauses[j], &clauses[j - 1]) {
                clauses.swap(j, j - 1);
                j -= 1;
            }
        }
    } else {
        clauses.sort_by(|a, b| {
            if accept_less(a, b) {
                std::cmp::Ordering::Less
            } else if accept_less(b, a) {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        });
    }
    clauses
}

fn accept_less(a: &AcceptClause<'_>, b: &AcceptClause<'_>) -> bool {
    if a.q > b.q {
        return true;
    }
    if a.type_ != "*" && b.type_ == "*" {
        return true;
    }
    a.subtype != "*" && b.subtype == "*"
}

/// A group/version/kind named by `as=`, `g=`, `v=` media type parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupVersionKind {
    pub group: String,
    pub version: String,
    pub kind: String,
}

impl GroupVersionKind {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// The parameters of the accepted clause.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaTypeOptions {
    /// `pretty=1`.
    pub pretty: bool,
    /// `stream=` (only `watch` passes the default restrictions).
    pub stream: Option<String>,
    /// The transform asked for with `as=`/`g=`/`v=`.
    pub convert: Option<GroupVersionKind>,
    /// `sv=`.
    pub use_server_version: Option<String>,
    /// `export=1`.
    pub export: bool,
    /// `profile=`.
    pub profile: Option<String>,
    /// Other parameter names, ignored.
    pub unrecognized: Vec<String>,
}

/// What an endpoint can serve beyond plain objects (apiserver `EndpointRestrictions`).
pub trait EndpointRestrictions {
    /// Whether the endpoint can answer in `type_/subtype` converted to `target`
    /// (`None`: no conversion asked).
    fn allows_media_type_transform(
        &self,
        type_: &str,
        subtype: &str,
        target: Option<&GroupVersionKind>,
    ) -> bool;
    fn allows_server_version(&self, _version: &str) -> bool {
        false
    }
    fn allows_stream_schema(&self, schema: &str) -> bool {
        schema == "watch"
    }
}

/// The apiserver's default: no conversions, `stream=watch` only.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultRestrictions;

impl EndpointRestrictions for DefaultRestrictions {
    fn allows_media_type_transform(
        &self,
        _: &str,
        _: &str,
        target: Option<&GroupVersionKind>,
    ) -> bool {
        target.is_none()
    }
}

/// What the hub serves from its cache (OpenYurt `util.go: hubEndpointRestrictions`):
/// plain objects, and `PartialObjectMetadata(List)` of `meta.k8s.io` v1/v1beta1. Table
/// is refused, so `kubectl get`'s Accept list falls through to plain JSON.
#[derive(Debug, Clone, Copy, Default)]
pub struct HubRestrictions;

impl EndpointRestrictions for HubRestrictions {
    fn allows_media_type_transform(
        &self,
        _: &str,
        _: &str,
        target: Option<&GroupVersionKind>,
    ) -> bool {
        match target {
            None => true,
            Some(gvk) => {
                gvk.group == "meta.k8s.io"
                    && (gvk.version == "v1" || gvk.version == "v1beta1")
                    && (gvk.kind == "PartialObjectMetadata"
                        || gvk.kind == "PartialObjectMetadataList")
            }
        }
    }
}

/// The apiserver's resource endpoints (`RequestScope.AllowsMediaTypeTransform`): Table
/// in JSON (and YAML) when the resource has a table convertor, PartialObjectMetadata(List)
/// in every format. Useful for an apiserver test double.
#[derive(Debug, Clone, Copy)]
pub struct ApiserverRestrictions {
    pub table: bool,
}

impl EndpointRestrictions for ApiserverRestrictions {
    fn allows_media_type_transform(
        &self,
        type_: &str,
        subtype: &str,
        target: Option<&GroupVersionKind>,
    ) -> bool {
        let Some(gvk) = target else { return true };
        if gvk.group != "meta.k8s.io" || (gvk.version != "v1" && gvk.version != "v1beta1") {
            return false;
        }
        match gvk.kind.as_str() {
            "Table" => {
                self.table && type_ == "application" && (subtype == "json" || subtype == "yaml")
            }
            "PartialObjectMetadata" | "PartialObjectMetadataList" => true,
            _ => false,
        }
    }
}

/// The outcome of negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub format: Format,
    pub options: MediaTypeOptions,
}

/// Picks the response format for an Accept header among `offered` (in server
/// preference order). `None` means 406 Not Acceptable.
pub fn negotiate(
    accept: Option<&str>,
    offered: &[Format],
    restrictions: &dyn EndpointRestrictions,
) -> Option<Negotiated> {
    let header = accept.unwrap_or("");
    if header.is_empty() {
        return offered.first().map(|f| Negotiated {
            format: *f,
            options: MediaTypeOptions::default(),
        });
    }
    for clause in parse_accept(header) {
        for format in offered {
            let (t, s) = format.type_subtype();
            let matches = (clause.type_ == t && (clause.subtype == s || clause.subtype == "*"))
                || (clause.type_ == "*" && clause.subtype == "*");
            if !matches {
                continue;
            }
            if let Some(options) = accept_options(&clause, t, s, restrictions) {
                return Some(Negotiated {
                    format: *format,
                    options,
                });
            }
        }
    }
    None
}

/// Negotiation for a watch: as [`negotiate`]; both formats have a stream encoding.
pub fn negotiate_stream(
    accept: Option<&str>,
    offered: &[Format],
    restrictions: &dyn EndpointRestrictions,
) -> Option<Negotiated> {
    negotiate(accept, offered, restrictions)
}

fn accept_options(
    clause: &AcceptClause<'_>,
    type_: &str,
    subtype: &str,
    restrictions: &dyn EndpointRestrictions,
) -> Option<MediaTypeOptions> {
    let mut options = MediaTypeOptions::default();
    for (k, v) in &clause.params {
        match *k {
            "as" => options.convert.get_or_insert_with(Default::default).kind = (*v).to_owned(),
            "g" => options.convert.get_or_insert_with(Default::default).group = (*v).to_owned(),
            "v" => options.convert.get_or_insert_with(Default::default).version = (*v).to_owned(),
            "stream" => {
                if !v.is_empty() && !restrictions.allows_stream_schema(v) {
                    return None;
                }
                options.stream = Some((*v).to_owned());
            }
            "sv" => {
                if !v.is_empty() && !restrictions.allows_server_version(v) {
                    return None;
                }
                options.use_server_version = Some((*v).to_owned());
            }
            "export" => options.export = *v == "1",
            "pretty" => options.pretty = *v == "1",
            "profile" => options.profile = Some((*v).to_owned()),
            other => options.unrecognized.push(other.to_owned()),
        }
    }
    if !restrictions.allows_media_type_transform(type_, subtype, options.convert.as_ref()) {
        return None;
    }
    Some(options)
}

/// The format of a request or response body from its Content-Type (parameters such as
/// `charset` or `stream=watch` are ignored; type and subtype compare case-insensitively,
/// as Go's `mime.ParseMediaType` lower-cases them). `None` for YAML, CBOR and others.
pub fn format_for_content_type(content_type: &str) -> Option<Format> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    if media.eq_ignore_ascii_case(Format::Json.media_type()) {
        Some(Format::Json)
    } else if media.eq_ignore_ascii_case(Format::Protobuf.media_type()) {
        Some(Format::Protobuf)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: &[Format] = &[Format::Json, Format::Protobuf];

    fn pick(accept: &str, offered: &[Format], r: &dyn EndpointRestrictions) -> Option<Format> {
        negotiate(Some(accept), offered, r).map(|n| n.format)
    }

    #[test]
    fn kubelet_gets_protobuf_for_builtins_and_json_for_crds() {
        let kubelet = "application/vnd.kubernetes.protobuf,application/json";
        assert_eq!(
            pick(kubelet, BOTH, &HubRestrictions),
            Some(Format::Protobuf)
        );
        assert_eq!(
            pick(kubelet, &[Format::Json], &HubRestrictions),
            Some(Format::Json)
        );
        // a watch with the stream parameter
        let watch = "application/vnd.kubernetes.protobuf;stream=watch,application/json";
        let n = negotiate_stream(Some(watch), BOTH, &HubRestrictions).expect("negotiates");
        assert_eq!(
            (n.format, n.options.stream.as_deref()),
            (Format::Protobuf, Some("watch"))
        );
    }

    #[test]
    fn wildcards_and_empty_headers_pick_the_first_offer() {
        assert_eq!(pick("*/*", BOTH, &HubRestrictions), Some(Format::Json));
        assert_eq!(
            pick("application/*", BOTH, &HubRestrictions),
            Some(Format::Json)
        );
        assert_eq!(pick("*", BOTH, &HubRestrictions), Some(Format::Json));
        assert_eq!(
            negotiate(None, BOTH, &HubRestrictions).map(|n| n.format),
            Some(Format::Json)
        );
        assert_eq!(
            negotiate(Some(""), &[Format::Protobuf], &HubRestrictions).map(|n| n.format),
            Some(Format::Protobuf)
        );
        assert_eq!(pick("text/html", BOTH, &HubRestrictions), None);
        assert_eq!(pick("application/yaml", BOTH, &HubRestrictions), None);
    }

    #[test]
    fn q_values_reorder_clauses() {
        assert_eq!(
            pick(
                "application/json;q=0.5,application/vnd.kubernetes.protobuf",
                BOTH,
                &HubRestrictions
            ),
            Some(Format::Protobuf)
        );
        assert_eq!(
            pick(
                "application/vnd.kubernetes.protobuf;q=0.1,application/json;q=0.9",
                BOTH,
                &HubRestrictions
            ),
            Some(Format::Json)
        );
        // unparsable q counts as 0 but is still acceptable (Go does not drop q=0)
        assert_eq!(
            pick("application/json;q=bogus", BOTH, &HubRestrictions),
            Some(Format::Json)
        );
        assert_eq!(
            pick(
                "*/*;q=0.8,application/vnd.kubernetes.protobuf",
                BOTH,
                &HubRestrictions
            ),
            Some(Format::Protobuf)
        );
    }

    #[test]
    fn kubectl_table_request_falls_back_to_json_at_the_hub_but_not_at_the_apiserver() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        let hub = negotiate(Some(kubectl), BOTH, &HubRestrictions).expect("json");
        assert_eq!((hub.format, hub.options.convert), (Format::Json, None));
        let api =
            negotiate(Some(kubectl), BOTH, &ApiserverRestrictions { table: true }).expect("table");
        let convert = api.options.convert.expect("converts");
        assert_eq!(
            (convert.kind.as_str(), convert.api_version()),
            ("Table", "meta.k8s.io/v1".to_owned())
        );
        // Table is never offered in protobuf
        let pb_table = "application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io";
        assert_eq!(
            pick(pb_table, BOTH, &ApiserverRestrictions { table: true }),
            None
        );
    }

    #[test]
    fn partial_object_metadata_is_a_transform_the_hub_allows() {
        let accept = "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
        let n = negotiate(Some(accept), BOTH, &HubRestrictions).expect("negotiates");
        assert_eq!(n.format, Format::Protobuf);
        let convert = n.options.convert.expect("transform");
        assert_eq!(
            (
                convert.group.as_str(),
                convert.version.as_str(),
                convert.kind.as_str()
            ),
            ("meta.k8s.io", "v1", "PartialObjectMetadataList")
        );
        // the default restrictions refuse any transform, so the plain clause wins
        let plain = negotiate(Some(accept), BOTH, &DefaultRestrictions).expect("plain json");
        assert_eq!((plain.format, plain.options.convert), (Format::Json, None));
        // an unknown group is refused
        assert_eq!(
            pick(
                "application/json;as=PartialObjectMetadata;g=example.com;v=v1",
                BOTH,
                &HubRestrictions
            ),
            None
        );
    }

    #[test]
    fn stream_and_server_version_parameters_are_checked() {
        assert_eq!(
            pick("application/json;stream=other", BOTH, &HubRestrictions),
            None
        );
        assert_eq!(pick("application/json;sv=v1", BOTH, &HubRestrictions), None);
        let n = negotiate(
            Some("application/json;pretty=1;foo=bar"),
            BOTH,
            &HubRestrictions,
        )
        .expect("json");
        assert!(n.options.pretty);
        assert_eq!(n.options.unrecognized, ["foo"]);
    }

    #[test]
    fn accept_parsing_matches_goautoneg() {
        let clauses =
            parse_accept("text/*;q=0.3, text/html;q=0.7, text/html;level=1, */*;q=0.5, bogus");
        let order: Vec<String> = clauses
            .iter()
            .map(|c| format!("{}/{};{}", c.type_, c.subtype, c.q))
            .collect();
        assert_eq!(
            order,
            [
                "text/html;1",
                "text/html;0.699999988079071",
                "*/*;0.5",
                "text/*;0.30000001192092896"
            ]
        );
        assert_eq!(clauses[0].param("level"), Some("1"));
    }

    #[test]
    fn content_types_map_to_formats() {
        assert_eq!(
            format_for_content_type("application/json"),
            Some(Format::Json)
        );
        assert_eq!(
            format_for_content_type("application/json; charset=utf-8"),
            Some(Format::Json)
        );
        assert_eq!(
            format_for_content_type("Application/Vnd.Kubernetes.Protobuf;stream=watch"),
            Some(Format::Protobuf)
        );
        assert_eq!(format_for_content_type("application/yaml"), None);
        assert_eq!(format_for_content_type(""), None);
    }
}
