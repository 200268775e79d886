//! `cargo xtask gen-proto-schema`: generates the protobuf ⇄ JSON schema table that
//! `yurthub::codec` uses to convert Kubernetes objects between the two wire formats.
//!
//! Inputs are the sources of the two locked crates, found through `cargo metadata`:
//! * `k8s-pb` (prost-generated): every protobuf message with its field tags, scalar
//!   kinds, cardinality and nested message types;
//! * `k8s-openapi` (serde-generated, the Kubernetes version enabled in the workspace):
//!   the exact JSON field names (its `Deserialize` impls list `"volumeID" => ...`) and
//!   the `Resource` impls that give every kind's apiVersion, plural and scope.
//!
//! A protobuf field is matched to its JSON name by comparing both names lower-cased
//! with everything but letters and digits removed (`server_address_by_client_cid_rs`
//! ⇔ `serverAddressByClientCIDRs`, `ref` ⇔ `$ref`). Two JSON names that normalise alike
//! are an error. Fields of messages that k8s-openapi does not describe get a
//! lower-camel-case guess unless [`NAME_OVERRIDES`] names them; both lists are printed by
//! `--report` so that a version bump shows what changed.
//!
//! The output is a line-oriented text file (parsed once, lazily, at run time), so it
//! costs nothing to compile and its diffs are readable. Format, one record per line:
//! ```text
//! # comment
//! M <message-name> [:<special>]        message; its fields follow; messages are numbered from 0
//! F <tag> <jsonName> <type>            type: [] prefix = repeated, {} prefix = map<string, _>;
//!                                      s string, y bytes, b bool, i32, i64, u32, u64, f32, f64,
//!                                      @<n> message number n
//! K <apiVersion> <kind> @<n> <plural|-> <N|C|S|->   kind table (scope: namespaced, cluster,
//!                                                   subresource, none)
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail, ensure};

/// Arguments of `cargo xtask gen-proto-schema`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Output file (default: yurthub/src/codec/generated/k8s_proto_schema.txt in the workspace).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write nothing; fail when the committed file differs from a fresh generation.
    #[arg(long)]
    pub check: bool,
    /// Print the name reconciliation report (guessed names, JSON-only fields, skipped kinds).
    #[arg(long)]
    pub report: bool,
    /// Workspace root (default: the parent of the xtask crate).
    #[arg(long, hide = true)]
    pub workspace: Option<PathBuf>,
}

/// Path of the committed schema, relative to the workspace root.
const DEFAULT_OUT: &str = "yurthub/src/codec/generated/k8s_proto_schema.txt";

/// JSON names that neither k8s-openapi nor the lower-camel-case guess from prost's
/// snake-case name get right (acronyms in messages k8s-openapi does not describe, API
/// versions it no longer ships). Keyed by `<message full name>.<prost field name>`;
/// they win over every other source. Found by comparing the output with the upstream
/// `generated.proto` field names; an entry that matches no field is an error.
const NAME_OVERRIDES: &[(&str, &str)] = &[
    // v1beta1 spelled it upper-case; v1 (which k8s-openapi describes) renamed it.
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1beta1.CustomResourceColumnDefinition.json_path",
        "JSONPath",
    ),
    (
        "io.k8s.api.core.v1.PodLogOptions.insecure_skip_tls_verify_backend",
        "insecureSkipTLSVerifyBackend",
    ),
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.ConversionRequest.desired_api_version",
        "desiredAPIVersion",
    ),
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1beta1.ConversionRequest.desired_api_version",
        "desiredAPIVersion",
    ),
];

/// Messages whose JSON form is not the plain object of their fields.
const SPECIALS: &[(&str, &str)] = &[
    ("io.k8s.apimachinery.pkg.apis.meta.v1.Time", "time"),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime",
        "microtime",
    ),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.Duration", "duration"),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1", "rawjson"),
    ("io.k8s.apimachinery.pkg.runtime.RawExtension", "rawext"),
    (
        "io.k8s.apimachinery.pkg.util.intstr.IntOrString",
        "intorstring",
    ),
    ("io.k8s.apimachinery.pkg.api.resource.Quantity", "quantity"),
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSON",
        "rawjson",
    ),
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1beta1.JSON",
        "rawjson",
    ),
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrBool",
        "schemaorbool",
    ),
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1beta1.JSONSchemaPropsOrBool",
        "schemaorbool",
    ),
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrArray",
        "schemaorarray",
    ),
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1beta1.JSONSchemaPropsOrArray",
        "schemaorarray",
    ),
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrStringArray",
        "schemaorstringarray",
    ),
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1beta1.JSONSchemaPropsOrStringArray",
        "schemaorstringarray",
    ),
];

/// The doc line go-to-protobuf puts on messages that wrap a Go `[]string` named type
/// (`ExtraValue`, `Verbs`): their JSON form is the bare array.
const STRING_LIST_DOC: &str = "items, if empty, will result in an empty slice";

/// Kinds from apimachinery that k8s-openapi has no `Resource` impl for (or that are
/// encoded under more than one apiVersion), mapped to their message.
const META_KINDS: &[(&str, &str, &str)] = &[
    (
        "v1",
        "Status",
        "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
    ),
    (
        "meta.k8s.io/v1",
        "Status",
        "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
    ),
    (
        "v1",
        "APIVersions",
        "io.k8s.apimachinery.pkg.apis.meta.v1.APIVersions",
    ),
    (
        "v1",
        "APIGroupList",
        "io.k8s.apimachinery.pkg.apis.meta.v1.APIGroupList",
    ),
    (
        "v1",
        "APIGroup",
        "io.k8s.apimachinery.pkg.apis.meta.v1.APIGroup",
    ),
    (
        "v1",
        "APIResourceList",
        "io.k8s.apimachinery.pkg.apis.meta.v1.APIResourceList",
    ),
    (
        "meta.k8s.io/v1",
        "PartialObjectMetadata",
        "io.k8s.apimachinery.pkg.apis.meta.v1.PartialObjectMetadata",
    ),
    (
        "meta.k8s.io/v1",
        "PartialObjectMetadataList",
        "io.k8s.apimachinery.pkg.apis.meta.v1.PartialObjectMetadataList",
    ),
    (
        "meta.k8s.io/v1beta1",
        "PartialObjectMetadata",
        "io.k8s.apimachinery.pkg.apis.meta.v1.PartialObjectMetadata",
    ),
    (
        "meta.k8s.io/v1beta1",
        "PartialObjectMetadataList",
        "io.k8s.apimachinery.pkg.apis.meta.v1beta1.PartialObjectMetadataList",
    ),
    (
        "meta.k8s.io/v1",
        "WatchEvent",
        "io.k8s.apimachinery.pkg.apis.meta.v1.WatchEvent",
    ),
    (
        "meta.k8s.io/v1",
        "DeleteOptions",
        "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
    ),
    ("v1", "List", "io.k8s.apimachinery.pkg.apis.meta.v1.List"),
];

/// API groups of proto packages that no k8s-openapi `Resource` names.
const PACKAGE_GROUPS: &[(&str, &str)] = &[
    ("io.k8s.metrics.pkg.apis.metrics", "metrics.k8s.io"),
    (
        "io.k8s.metrics.pkg.apis.custom_metrics",
        "custom.metrics.k8s.io",
    ),
    (
        "io.k8s.metrics.pkg.apis.external_metrics",
        "external.metrics.k8s.io",
    ),
    ("io.k8s.api.extensions", "extensions"),
    ("io.k8s.api.admission", "admission.k8s.io"),
    ("io.k8s.api.imagepolicy", "imagepolicy.k8s.io"),
    ("io.k8s.api.apidiscovery", "apidiscovery.k8s.io"),
];

/// Proto packages that are test fixtures, not served APIs.
const SKIPPED_MODULES: &[&str] = &["apimachinery/pkg/apis/testapigroup"];

pub fn run(args: Args) -> Result<()> {
    let root = match args.workspace {
        Some(dir) => dir,
        None => workspace_root()?,
    };
    let sources = locate_sources(&root)?;
    let generated = generate(&sources)?;
    if args.report {
        print!("{}", generated.report);
    }
    let out = args.out.unwrap_or_else(|| root.join(DEFAULT_OUT));
    if args.check {
        let committed = fs::read_to_string(&out)
            .with_context(|| format!("reading committed schema {}", out.display()))?;
        ensure!(
            committed == generated.text,
            "{} is stale: run `cargo xtask gen-proto-schema`",
            out.display()
        );
        println!("{} is up to date", out.display());
        return Ok(());
    }
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&out, &generated.text).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} ({} bytes, {} messages, {} kinds; {} guessed names)",
        out.display(),
        generated.text.len(),
        generated.messages,
        generated.kinds,
        generated.guessed
    );
    Ok(())
}

fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().map(Path::to_path_buf).ok_or_else(|| {
        anyhow!(
            "xtask manifest dir {} has no parent",
            manifest_dir.display()
        )
    })
}

struct Sources {
    pb_dir: PathBuf,
    pb_version: String,
    openapi_dir: PathBuf,
    openapi_version: String,
    /// The `v1_NN` feature enabled on k8s-openapi in this workspace.
    k8s_feature: String,
}

/// Finds the locked k8s-pb and k8s-openapi sources and the Kubernetes version feature
/// enabled on k8s-openapi, from `cargo metadata` (parsed by hand: xtask has no JSON dep).
fn locate_sources(root: &Path) -> Result<Sources> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--manifest-path",
        ])
        .arg(root.join("Cargo.toml"))
        .output()
        .context("running cargo metadata")?;
    ensure!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let meta = String::from_utf8(output.stdout).context("cargo metadata output is not UTF-8")?;

    let crate_dir = |name: &str| -> Result<(PathBuf, String)> {
        let prefix = format!("{name}-");
        let mut found = Vec::new();
        for path in json_string_values(&meta, "manifest_path") {
            let manifest = PathBuf::from(path);
            let Some(dir) = manifest.parent() else {
                continue;
            };
            let Some(dir_name) = dir.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if let Some(version) = dir_name.strip_prefix(&prefix)
                && version.starts_with(|c: char| c.is_ascii_digit())
            {
                found.push((dir.to_path_buf(), version.to_owned()));
            }
        }
        found.sort();
        found.dedup();
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => bail!("cargo metadata lists no {name} package"),
            _ => bail!("cargo metadata lists several {name} packages: {found:?}"),
        }
    };
    let (pb_dir, pb_version) = crate_dir("k8s-pb")?;
    let (openapi_dir, openapi_version) = crate_dir("k8s-openapi")?;

    // The resolve node of k8s-openapi lists its enabled features.
    let node_key = format!(
        "\"id\":\"registry+https://github.com/rust-lang/crates.io-index#k8s-openapi@{openapi_version}\",\"dependencies\""
    );
    let node_at = meta.find(&node_key).ok_or_else(|| {
        anyhow!("cargo metadata has no resolve node for k8s-openapi {openapi_version}")
    })?;
    let features_at = meta[node_at..]
        .find("\"features\":[")
        .map(|i| node_at + i + "\"features\":[".len())
        .ok_or_else(|| anyhow!("k8s-openapi resolve node has no features"))?;
    let features_end = meta[features_at..]
        .find(']')
        .map(|i| features_at + i)
        .ok_or_else(|| anyhow!("unterminated features list in cargo metadata"))?;
    let versions: Vec<String> = meta[features_at..features_end]
        .split(',')
        .map(|f| f.trim_matches('"').to_owned())
        .filter(|f| f.starts_with("v1_"))
        .collect();
    ensure!(
        versions.len() == 1,
        "expected exactly one v1_NN feature enabled on k8s-openapi, found {versions:?}"
    );
    Ok(Sources {
        pb_dir: pb_dir.join("src"),
        pb_version,
        openapi_dir: openapi_dir.join("src").join(&versions[0]),
        openapi_version,
        k8s_feature: versions[0].clone(),
    })
}

/// Every string value of `"key":"..."` in a JSON text (no escapes expected in paths).
fn json_string_values<'a>(json: &'a str, key: &str) -> Vec<&'a str> {
    let needle = format!("\"{key}\":\"");
    let mut out = Vec::new();
    let mut rest = json;
    while let Some(at) = rest.find(&needle) {
        rest = &rest[at + needle.len()..];
        if let Some(end) = rest.find('"') {
            out.push(&rest[..end]);
            rest = &rest[end..];
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// k8s-pb parsing

#[derive(Debug, Clone, PartialEq, Eq)]
enum Scalar {
    String,
    Bytes,
    Bool,
    I32,
    I64,
    U32,
    U64,
    F32,
    F64,
    Message(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Card {
    Single,
    Repeated,
    Map,
}

#[derive(Debug)]
struct PbField {
    rust_name: String,
    tag: u32,
    card: Card,
    ty: Scalar,
}

#[derive(Debug)]
struct PbMessage {
    /// `io.k8s.` + module path with crate-name hyphens, + struct name as written.
    full_name: String,
    package: String,
    doc: String,
    fields: Vec<PbField>,
}

fn package_of(module: &[String]) -> String {
    let mut parts = vec!["io".to_owned(), "k8s".to_owned()];
    for (i, m) in module.iter().enumerate() {
        if i == 0 {
            parts.push(m.replace('_', "-"));
        } else {
            parts.push(m.clone());
        }
    }
    parts.join(".")
}

fn parse_pb_crate(src: &Path) -> Result<Vec<PbMessage>> {
    let mut files = Vec::new();
    collect_files(src, &mut files)?;
    files.sort();
    let mut out = Vec::new();
    for file in files {
        if file.file_name().and_then(|n| n.to_str()) != Some("mod.rs") {
            continue;
        }
        let rel = file
            .parent()
            .and_then(|d| d.strip_prefix(src).ok())
            .ok_or_else(|| anyhow!("unexpected k8s-pb path {}", file.display()))?;
        let module: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let rel_str = module.join("/");
        if SKIPPED_MODULES.iter().any(|s| rel_str.starts_with(s)) {
            continue;
        }
        let text =
            fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        parse_pb_module(&text, &module, &mut out)
            .with_context(|| format!("parsing {}", file.display()))?;
    }
    Ok(out)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else if path.extension().and_then(|e| e.to_str()) == Some("rs") {
            out.push(path);
        }
    }
    Ok(())
}

fn parse_pb_module(text: &str, module: &[String], out: &mut Vec<PbMessage>) -> Result<()> {
    let package = package_of(module);
    let lines: Vec<&str> = text.lines().collect();
    let mut doc = String::new();
    let mut is_prost_message = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_end();
        if let Some(d) = line.strip_prefix("///") {
            doc.push_str(d.trim());
            doc.push('\n');
        } else if line.starts_with("#[derive(") {
            is_prost_message = line.contains("::prost::Message");
        } else if let Some(rest) = line.strip_prefix("pub struct ") {
            let (name, empty) = match rest.strip_suffix(" {}") {
                Some(n) => (n.trim(), true),
                None => (rest.trim_end_matches(" {").trim(), false),
            };
            ensure!(is_prost_message, "struct {name} is not a prost message");
            let mut msg = PbMessage {
                full_name: format!("{package}.{name}"),
                package: package.clone(),
                doc: std::mem::take(&mut doc),
                fields: Vec::new(),
            };
            i += 1;
            while !empty && i < lines.len() && lines[i] != "}" {
                let l = lines[i].trim();
                if let Some(attr) = l
                    .strip_prefix("#[prost(")
                    .and_then(|a| a.strip_suffix(")]"))
                {
                    // The declaration may wrap over several lines: join until the
                    // trailing comma at angle-bracket depth zero.
                    let mut decl = String::new();
                    i += 1;
                    loop {
                        ensure!(i < lines.len(), "unterminated field in {name}");
                        decl.push_str(lines[i].trim());
                        let depth: i32 = decl
                            .chars()
                            .map(|c| match c {
                                '<' => 1,
                                '>' => -1,
                                _ => 0,
                            })
                            .sum();
                        if depth == 0 && decl.ends_with(',') {
                            break;
                        }
                        i += 1;
                    }
                    msg.fields.push(
                        parse_pb_field(attr, &decl, module)
                            .with_context(|| format!("field `{decl}` of {name}"))?,
                    );
                }
                i += 1;
            }
            if empty {
                i -= 1;
            }
            msg.fields.sort_by_key(|f| f.tag);
            out.push(msg);
            is_prost_message = false;
        } else if !line.starts_with("#[") {
            doc.clear();
        }
        i += 1;
    }
    Ok(())
}

/// Splits a prost attribute body on commas outside quotes.
fn split_attr(attr: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in attr.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => parts.push(std::mem::take(&mut cur).trim().to_owned()),
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        parts.push(cur.trim().to_owned());
    }
    parts
}

fn scalar_of(name: &str) -> Option<Scalar> {
    Some(match name {
        "string" => Scalar::String,
        "bytes" => Scalar::Bytes,
        "bool" => Scalar::Bool,
        "int32" => Scalar::I32,
        "int64" => Scalar::I64,
        "uint32" => Scalar::U32,
        "uint64" => Scalar::U64,
        "float" => Scalar::F32,
        "double" => Scalar::F64,
        _ => return None,
    })
}

fn parse_pb_field(attr: &str, decl: &str, module: &[String]) -> Result<PbField> {
    let decl = decl.trim_end_matches(',');
    let (name, ty) = decl
        .strip_prefix("pub ")
        .and_then(|d| d.split_once(':'))
        .ok_or_else(|| anyhow!("unrecognised field declaration"))?;
    let rust_name = name.trim().trim_start_matches("r#").to_owned();
    let ty = ty.trim();
    let parts = split_attr(attr);
    let mut tag = None;
    let mut card = Card::Single;
    let mut scalar = None;
    let mut map_value = None;
    for p in &parts {
        if let Some(v) = p.strip_prefix("tag = ") {
            tag = Some(v.trim_matches('"').parse::<u32>().context("tag")?);
        } else if p == "repeated" {
            card = Card::Repeated;
        } else if p == "optional" || p == "boxed" || p == "required" || p.starts_with("packed") {
        } else if p == "message" {
            scalar = Some(Scalar::Message(String::new()));
        } else if let Some(kv) = p
            .strip_prefix("btree_map = ")
            .or_else(|| p.strip_prefix("map = "))
        {
            let (k, v) = kv
                .trim_matches('"')
                .split_once(',')
                .ok_or_else(|| anyhow!("bad map attribute {p}"))?;
            ensure!(k.trim() == "string", "map key {k} is not string");
            card = Card::Map;
            map_value = Some(v.trim().to_owned());
        } else if p.starts_with("bytes") {
            scalar = Some(Scalar::Bytes);
        } else if let Some(s) = scalar_of(p) {
            scalar = Some(s);
        } else {
            bail!("unsupported prost attribute `{p}`");
        }
    }
    if let Some(v) = map_value {
        scalar = Some(if v == "message" {
            Scalar::Message(String::new())
        } else if v.starts_with("bytes") {
            Scalar::Bytes
        } else {
            scalar_of(&v).ok_or_else(|| anyhow!("unsupported map value {v}"))?
        });
    }
    let mut scalar = scalar.ok_or_else(|| anyhow!("no type in prost attribute"))?;
    if let Scalar::Message(target) = &mut scalar {
        *target = resolve_message_type(ty, module)?;
    }
    Ok(PbField {
        rust_name,
        tag: tag.ok_or_else(|| anyhow!("no tag"))?,
        card,
        ty: scalar,
    })
}

/// Resolves the message type inside `Option<..>`, `Vec<..>`, `Box<..>` or the value of
/// a `BTreeMap<String, ..>` to its full name.
fn resolve_message_type(ty: &str, module: &[String]) -> Result<String> {
    // rustfmt leaves a trailing comma inside generics that wrap over several lines.
    let mut t = ty.replace(' ', "").replace(",>", ">");
    loop {
        let before = t.len();
        for wrapper in [
            "::core::option::Option<",
            "::prost::alloc::vec::Vec<",
            "::prost::alloc::boxed::Box<",
        ] {
            if let Some(inner) = t.strip_prefix(wrapper).and_then(|i| i.strip_suffix('>')) {
                t = inner.to_owned();
            }
        }
        if let Some(inner) = t
            .strip_prefix("::prost::alloc::collections::BTreeMap<")
            .and_then(|i| i.strip_suffix('>'))
        {
            let (_, v) = inner
                .split_once(',')
                .ok_or_else(|| anyhow!("bad map type {ty}"))?;
            t = v.to_owned();
        }
        if t.len() == before {
            break;
        }
    }
    let mut path: Vec<String> = module.to_vec();
    let segments: Vec<&str> = t.split("::").collect();
    let (name, prefix) = segments
        .split_last()
        .ok_or_else(|| anyhow!("empty type {ty}"))?;
    for seg in prefix {
        match *seg {
            "super" => {
                path.pop()
                    .ok_or_else(|| anyhow!("type {ty} escapes the crate"))?;
            }
            "crate" => path.clear(),
            s => path.push(s.to_owned()),
        }
    }
    ensure!(
        name.chars().all(|c| c.is_ascii_alphanumeric()),
        "unexpected type {ty}"
    );
    Ok(format!("{}.{name}", package_of(&path)))
}

// ---------------------------------------------------------------------------------------------
// k8s-openapi parsing

#[derive(Debug, Default)]
struct OpenapiDef {
    json_names: Vec<String>,
    resource: Option<OpenapiResource>,
}

#[derive(Debug, Clone)]
struct OpenapiResource {
    api_version: String,
    kind: String,
    plural: String,
    scope: char,
    list_kind: Option<String>,
}

fn parse_openapi_crate(dir: &Path) -> Result<HashMap<String, OpenapiDef>> {
    let mut files = Vec::new();
    collect_files(dir, &mut files)?;
    files.sort();
    let mut defs = HashMap::new();
    for file in files {
        let text =
            fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let Some(name) = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("// Generated from definition "))
        else {
            continue;
        };
        let mut def = OpenapiDef::default();
        let mut consts: HashMap<&str, String> = HashMap::new();
        let mut scope = '-';
        for line in text.lines() {
            let l = line.trim();
            // `"volumeID" => Field::Key_volume_id,` in the Deserialize impl.
            if l.starts_with('"') && l.contains("\" => Field::Key_") {
                let json = &l[1..l[1..].find('"').map(|e| e + 1).unwrap_or(1)];
                def.json_names.push(json.to_owned());
            }
            if let Some((k, v)) = l
                .strip_prefix("const ")
                .and_then(|rest| rest.split_once(": &'static str = "))
            {
                consts.insert(k, v.trim_end_matches(';').trim_matches('"').to_owned());
            }
            if let Some(s) = l.strip_prefix("type Scope = crate::") {
                scope = match s.trim_end_matches(';') {
                    "NamespaceResourceScope" => 'N',
                    "ClusterResourceScope" => 'C',
                    "SubResourceScope" => 'S',
                    other => bail!("unknown scope {other} in {}", file.display()),
                };
            }
        }
        if let (Some(api_version), Some(kind)) = (consts.get("API_VERSION"), consts.get("KIND")) {
            def.resource = Some(OpenapiResource {
                api_version: api_version.clone(),
                kind: kind.clone(),
                plural: consts.get("URL_PATH_SEGMENT").cloned().unwrap_or_default(),
                scope,
                list_kind: consts.get("LIST_KIND").cloned(),
            });
        }
        ensure!(
            defs.insert(name.to_owned(), def).is_none(),
            "definition {name} appears twice in k8s-openapi"
        );
    }
    Ok(defs)
}

// ---------------------------------------------------------------------------------------------
// reconciliation and output

fn normalise(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Snake case as prost (through `heck`) derives field names from proto names: a word
/// ends before an upper-case letter that follows a lower-case one (digits keep the
/// current case), and an upper-case run ends before its last letter when a lower-case
/// letter follows (`serverAddressByClientCIDRs` → `server_address_by_client_cid_rs`).
fn prost_snake(name: &str) -> String {
    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        Boundary,
        Lower,
        Upper,
    }
    let mut words: Vec<String> = Vec::new();
    for part in name.split(|c: char| !c.is_alphanumeric()) {
        let chars: Vec<char> = part.chars().collect();
        let mut start = 0;
        let mut mode = Mode::Boundary;
        for i in 0..chars.len() {
            let c = chars[i];
            let Some(&next) = chars.get(i + 1) else {
                words.push(chars[start..].iter().collect());
                break;
            };
            let next_mode = if c.is_lowercase() {
                Mode::Lower
            } else if c.is_uppercase() {
                Mode::Upper
            } else {
                mode
            };
            if next_mode == Mode::Lower && next.is_uppercase() {
                words.push(chars[start..=i].iter().collect());
                start = i + 1;
                mode = Mode::Boundary;
            } else if mode == Mode::Upper && c.is_uppercase() && next.is_lowercase() {
                words.push(chars[start..i].iter().collect());
                start = i;
                mode = Mode::Boundary;
            } else {
                mode = next_mode;
            }
        }
    }
    words
        .iter()
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect::<Vec<_>>()
        .join("_")
}

fn lower_camel(snake: &str) -> String {
    let mut out = String::new();
    for (i, part) in snake.split('_').enumerate() {
        if i == 0 {
            out.push_str(part);
        } else {
            let mut cs = part.chars();
            if let Some(c) = cs.next() {
                out.extend(c.to_uppercase());
                out.push_str(cs.as_str());
            }
        }
    }
    out
}

struct Generated {
    text: String,
    report: String,
    messages: usize,
    kinds: usize,
    guessed: usize,
}

fn generate(src: &Sources) -> Result<Generated> {
    let mut messages = parse_pb_crate(&src.pb_dir)?;
    let defs = parse_openapi_crate(&src.openapi_dir)?;
    let mut report = String::new();

    // Rename pb messages to the openapi spelling where they differ only in case
    // (`JsonSchemaProps` ⇔ `JSONSchemaProps`).
    let def_by_lower: HashMap<String, &String> = defs
        .keys()
        .map(|k| (k.replace('-', "_").to_ascii_lowercase(), k))
        .collect();
    let mut renames: HashMap<String, String> = HashMap::new();
    for m in &messages {
        if let Some(def_name) =
            def_by_lower.get(&m.full_name.replace('-', "_").to_ascii_lowercase())
            && **def_name != m.full_name
        {
            renames.insert(m.full_name.clone(), (*def_name).clone());
        }
    }
    for m in &mut messages {
        if let Some(n) = renames.get(&m.full_name) {
            m.full_name = n.clone();
        }
        for f in &mut m.fields {
            if let Scalar::Message(t) = &mut f.ty
                && let Some(n) = renames.get(t.as_str())
            {
                *t = n.clone();
            }
        }
    }
    messages.sort_by(|a, b| a.full_name.cmp(&b.full_name));
    let index: HashMap<&str, usize> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| (m.full_name.as_str(), i))
        .collect();
    ensure!(
        index.len() == messages.len(),
        "duplicate message names in k8s-pb"
    );

    // Specials are named in the openapi spelling; messages k8s-openapi no longer has
    // (v1beta1 apiextensions) keep prost's spelling, so compare case-insensitively.
    let by_lower: HashMap<String, usize> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| (m.full_name.to_ascii_lowercase(), i))
        .collect();
    let mut specials: Vec<Option<&str>> = vec![None; messages.len()];
    for (name, kind) in SPECIALS {
        let i = by_lower
            .get(&name.to_ascii_lowercase())
            .ok_or_else(|| anyhow!("special message {name} not found in k8s-pb"))?;
        specials[*i] = Some(kind);
    }
    for (i, m) in messages.iter().enumerate() {
        let is_string_list = m.doc.contains(STRING_LIST_DOC)
            && m.fields.len() == 1
            && m.fields[0].rust_name == "items"
            && m.fields[0].card == Card::Repeated
            && m.fields[0].ty == Scalar::String;
        if is_string_list {
            ensure!(
                specials[i].is_none(),
                "{} is both special and a string list",
                m.full_name
            );
            specials[i] = Some("stringlist");
        }
    }

    let mut namer = Namer::new(&messages, &index, &defs, &specials);
    for i in 0..messages.len() {
        namer.resolve(i)?;
    }
    namer.check_overrides()?;
    report.push_str(&namer.report);

    let mut text = String::new();
    writeln!(
        text,
        "# Kubernetes protobuf schema with JSON names, for yurthub::codec.\n\
         # Generated by `cargo xtask gen-proto-schema` from k8s-pb {} and k8s-openapi {} ({}); do not edit.",
        src.pb_version, src.openapi_version, src.k8s_feature
    )?;
    for (i, m) in messages.iter().enumerate() {
        match specials[i] {
            Some(s) => writeln!(text, "M {} :{s}", m.full_name)?,
            None => writeln!(text, "M {}", m.full_name)?,
        }
        let naming = namer.naming(i)?;
        for (f, json) in m.fields.iter().zip(&naming.names) {
            let ty = match &f.ty {
                Scalar::String => "s".to_owned(),
                Scalar::Bytes => "y".to_owned(),
                Scalar::Bool => "b".to_owned(),
                Scalar::I32 => "i32".to_owned(),
                Scalar::I64 => "i64".to_owned(),
                Scalar::U32 => "u32".to_owned(),
                Scalar::U64 => "u64".to_owned(),
                Scalar::F32 => "f32".to_owned(),
                Scalar::F64 => "f64".to_owned(),
                Scalar::Message(t) => format!("@{}", index[t.as_str()]),
            };
            let card = match f.card {
                Card::Single => "",
                Card::Repeated => "[]",
                Card::Map => "{}",
            };
            let json = json.as_deref().unwrap_or("~");
            writeln!(text, "F {} {json} {card}{ty}", f.tag)?;
        }
    }
    let guessed = namer.guessed;

    // Kind table: openapi Resource impls, their list kinds, and the meta kinds.
    type KindTable = BTreeMap<(String, String), (usize, String, char)>;
    fn add_kind(
        kinds: &mut KindTable,
        api_version: &str,
        kind: &str,
        msg: usize,
        plural: &str,
        scope: char,
    ) -> Result<()> {
        let key = (api_version.to_owned(), kind.to_owned());
        if let Some(prev) = kinds.get(&key) {
            ensure!(
                prev.0 == msg,
                "kind {api_version} {kind} maps to two messages"
            );
            return Ok(());
        }
        kinds.insert(key, (msg, plural.to_owned(), scope));
        Ok(())
    }
    let mut kinds = KindTable::new();
    let mut def_names: Vec<&String> = defs.keys().collect();
    def_names.sort();
    for name in def_names {
        let Some(res) = &defs[name].resource else {
            continue;
        };
        if res.api_version.starts_with('<') {
            continue; // the generic `List<T>`
        }
        let Some(&msg) = index.get(name.as_str()) else {
            writeln!(
                report,
                "skipped-kind {} {} ({name} not in k8s-pb)",
                res.api_version, res.kind
            )?;
            continue;
        };
        if res.kind == "Status" || name.contains(".apimachinery.") {
            continue; // META_KINDS decide the apiVersions of apimachinery kinds
        }
        add_kind(
            &mut kinds,
            &res.api_version,
            &res.kind,
            msg,
            &res.plural,
            res.scope,
        )?;
        if let Some(list_kind) = &res.list_kind {
            let list_name = format!("{}.{list_kind}", messages[msg].package);
            match index.get(list_name.as_str()) {
                Some(&list_msg) => {
                    add_kind(&mut kinds, &res.api_version, list_kind, list_msg, "-", '-')?
                }
                None => writeln!(
                    report,
                    "skipped-kind {} {list_kind} (no message {list_name})",
                    res.api_version
                )?,
            }
        }
    }
    for (api_version, kind, name) in META_KINDS {
        let msg = *index
            .get(name)
            .ok_or_else(|| anyhow!("meta kind message {name} not in k8s-pb"))?;
        add_kind(&mut kinds, api_version, kind, msg, "-", '-')?;
    }
    // API versions k8s-openapi no longer ships (apps/v1beta2, policy/v1beta1, ...) and the
    // metrics APIs: a message with ObjectMeta as field 1 and a sibling `<Kind>List` is a
    // kind; the group comes from another version of the same package or PACKAGE_GROUPS.
    let mut package_group: HashMap<String, String> = PACKAGE_GROUPS
        .iter()
        .map(|(p, g)| ((*p).to_owned(), (*g).to_owned()))
        .collect();
    for (name, def) in &defs {
        let Some(res) = &def.resource else { continue };
        let Some(group_package) = name
            .rsplit_once('.')
            .and_then(|(p, _)| p.rsplit_once('.'))
            .map(|(g, _)| g)
        else {
            continue;
        };
        let group = res
            .api_version
            .rsplit_once('/')
            .map(|(g, _)| g)
            .unwrap_or("");
        package_group
            .entry(group_package.to_owned())
            .or_insert_with(|| group.to_owned());
    }
    // A message no other message refers to is a top-level type: a kind (reviews,
    // options, Scale, Eviction, lists), or at worst an unused helper that nothing asks for.
    let referenced: BTreeSet<&str> = messages
        .iter()
        .flat_map(|m| m.fields.iter())
        .filter_map(|f| match &f.ty {
            Scalar::Message(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    let mut derived = 0;
    for (msg, m) in messages.iter().enumerate() {
        let list_name = format!("{}List", m.full_name);
        let list_msg = index.get(list_name.as_str()).copied();
        let is_root = !referenced.contains(m.full_name.as_str()) && !m.full_name.ends_with("List");
        if list_msg.is_none() && !is_root {
            continue;
        }
        if m.package.starts_with("io.k8s.apimachinery.") {
            continue; // META_KINDS decide the apiVersions of apimachinery kinds
        }
        let Some((group_package, version)) = m.package.rsplit_once('.') else {
            continue;
        };
        let Some(group) = package_group.get(group_package) else {
            writeln!(
                report,
                "no-group {} (package {group_package} has no known API group)",
                m.full_name
            )?;
            continue;
        };
        let api_version = if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        };
        let kind = m.full_name.rsplit('.').next().unwrap_or_default();
        if kinds.contains_key(&(api_version.clone(), kind.to_owned())) {
            continue;
        }
        // Plural and scope as in another version of the group.
        let (plural, scope) = kinds
            .iter()
            .find(|((v, k), (_, p, _))| {
                k == kind && p != "-" && v.rsplit_once('/').map(|(g, _)| g).unwrap_or("") == group
            })
            .map(|(_, (_, p, sc))| (p.clone(), *sc))
            .unwrap_or_else(|| ("-".to_owned(), '-'));
        add_kind(&mut kinds, &api_version, kind, msg, &plural, scope)?;
        if let Some(list_msg) = list_msg {
            add_kind(
                &mut kinds,
                &api_version,
                &format!("{kind}List"),
                list_msg,
                "-",
                '-',
            )?;
        }
        derived += 1;
    }
    writeln!(
        report,
        "derived {derived} kinds of API versions k8s-openapi does not describe"
    )?;
    for ((api_version, kind), (msg, plural, scope)) in &kinds {
        let plural = if plural.is_empty() { "-" } else { plural };
        writeln!(text, "K {api_version} {kind} @{msg} {plural} {scope}")?;
    }
    Ok(Generated {
        text,
        report,
        messages: messages.len(),
        kinds: kinds.len(),
        guessed,
    })
}

/// The JSON naming of one message's fields.
struct Naming {
    /// Per protobuf field, in tag order: its JSON name, or `None` when the field is a Go
    /// embedded struct whose fields appear inline in the parent's JSON object.
    names: Vec<Option<String>>,
    /// Normalised JSON names the message contributes when it is inlined.
    flat: BTreeSet<String>,
}

/// Assigns JSON names to protobuf fields (see the module docs), detecting inline
/// (embedded) messages: an unmatched message field whose own JSON names are all among
/// the parent's unmatched JSON names is inline (`Volume` embeds `VolumeSource`).
struct Namer<'a> {
    messages: &'a [PbMessage],
    index: &'a HashMap<&'a str, usize>,
    defs: &'a HashMap<String, OpenapiDef>,
    specials: &'a [Option<&'a str>],
    /// Every JSON spelling k8s-openapi uses, by the snake-case name prost would give it
    /// (which keeps word boundaries: `subResource` and `subresource` differ).
    global: HashMap<String, BTreeSet<&'a str>>,
    overrides: HashMap<&'static str, &'static str>,
    used_overrides: BTreeSet<String>,
    done: Vec<Option<Naming>>,
    visiting: Vec<bool>,
    report: String,
    guessed: usize,
}

impl<'a> Namer<'a> {
    fn new(
        messages: &'a [PbMessage],
        index: &'a HashMap<&'a str, usize>,
        defs: &'a HashMap<String, OpenapiDef>,
        specials: &'a [Option<&'a str>],
    ) -> Self {
        let mut global: HashMap<String, BTreeSet<&str>> = HashMap::new();
        for def in defs.values() {
            for j in &def.json_names {
                global.entry(prost_snake(j)).or_default().insert(j.as_str());
            }
        }
        Namer {
            messages,
            index,
            defs,
            specials,
            global,
            overrides: NAME_OVERRIDES.iter().copied().collect(),
            used_overrides: BTreeSet::new(),
            done: (0..messages.len()).map(|_| None).collect(),
            visiting: vec![false; messages.len()],
            report: String::new(),
            guessed: 0,
        }
    }

    fn naming(&self, i: usize) -> Result<&Naming> {
        self.done[i]
            .as_ref()
            .ok_or_else(|| anyhow!("{} was not resolved", self.messages[i].full_name))
    }

    fn check_overrides(&self) -> Result<()> {
        for key in self.overrides.keys() {
            ensure!(
                self.used_overrides.contains(*key),
                "override {key} matches no field"
            );
        }
        Ok(())
    }

    /// The openapi definition that names this message's fields: its own, or for API
    /// versions k8s-openapi no longer ships, the same type in another version of the group
    /// (the one sharing most field names).
    fn source_def(&self, m: &PbMessage) -> Option<(&'a str, &'a OpenapiDef)> {
        if let Some((name, def)) = self.defs.get_key_value(&m.full_name) {
            return Some((name.as_str(), def));
        }
        let (package, type_name) = m.full_name.rsplit_once('.')?;
        let group = package.rsplit_once('.').map(|(g, _)| g)?;
        let fields: BTreeSet<String> = m.fields.iter().map(|f| normalise(&f.rust_name)).collect();
        // Rank: same group first, then most shared field names, then name (for determinism).
        let mut best: Option<((bool, usize), &'a str, &'a OpenapiDef)> = None;
        for (name, def) in self.defs {
            let Some((def_package, def_type)) = name.rsplit_once('.') else {
                continue;
            };
            if !def_type.eq_ignore_ascii_case(type_name) {
                continue;
            }
            let same_group = def_package.rsplit_once('.').map(|(g, _)| g) == Some(group);
            let shared = def
                .json_names
                .iter()
                .filter(|j| fields.contains(&normalise(j)))
                .count();
            let rank = (same_group, shared);
            if best.is_none_or(|(r, n, _)| rank > r || (rank == r && name.as_str() > n)) {
                best = Some((rank, name.as_str(), def));
            }
        }
        best.map(|(_, n, d)| (n, d))
    }

    fn resolve(&mut self, i: usize) -> Result<()> {
        if self.done[i].is_some() {
            return Ok(());
        }
        self.visiting[i] = true;
        let m = &self.messages[i];
        let special = self.specials[i].is_some();
        let source = if special { None } else { self.source_def(m) };
        let mut known: HashMap<String, &'a str> = HashMap::new();
        if let Some((def_name, def)) = source {
            for j in &def.json_names {
                if let Some(prev) = known.insert(normalise(j), j.as_str()) {
                    bail!("{def_name}: JSON names {prev} and {j} normalise alike");
                }
            }
        }
        let mut names: Vec<Option<String>> = vec![None; m.fields.len()];
        let mut unmatched: BTreeSet<String> = known
            .keys()
            .filter(|k| *k != "apiversion" && *k != "kind")
            .cloned()
            .collect();
        for (f, name) in m.fields.iter().zip(names.iter_mut()) {
            let norm = normalise(&f.rust_name);
            let key = format!("{}.{}", m.full_name, f.rust_name);
            if let Some(j) = self.overrides.get(key.as_str()) {
                self.used_overrides.insert(key);
                *name = Some((*j).to_owned());
                unmatched.remove(&normalise(j));
            } else if let Some(j) = known.get(&norm) {
                *name = Some((*j).to_owned());
                unmatched.remove(&norm);
            }
        }
        // Inline (embedded) messages.
        let mut inline = vec![false; m.fields.len()];
        for (k, f) in m.fields.iter().enumerate() {
            if names[k].is_some() || f.card != Card::Single || unmatched.is_empty() {
                continue;
            }
            let Scalar::Message(t) = &f.ty else { continue };
            let child = self.index[t.as_str()];
            if self.visiting[child] || self.specials[child].is_some() {
                continue;
            }
            self.resolve(child)?;
            let flat = &self.naming(child)?.flat;
            if !flat.is_empty() && flat.is_subset(&unmatched) {
                for n in flat {
                    unmatched.remove(n);
                }
                inline[k] = true;
            }
        }
        let m = &self.messages[i];
        let mut flat = BTreeSet::new();
        for (k, f) in m.fields.iter().enumerate() {
            if inline[k] {
                writeln!(
                    self.report,
                    "inline   {}.{} (Go embedded struct)",
                    m.full_name, f.rust_name
                )?;
                let Scalar::Message(t) = &f.ty else { continue };
                flat.extend(self.naming(self.index[t.as_str()])?.flat.iter().cloned());
                continue;
            }
            let key = format!("{}.{}", m.full_name, f.rust_name);
            if names[k].is_none() {
                let spellings = self.global.get(&f.rust_name);
                names[k] = Some(match spellings {
                    Some(s) if s.len() == 1 => {
                        let j = s.iter().next().copied().unwrap_or_default();
                        if !special && source.is_some() {
                            writeln!(
                                self.report,
                                "borrowed {key} -> {j} (spelling used elsewhere)"
                            )?;
                        }
                        j.to_owned()
                    }
                    _ => {
                        let guess = lower_camel(&f.rust_name);
                        if !special {
                            self.guessed += 1;
                            writeln!(
                                self.report,
                                "guessed  {key} -> {guess} (spellings {spellings:?})"
                            )?;
                        }
                        guess
                    }
                });
            }
            if let Some(j) = &names[k] {
                flat.insert(normalise(j));
            }
        }
        if let Some((def_name, _)) = source.filter(|(n, _)| *n == m.full_name) {
            for n in &unmatched {
                writeln!(
                    self.report,
                    "json-only {}.{} (from {def_name}; no protobuf field, dropped when encoding)",
                    m.full_name, known[n]
                )?;
            }
        } else if !special {
            writeln!(self.report, "no-openapi {}", m.full_name)?;
        }
        self.visiting[i] = false;
        self.done[i] = Some(Naming { names, flat });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_follows_prost() {
        assert_eq!(
            prost_snake("serverAddressByClientCIDRs"),
            "server_address_by_client_cid_rs"
        );
        assert_eq!(
            prost_snake("insecureSkipTLSVerifyBackend"),
            "insecure_skip_tls_verify_backend"
        );
        assert_eq!(prost_snake("subResource"), "sub_resource");
        assert_eq!(prost_snake("ipv4Address"), "ipv4_address");
        assert_eq!(
            prost_snake("x-kubernetes-list-type"),
            "x_kubernetes_list_type"
        );
        assert_eq!(lower_camel("request_sub_resource"), "requestSubResource");
        assert_eq!(normalise("$ref"), normalise("ref"));
    }

    #[test]
    fn prost_attributes_and_types_parse() {
        assert_eq!(
            split_attr(r#"btree_map = "string, message", tag = "10""#),
            [r#"btree_map = "string, message""#, r#"tag = "10""#]
        );
        let module: Vec<String> = ["api", "core", "v1"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let f = parse_pb_field(
            r#"btree_map = "string, message", tag = "10""#,
            "pub allocated_resources: ::prost::alloc::collections::BTreeMap<::prost::alloc::string::String,super::super::super::apimachinery::pkg::api::resource::Quantity,>,",
            &module,
        )
        .expect("parses");
        assert_eq!((f.tag, f.card), (10, Card::Map));
        assert_eq!(
            f.ty,
            Scalar::Message("io.k8s.apimachinery.pkg.api.resource.Quantity".to_owned())
        );
        let f = parse_pb_field(
            r#"message, optional, boxed, tag = "28""#,
            "pub not: ::core::option::Option<::prost::alloc::boxed::Box<JsonSchemaProps>>,",
            &[
                "apiextensions_apiserver".to_owned(),
                "pkg".to_owned(),
                "apis".to_owned(),
                "apiextensions".to_owned(),
                "v1".to_owned(),
            ],
        )
        .expect("parses");
        assert_eq!(
            f.ty,
            Scalar::Message(
                "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JsonSchemaProps"
                    .to_owned()
            )
        );
        let f = parse_pb_field(
            r#"int64, repeated, packed = "false", tag = "3""#,
            "pub values: ::prost::alloc::vec::Vec<i64>,",
            &module,
        )
        .expect("parses");
        assert_eq!((f.card, f.ty), (Card::Repeated, Scalar::I64));
        assert!(parse_pb_field(r#"enumeration = "X", tag = "1""#, "pub e: i32,", &module).is_err());
    }
}
