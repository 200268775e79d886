//! JSON → protobuf → JSON round trips over the fixtures, and checks of the protobuf we
//! write against the independent k8s-pb (prost) types.

use prost::Message;
use serde_json::{Value, json};

use super::fixtures::{self, Fixture};
use crate::codec::{
    CodecError, Format, convert_body, decode_as, decode_prost, encode_prost, encode_resource,
    object_info, parse_envelope, to_json, to_protobuf,
};

/// Kubernetes cannot tell an empty list from an absent one on the protobuf wire (nor
/// does Go's JSON after a protobuf hop), so both sides drop `[]` before comparing.
fn normalise(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !matches!(v, Value::Array(a) if a.is_empty()))
                .map(|(k, v)| (k.clone(), normalise(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalise).collect()),
        other => other.clone(),
    }
}

fn assert_same(context: &str, ours: &Value, expected: &Value) {
    let mut diffs = Vec::new();
    super::golden::json_diff("", &normalise(ours), &normalise(expected), &mut diffs);
    // An embedded object's TypeMeta is not on the protobuf wire (Go loses it the same
    // way); k8s-openapi writes it for the PVC templates of a StatefulSet.
    diffs.retain(|d| {
        !(d.starts_with(".spec.volumeClaimTemplates[")
            && (d.contains("].apiVersion: only go") || d.contains("].kind: only go")))
    });
    assert!(diffs.is_empty(), "{context}: {diffs:#?}");
}

#[test]
fn every_fixture_round_trips_json_protobuf_json() {
    let all = fixtures::all();
    assert!(all.len() >= 20, "fixtures cover too few kinds");
    for Fixture {
        api_version,
        kind,
        json,
    } in &all
    {
        let pb = to_protobuf(api_version, kind, json)
            .unwrap_or_else(|e| panic!("{kind}: encode failed: {e}"));
        let env = parse_envelope(&pb).expect("enveloped");
        assert_eq!((env.api_version, env.kind), (*api_version, *kind));
        let back = to_json(&pb).unwrap_or_else(|e| panic!("{kind}: decode failed: {e}"));
        assert_same(&format!("{api_version} {kind}"), &back, json);
        // and the JSON body format passes through unchanged
        let body = Format::Json
            .encode_object(api_version, kind, json)
            .expect("json encodes");
        assert_eq!(
            &Format::Json.decode_object(&body).expect("json decodes"),
            json
        );
    }
}

/// Decodes `raw` with the prost type and re-encodes it. prost writes set fields in tag
/// order, as our encoder does, so equal bytes mean every field we wrote has the wire
/// type and number k8s-pb expects and nothing was left over.
fn prost_reencode<M: Message + Default>(raw: &[u8]) -> Vec<u8> {
    M::decode(raw)
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", std::any::type_name::<M>()))
        .encode_to_vec()
}

fn prost_reencode_kind(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    use k8s_pb::api::{
        apps, authentication, authorization, certificates, coordination, core, discovery, events,
    };
    use k8s_pb::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
    match (api_version, kind) {
        ("v1", "Pod") => prost_reencode::<core::v1::Pod>(raw),
        ("v1", "Node") => prost_reencode::<core::v1::Node>(raw),
        ("v1", "Service") => prost_reencode::<core::v1::Service>(raw),
        ("v1", "Endpoints") => prost_reencode::<core::v1::Endpoints>(raw),
        ("v1", "ConfigMap") => prost_reencode::<core::v1::ConfigMap>(raw),
        ("v1", "Secret") => prost_reencode::<core::v1::Secret>(raw),
        ("v1", "Namespace") => prost_reencode::<core::v1::Namespace>(raw),
        ("v1", "Event") => prost_reencode::<core::v1::Event>(raw),
        ("v1", "ServiceAccount") => prost_reencode::<core::v1::ServiceAccount>(raw),
        ("v1", "Status") => prost_reencode::<meta::Status>(raw),
        ("coordination.k8s.io/v1", "Lease") => prost_reencode::<coordination::v1::Lease>(raw),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            prost_reencode::<discovery::v1::EndpointSlice>(raw)
        }
        ("events.k8s.io/v1", "Event") => prost_reencode::<events::v1::Event>(raw),
        ("certificates.k8s.io/v1", "CertificateSigningRequest") => {
            prost_reencode::<certificates::v1::CertificateSigningRequest>(raw)
        }
        ("apps/v1", "Deployment") => prost_reencode::<apps::v1::Deployment>(raw),
        ("apps/v1", "DaemonSet") => prost_reencode::<apps::v1::DaemonSet>(raw),
        ("apps/v1", "StatefulSet") => prost_reencode::<apps::v1::StatefulSet>(raw),
        ("apps/v1", "ReplicaSet") => prost_reencode::<apps::v1::ReplicaSet>(raw),
        ("apps/v1", "ControllerRevision") => prost_reencode::<apps::v1::ControllerRevision>(raw),
        ("authorization.k8s.io/v1", "SubjectAccessReview") => {
            prost_reencode::<authorization::v1::SubjectAccessReview>(raw)
        }
        ("authentication.k8s.io/v1", "TokenRequest") => {
            prost_reencode::<authentication::v1::TokenRequest>(raw)
        }
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            prost_reencode::<apiextensions::CustomResourceDefinition>(raw)
        }
        _ => panic!("no prost type listed for {api_version} {kind}"),
    }
}

#[test]
fn protobuf_output_reads_back_identically_through_k8s_pb_types() {
    for Fixture {
        api_version,
        kind,
        json,
    } in &fixtures::all()
    {
        let pb = to_protobuf(api_version, kind, json).expect("encodes");
        let raw = parse_envelope(&pb).expect("enveloped").raw;
        let reencoded = prost_reencode_kind(api_version, kind, raw);
        if reencoded != raw {
            // prost leaves empty keys and values out of map entries, which Go (and we)
            // write; anything else would show up as a difference in the decoded JSON.
            let ours = to_json(&pb).expect("decodes");
            let theirs =
                to_json(&crate::codec::envelope(api_version, kind, &reencoded)).expect("decodes");
            assert_eq!(
                ours, theirs,
                "{api_version} {kind}: prost reads our protobuf differently"
            );
            assert!(
                reencoded.len() < raw.len(),
                "{api_version} {kind}: prost wrote more than we did"
            );
        }
    }
}

fn fixture(kind: &str) -> Fixture {
    fixtures::all()
        .into_iter()
        .find(|f| f.kind == kind)
        .unwrap_or_else(|| panic!("no fixture {kind}"))
}

fn pb_of(kind: &str) -> Vec<u8> {
    let f = fixture(kind);
    to_protobuf(f.api_version, f.kind, &f.json).expect("encodes")
}

#[test]
fn pod_fields_land_where_k8s_pb_expects_them() {
    use k8s_pb::api::core::v1::Pod;
    let pod: Pod = decode_prost(&pb_of("Pod")).expect("decodes as k8s-pb Pod");
    let meta = pod.metadata.as_ref().expect("metadata");
    assert_eq!(meta.name.as_deref(), Some("agent-x7k2p"));
    assert_eq!(meta.labels.get("tier").map(String::as_str), Some("edge"));
    assert_eq!(
        meta.creation_timestamp.as_ref().and_then(|t| t.seconds),
        Some(1_714_557_600)
    );
    assert_eq!(
        meta.deletion_grace_period_seconds,
        Some(0),
        "explicit zero of a pointer field survives"
    );
    let fields_v1 = meta.managed_fields[0]
        .fields_v1
        .as_ref()
        .and_then(|f| f.raw.clone())
        .expect("fieldsV1 raw");
    let fields_json: Value = serde_json::from_slice(&fields_v1).expect("fieldsV1 holds json");
    assert_eq!(
        fields_json,
        json!({"f:metadata": {"f:labels": {".": {}, "f:tier": {}}}})
    );

    let spec = pod.spec.as_ref().expect("spec");
    assert_eq!(spec.node_name.as_deref(), Some("edge-node-1"));
    assert_eq!(
        spec.automount_service_account_token,
        Some(false),
        "false pointer survives"
    );
    assert_eq!(spec.host_network, Some(false));
    assert_eq!(spec.priority, Some(-10), "negative int32");
    let c = &spec.containers[0];
    assert_eq!(c.args, ["--port=8080", ""]);
    assert_eq!(c.ports[1].host_ip.as_deref(), Some("169.254.2.1"));
    // Go embedded LocalObjectReference: JSON `name` is protobuf field 1 → name
    let cm_ref = c.env[2]
        .value_from
        .as_ref()
        .and_then(|v| v.config_map_key_ref.as_ref())
        .expect("configMapKeyRef");
    assert_eq!(
        cm_ref
            .local_object_reference
            .as_ref()
            .and_then(|r| r.name.as_deref()),
        Some("cfg")
    );
    assert_eq!(cm_ref.optional, Some(true));
    let divisor = c.env[5]
        .value_from
        .as_ref()
        .and_then(|v| v.resource_field_ref.as_ref())
        .and_then(|r| r.divisor.as_ref());
    assert_eq!(divisor.and_then(|q| q.string.as_deref()), Some("1Mi"));
    let limits = &c.resources.as_ref().expect("resources").limits;
    assert_eq!(
        limits.get("memory").and_then(|q| q.string.as_deref()),
        Some("128Mi")
    );
    // IntOrString, both arms
    let http = c
        .liveness_probe
        .as_ref()
        .and_then(|p| p.handler.as_ref())
        .and_then(|h| h.http_get.as_ref())
        .expect("httpGet");
    let port = http.port.as_ref().expect("port");
    assert_eq!((port.r#type, port.int_val), (Some(0), Some(8080)));
    let tcp = c
        .readiness_probe
        .as_ref()
        .and_then(|p| p.handler.as_ref())
        .and_then(|h| h.tcp_socket.as_ref())
        .expect("tcp");
    let port = tcp.port.as_ref().expect("port");
    assert_eq!(
        (port.r#type, port.str_val.as_deref()),
        (Some(1), Some("http"))
    );
    // Go embedded VolumeSource in Volume
    let vol = spec.volumes[0]
        .volume_source
        .as_ref()
        .and_then(|s| s.config_map.as_ref())
        .expect("configMap volume");
    assert_eq!(
        vol.local_object_reference
            .as_ref()
            .and_then(|r| r.name.as_deref()),
        Some("cfg")
    );
    assert_eq!(vol.default_mode, Some(420));
    let status = pod.status.as_ref().expect("status");
    assert_eq!(status.pod_ips.len(), 2);
    let last = status.container_statuses[0]
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("terminated");
    assert_eq!(last.exit_code, Some(137));
}

#[test]
fn special_forms_land_where_k8s_pb_expects_them() {
    use k8s_pb::api::{apps, certificates, coordination, core};
    use k8s_pb::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

    let node: core::v1::Node = decode_prost(&pb_of("Node")).expect("Node");
    let endpoint = node
        .status
        .as_ref()
        .and_then(|s| s.daemon_endpoints.as_ref())
        .and_then(|d| d.kubelet_endpoint.as_ref());
    assert_eq!(
        endpoint.and_then(|e| e.port),
        Some(10250),
        "JSON name `Port` (capitalised) maps to field 1"
    );

    let secret: core::v1::Secret = decode_prost(&pb_of("Secret")).expect("Secret");
    assert_eq!(
        secret.data.get("raw").map(Vec::as_slice),
        Some(&[0x80, 0x80, 0x80, 0xff][..]),
        "bytes are base64-decoded"
    );
    assert_eq!(secret.data.get("tls.key").map(Vec::len), Some(0));
    let cm: core::v1::ConfigMap = decode_prost(&pb_of("ConfigMap")).expect("ConfigMap");
    assert_eq!(
        cm.binary_data.get("blob").map(Vec::as_slice),
        Some(&[0, 1, 2, 3, 255, 254, 253][..])
    );
    assert_eq!(
        cm.data.get("multi\nline").map(String::as_str),
        Some("a\nb😀\"q\"")
    );

    let lease: coordination::v1::Lease = decode_prost(&pb_of("Lease")).expect("Lease");
    let renew = lease
        .spec
        .as_ref()
        .and_then(|s| s.renew_time.as_ref())
        .expect("renewTime");
    assert_eq!(
        (renew.seconds, renew.nanos),
        (Some(1_714_557_931), Some(417_562_000)),
        "MicroTime keeps microseconds"
    );

    let csr: certificates::v1::CertificateSigningRequest =
        decode_prost(&pb_of("CertificateSigningRequest")).expect("CSR");
    let spec = csr.spec.as_ref().expect("spec");
    assert!(
        spec.request
            .as_ref()
            .is_some_and(|r| r.starts_with(b"-----BEGIN CERTIFICATE REQUEST"))
    );
    assert_eq!(
        spec.extra
            .get("authentication.kubernetes.io/credential-id")
            .map(|v| v.items.clone()),
        Some(vec!["X509SHA256=abc".to_owned()])
    );
    assert_eq!(spec.extra.get("empty").map(|v| v.items.len()), Some(0));

    let deployment: apps::v1::Deployment = decode_prost(&pb_of("Deployment")).expect("Deployment");
    let spec = deployment.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(0), "explicit replicas: 0 is kept");
    let rolling = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .expect("rollingUpdate");
    assert_eq!(
        rolling
            .max_surge
            .as_ref()
            .and_then(|m| m.str_val.as_deref()),
        Some("25%")
    );
    assert_eq!(
        rolling.max_unavailable.as_ref().and_then(|m| m.int_val),
        Some(1)
    );

    let revision: apps::v1::ControllerRevision =
        decode_prost(&pb_of("ControllerRevision")).expect("ControllerRevision");
    let data: Value = serde_json::from_slice(
        revision
            .data
            .as_ref()
            .and_then(|d| d.raw.as_deref())
            .expect("raw"),
    )
    .expect("json");
    assert_eq!(data["spec"]["template"]["$patch"], "replace");

    let crd: CustomResourceDefinition =
        decode_prost(&pb_of("CustomResourceDefinition")).expect("CRD");
    let schema = crd
        .spec
        .as_ref()
        .and_then(|s| s.versions[0].schema.as_ref())
        .and_then(|s| s.open_apiv3_schema.as_ref())
        .expect("schema");
    assert_eq!(schema.x_kubernetes_preserve_unknown_fields, Some(false));
    let spec_props = &schema.properties["spec"];
    let replicas = &spec_props.properties["replicas"];
    assert_eq!(replicas.maximum, Some(100.5));
    assert_eq!(
        replicas.default.as_ref().and_then(|d| d.raw.as_deref()),
        Some(&b"1"[..])
    );
    assert_eq!(
        spec_props.properties["port"].x_kubernetes_int_or_string,
        Some(true)
    );
    let labels = spec_props.properties["labels"]
        .additional_properties
        .as_ref()
        .expect("additionalProperties");
    assert_eq!(
        labels.schema.as_ref().and_then(|s| s.r#type.as_deref()),
        Some("string")
    );
    let free = spec_props.properties["free"]
        .additional_properties
        .as_ref()
        .expect("additionalProperties bool");
    assert_eq!((free.allows, free.schema.is_none()), (Some(true), true));
    let items = spec_props.properties["endpoints"]
        .items
        .as_ref()
        .expect("items");
    assert!(
        items.schema.is_some() && items.j_son_schemas.is_empty(),
        "single schema"
    );
    let tuple = spec_props.properties["tuple"]
        .items
        .as_ref()
        .expect("tuple items");
    assert_eq!(tuple.j_son_schemas.len(), 2, "array of schemas");
    let deps = &spec_props.properties["deps"].dependencies;
    assert_eq!(deps["a"].property, ["b", "c"]);
    assert!(
        deps["d"]
            .schema
            .as_ref()
            .is_some_and(|s| s.required == ["e"])
    );
    assert_eq!(
        spec_props.x_kubernetes_validations[0].rule.as_deref(),
        Some("self.replicas >= 0")
    );
    let example = schema.properties["status"]
        .example
        .as_ref()
        .and_then(|e| e.raw.as_deref());
    assert_eq!(example, Some(&br#"{"ready":true}"#[..]));
}

#[test]
fn objects_built_with_k8s_pb_decode_to_kubernetes_json() {
    use k8s_pb::api::core::v1 as core;
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
    use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
    let service = core::Service {
        metadata: Some(meta::ObjectMeta {
            name: Some("svc".into()),
            namespace: Some("default".into()),
            creation_timestamp: Some(meta::Time {
                seconds: Some(1_714_557_600),
                nanos: Some(0),
            }),
            labels: [("a".to_owned(), "b".to_owned())].into(),
            ..Default::default()
        }),
        spec: Some(core::ServiceSpec {
            cluster_ip: Some("10.96.0.10".into()),
            ports: vec![core::ServicePort {
                port: Some(53),
                target_port: Some(IntOrString {
                    r#type: Some(1),
                    int_val: Some(0),
                    str_val: Some("dns".into()),
                }),
                ..Default::default()
            }],
            external_traffic_policy: Some(String::new()),
            ..Default::default()
        }),
        status: None,
    };
    let value = to_json(&encode_prost("v1", "Service", &service)).expect("decodes");
    assert_eq!(
        value,
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "svc", "namespace": "default", "creationTimestamp": "2024-05-01T10:00:00Z", "labels": {"a": "b"}},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 53, "targetPort": "dns"}], "externalTrafficPolicy": ""}
        }),
        "fields present on the wire (even empty strings) are kept; absent ones are not invented"
    );
}

#[test]
fn go_zero_values_decode_like_go() {
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
    // Go always writes non-pointer fields; a zero time is an empty message and
    // marshals to JSON null.
    let partial = meta::PartialObjectMetadata {
        metadata: Some(meta::ObjectMeta {
            name: Some(String::new()),
            generation: Some(0),
            creation_timestamp: Some(meta::Time::default()),
            ..Default::default()
        }),
    };
    let value = to_json(&encode_prost(
        "meta.k8s.io/v1",
        "PartialObjectMetadata",
        &partial,
    ))
    .expect("decodes");
    assert_eq!(
        value["metadata"],
        json!({"name": "", "generation": 0, "creationTimestamp": null})
    );
}

#[test]
fn typed_filters_can_edit_protobuf_objects() {
    use k8s_openapi::api::core::v1::Service;
    let f = fixture("Service");
    let pb = to_protobuf(f.api_version, f.kind, &f.json).expect("encodes");
    let mut svc: Service = decode_as(Format::Protobuf, &pb).expect("typed decode");
    assert_eq!(
        svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
        Some("10.96.0.1")
    );
    svc.metadata
        .labels
        .get_or_insert_default()
        .insert("openyurt.io/filtered".into(), "true".into());
    let edited = encode_resource(Format::Protobuf, &svc).expect("typed encode");
    let info = object_info(Format::Protobuf, &edited).expect("info");
    assert_eq!(info.label("openyurt.io/filtered"), Some("true"));
    assert_eq!(
        (info.api_version.as_ref(), info.kind.as_ref()),
        ("v1", "Service")
    );
    // and the same through JSON
    let json_body = convert_body(Format::Protobuf, Format::Json, &edited).expect("to json");
    let again: Service = decode_as(Format::Json, &json_body).expect("typed json decode");
    assert_eq!(again, svc);
    assert_eq!(
        convert_body(Format::Json, Format::Protobuf, &json_body).expect("to pb"),
        edited
    );
}

#[test]
fn conversion_errors_name_the_json_path() {
    let mut pod = fixture("Pod").json;
    pod["spec"]["containers"][0]["ports"][1]["containerPort"] = json!("fifty-three");
    let err = to_protobuf("v1", "Pod", &pod).expect_err("string in an int32");
    assert!(
        matches!(&err, CodecError::JsonShape { path, .. } if path == ".spec.containers[0].ports[1].containerPort"),
        "{err}"
    );
    let mut pod = fixture("Pod").json;
    pod["metadata"]["creationTimestamp"] = json!("yesterday");
    let err = to_protobuf("v1", "Pod", &pod).expect_err("bad time");
    assert!(
        err.to_string().contains(".metadata.creationTimestamp"),
        "{err}"
    );
    let mut pod = fixture("Pod").json;
    pod["spec"]["priority"] = json!(1u64 << 40);
    assert!(
        to_protobuf("v1", "Pod", &pod)
            .expect_err("overflow")
            .to_string()
            .contains("overflows int32")
    );
    assert!(matches!(
        to_protobuf("example.com/v1", "Widget", &json!({})),
        Err(CodecError::UnknownKind { .. })
    ));
    // unknown JSON keys are dropped, as Go's decoder does
    let mut pod = fixture("Pod").json;
    pod["spec"]["futureField"] = json!({"x": 1});
    let back = to_json(&to_protobuf("v1", "Pod", &pod).expect("encodes")).expect("decodes");
    assert!(back["spec"].get("futureField").is_none());
}

#[test]
fn truncated_or_corrupt_protobuf_is_an_error_not_a_panic() {
    let pb = pb_of("Pod");
    for cut in [5, 10, pb.len() / 2, pb.len() - 1] {
        assert!(to_json(&pb[..cut]).is_err(), "cut at {cut} must fail");
        assert!(
            object_info(Format::Protobuf, &pb[..cut]).is_err() || cut > pb.len() / 2,
            "cut at {cut}"
        );
    }
    let mut flipped = pb.clone();
    for i in (20..flipped.len()).step_by(97) {
        flipped[i] ^= 0xff;
        // must not panic; either outcome is fine
        let _ = to_json(&flipped);
        let _ = object_info(Format::Protobuf, &flipped);
    }
}
