//! Content negotiation the way k8s.io/apiserver does it: the Accept header is
//! parsed into clauses (sorted by q, then specificity), and for each clause
//! the server's serializers are tried in their own order (JSON, YAML,
//! protobuf). A clause is accepted only if the endpoint allows its
//! parameters: `as`/`g`/`v` transforms (Table, PartialObjectMetadata[List],
//! aggregated discovery) and `stream=watch`. No acceptable clause → 406.

/// Wire formats the double can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
    Protobuf,
}

pub const JSON: &str = "application/json";
pub const YAML: &str = "application/yaml";
pub const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

impl Format {
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Json => JSON,
            Format::Yaml => YAML,
            Format::Protobuf => PROTOBUF,
        }
    }

    fn type_subtype(self) -> (&'static str, &'static str) {
        match self {
            Format::Json => ("application", "json"),
            Format::Yaml => ("application", "yaml"),
            Format::Protobuf => ("application", "vnd.kubernetes.protobuf"),
        }
    }

    /// Whether the format has a stream (watch) serializer; YAML has none.
    pub fn streams(self) -> bool {
        !matches!(self, Format::Yaml)
    }

    /// The Content-Type of a watch response in this format.
    pub fn watch_content_type(self) -> String {
        match self {
            Format::Json => JSON.to_owned(),
            other => format!("{};stream=watch", other.media_type()),
        }
    }
}

/// A requested conversion of the response (`as`, `g`, `v` parameters).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conversion {
    pub group: String,
    pub version: String,
    pub kind: String,
}

/// One parsed Accept clause.
#[derive(Clone, Debug, PartialEq)]
pub struct Clause {
    pub typ: String,
    pub subtype: String,
    pub q: f32,
    pub params: Vec<(String, String)>,
}

/// Parses an Accept header. Clauses with q=0 are dropped; the rest are
/// sorted by q (descending), then concrete types before wildcards, keeping
/// the client's order otherwise.
pub fn parse_accept(header: &str) -> Vec<Clause> {
    let mut clauses: Vec<Clause> = header
        .split(',')
        .filter_map(|part| {
            let mut pieces = part.split(';');
            let media = pieces.next()?.trim();
            let (typ, subtype) = match media.split_once('/') {
                Some((t, s)) => (t.trim(), s.trim()),
                None if media == "*" => ("*", "*"),
                None => return None,
            };
            if typ.is_empty() || subtype.is_empty() {
                return None;
            }
            let mut q = 1.0;
            let mut params = Vec::new();
            for param in pieces {
                let Some((k, v)) = param.split_once('=') else {
                    continue;
                };
                let (k, v) = (k.trim(), v.trim().trim_matches('"'));
                if k == "q" {
                    q = v.parse().unwrap_or(1.0);
                } else {
                    params.push((k.to_owned(), v.to_owned()));
                }
            }
            Some(Clause {
                typ: typ.to_owned(),
                subtype: subtype.to_owned(),
                q,
                params,
            })
        })
        .filter(|c| c.q > 0.0)
        .collect();
    clauses.sort_by(|a, b| {
        b.q.total_cmp(&a.q)
            .then_with(|| (a.typ == "*").cmp(&(b.typ == "*")))
            .then_with(|| (a.subtype == "*").cmp(&(b.subtype == "*")))
    });
    clauses
}

/// What an endpoint can serve.
pub trait Endpoint {
    /// Serializers in server preference order.
    fn formats(&self) -> &[Format];
    /// Whether a (possibly absent) conversion is allowed in this format.
    fn allows(&self, format: Format, conversion: Option<&Conversion>) -> bool;
}

/// The outcome of a successful negotiation.
#[derive(Clone, Debug, PartialEq)]
pub struct Negotiated {
    pub format: Format,
    pub conversion: Option<Conversion>,
    pub stream: bool,
    pub pretty: bool,
}

impl Negotiated {
    /// Content-Type of a non-stream response; conversions are echoed as
    /// `;g=..;v=..;as=..` like the real server's generateMediaTypeWithGVK.
    pub fn content_type(&self) -> String {
        let mut ct = self.format.media_type().to_owned();
        if let Some(conv) = &self.conversion {
            if !conv.group.is_empty() {
                ct.push_str(";g=");
                ct.push_str(&conv.group);
            }
            if !conv.version.is_empty() {
                ct.push_str(";v=");
                ct.push_str(&conv.version);
            }
            if !conv.kind.is_empty() {
                ct.push_str(";as=");
                ct.push_str(&conv.kind);
            }
        }
        ct
    }
}

/// Negotiation failure: the media types the endpoint would have accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotAcceptable {
    pub supported: Vec<String>,
}

impl NotAcceptable {
    pub fn message(&self) -> String {
        format!(
            "only the following media types are accepted: {}",
            self.supported.join(", ")
        )
    }
}

/// Negotiates the response format. `watch` asks for a stream serializer: a
/// clause that lands on a format without one fails the whole negotiation,
/// as NegotiateOutputMediaTypeStream does.
pub fn negotiate(
    accept: Option<&str>,
    endpoint: &dyn Endpoint,
    watch: bool,
) -> Result<Negotiated, NotAcceptable> {
    let formats = endpoint.formats();
    let not_acceptable = || NotAcceptable {
        supported: formats
            .iter()
            .filter(|f| !watch || f.streams())
            .map(|f| {
                if watch {
                    f.watch_content_type()
                } else {
                    f.media_type().to_owned()
                }
            })
            .collect(),
    };
    let header = accept.map(str::trim).unwrap_or("");
    let chosen = if header.is_empty() {
        formats.first().map(|&format| Negotiated {
            format,
            conversion: None,
            stream: false,
            pretty: false,
        })
    } else {
        parse_accept(header).iter().find_map(|clause| {
            formats.iter().find_map(|&format| {
                let (t, s) = format.type_subtype();
                let matches = (clause.typ == t && (clause.subtype == s || clause.subtype == "*"))
                    || (clause.typ == "*" && clause.subtype == "*");
                if !matches {
                    return None;
                }
                accept_params(clause, format, endpoint)
            })
        })
    };
    match chosen {
        Some(n) if watch && !n.format.streams() => Err(not_acceptable()),
        Some(n) => Ok(n),
        None => Err(not_acceptable()),
    }
}

fn accept_params(clause: &Clause, format: Format, endpoint: &dyn Endpoint) -> Option<Negotiated> {
    let mut conversion: Option<Conversion> = None;
    let mut stream = false;
    let mut pretty = false;
    for (k, v) in &clause.params {
        match k.as_str() {
            "as" => conversion.get_or_insert_with(Default::default).kind = v.clone(),
            "g" => conversion.get_or_insert_with(Default::default).group = v.clone(),
            "v" => conversion.get_or_insert_with(Default::default).version = v.clone(),
            "stream" if !v.is_empty() => {
                if !format.streams() || v != "watch" {
                    return None;
                }
                stream = true;
            }
            // Server-version selection is not allowed on any endpoint.
            "sv" if !v.is_empty() => return None,
            "pretty" => pretty = v == "1",
            _ => {}
        }
    }
    endpoint
        .allows(format, conversion.as_ref())
        .then_some(Negotiated {
            format,
            conversion,
            stream,
            pretty,
        })
}

/// Request body formats (Content-Type), or the 415 message.
pub fn input_format(content_type: Option<&str>, offered: &[Format]) -> Result<Format, String> {
    let media = content_type
        .and_then(|ct| ct.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if media.is_empty() {
        return offered.first().copied().ok_or_else(String::new);
    }
    offered
        .iter()
        .copied()
        .find(|f| f.media_type() == media)
        .ok_or_else(|| {
            let list: Vec<_> = offered.iter().map(|f| f.media_type()).collect();
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                list.join(", ")
            )
        })
}

/// Restrictions of a resource endpoint (get/list/watch of a registered type).
pub struct ResourceEndpoint {
    pub formats: Vec<Format>,
    /// Formats usable without a conversion (CRDs: JSON and YAML only).
    pub standard: Vec<Format>,
}

impl Endpoint for ResourceEndpoint {
    fn formats(&self) -> &[Format] {
        &self.formats
    }

    fn allows(&self, format: Format, conversion: Option<&Conversion>) -> bool {
        let Some(conv) = conversion else {
            return self.standard.contains(&format);
        };
        if conv.group != "meta.k8s.io" || !matches!(conv.version.as_str(), "v1" | "v1beta1") {
            return false;
        }
        match conv.kind.as_str() {
            "Table" => matches!(format, Format::Json | Format::Yaml),
            "PartialObjectMetadata" | "PartialObjectMetadataList" => true,
            _ => false,
        }
    }
}

/// Restrictions of endpoints that take no conversion (/version, legacy
/// discovery documents of a server without aggregated discovery).
pub struct PlainEndpoint(pub Vec<Format>);

impl Endpoint for PlainEndpoint {
    fn formats(&self) -> &[Format] {
        &self.0
    }

    fn allows(&self, _format: Format, conversion: Option<&Conversion>) -> bool {
        conversion.is_none()
    }
}

/// `/api` and `/apis`: the legacy documents or aggregated discovery
/// (`as=APIGroupDiscoveryList;g=apidiscovery.k8s.io;v=v2|v2beta1`).
pub struct DiscoveryEndpoint(pub Vec<Format>);

impl Endpoint for DiscoveryEndpoint {
    fn formats(&self) -> &[Format] {
        &self.0
    }

    fn allows(&self, _format: Format, conversion: Option<&Conversion>) -> bool {
        match conversion {
            None => true,
            Some(c) => {
                c.group == "apidiscovery.k8s.io"
                    && matches!(c.version.as_str(), "v2" | "v2beta1")
                    && c.kind == "APIGroupDiscoveryList"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin() -> ResourceEndpoint {
        ResourceEndpoint {
            formats: vec![Format::Json, Format::Yaml, Format::Protobuf],
            standard: vec![Format::Json, Format::Yaml, Format::Protobuf],
        }
    }

    fn crd() -> ResourceEndpoint {
        ResourceEndpoint {
            formats: vec![Format::Json, Format::Yaml, Format::Protobuf],
            standard: vec![Format::Json, Format::Yaml],
        }
    }

    #[test]
    fn no_accept_header_gives_json() {
        let n = negotiate(None, &builtin(), false).expect("json");
        assert_eq!(n.format, Format::Json);
        assert_eq!(n.content_type(), "application/json");
    }

    #[test]
    fn kubectl_table_accept_picks_table_v1() {
        let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        let n = negotiate(Some(accept), &builtin(), false).expect("table");
        let conv = n.conversion.clone().expect("conversion");
        assert_eq!((conv.kind.as_str(), conv.version.as_str()), ("Table", "v1"));
        assert_eq!(
            n.content_type(),
            "application/json;g=meta.k8s.io;v=v1;as=Table"
        );
    }

    #[test]
    fn unknown_conversion_falls_back_to_next_clause() {
        let accept = "application/json;as=Frob;v=v1;g=meta.k8s.io, application/yaml";
        let n = negotiate(Some(accept), &builtin(), false).expect("yaml");
        assert_eq!(n.format, Format::Yaml);
        assert_eq!(n.conversion, None);
    }

    #[test]
    fn protobuf_only_on_crd_is_not_acceptable() {
        let err = negotiate(Some(PROTOBUF), &crd(), false).expect_err("406");
        assert!(
            err.message()
                .starts_with("only the following media types are accepted")
        );
        // ...but metadata-only protobuf is fine, as on the real server.
        let n = negotiate(
            Some("application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"),
            &crd(),
            false,
        )
        .expect("partial metadata in protobuf");
        assert_eq!(n.format, Format::Protobuf);
        // protobuf first, json second: json wins on a CRD.
        let n = negotiate(
            Some("application/vnd.kubernetes.protobuf, application/json"),
            &crd(),
            false,
        )
        .expect("fallback");
        assert_eq!(n.format, Format::Json);
    }

    #[test]
    fn q_values_and_wildcards_order_clauses() {
        let n = negotiate(
            Some("application/json;q=0.5, application/yaml"),
            &builtin(),
            false,
        )
        .expect("yaml preferred");
        assert_eq!(n.format, Format::Yaml);
        let n = negotiate(Some("*/*"), &builtin(), false).expect("any");
        assert_eq!(n.format, Format::Json);
        let n = negotiate(Some("text/html, */*;q=0.1"), &builtin(), false).expect("any");
        assert_eq!(n.format, Format::Json);
        assert!(negotiate(Some("text/html"), &builtin(), false).is_err());
    }

    #[test]
    fn watch_needs_a_stream_serializer() {
        let err = negotiate(Some("application/yaml"), &builtin(), true).expect_err("no yaml watch");
        assert_eq!(
            err.supported,
            [
                "application/json",
                "application/vnd.kubernetes.protobuf;stream=watch"
            ]
        );
        let n = negotiate(
            Some("application/vnd.kubernetes.protobuf;stream=watch"),
            &builtin(),
            true,
        )
        .expect("protobuf watch");
        assert_eq!(n.format, Format::Protobuf);
        assert!(n.stream);
    }

    #[test]
    fn discovery_accepts_aggregated_or_legacy() {
        let ep = DiscoveryEndpoint(vec![Format::Json, Format::Yaml]);
        let accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        let n = negotiate(Some(accept), &ep, false).expect("aggregated");
        assert_eq!(
            n.content_type(),
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
        );
        let plain = PlainEndpoint(vec![Format::Json]);
        let n = negotiate(Some(accept), &plain, false).expect("legacy");
        assert_eq!(n.content_type(), "application/json");
    }

    #[test]
    fn input_formats() {
        let offered = [Format::Json, Format::Yaml];
        assert_eq!(input_format(None, &offered), Ok(Format::Json));
        assert_eq!(
            input_format(Some("application/yaml; charset=utf-8"), &offered),
            Ok(Format::Yaml)
        );
        assert!(
            input_format(Some(PROTOBUF), &offered)
                .expect_err("415")
                .contains("accepted media types include: application/json, application/yaml")
        );
    }
}
