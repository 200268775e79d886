//! `nodeportisolation`: NodePort and LoadBalancer Services annotated
//! `nodeport.openyurt.io/listen` open their node ports only in the pools the
//! annotation enables. The value is a comma list of pool names; `-pool`
//! disables a pool and `*` enables every pool not disabled. kube-proxy on a
//! node whose pool is not enabled never sees the Service. A node whose pool
//! is unknown keeps it.

use std::collections::BTreeSet;

use super::{FilterInputs, Object, Verdict};

pub(super) const LISTEN_ANNOTATION: &str = "nodeport.openyurt.io/listen";

pub(super) fn filter(object: &mut Object, inputs: &dyn FilterInputs) -> Verdict {
    let Object::Service(service) = object else {
        return Verdict::Unchanged;
    };
    let service_type = service.spec.as_ref().and_then(|s| s.type_.as_deref());
    if !matches!(service_type, Some("NodePort" | "LoadBalancer")) {
        return Verdict::Unchanged;
    }
    let Some(listen) = service
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LISTEN_ANNOTATION))
    else {
        return Verdict::Unchanged;
    };
    let Some(pool) = inputs.pool_name().filter(|p| !p.is_empty()) else {
        return Verdict::Unchanged;
    };
    let conf = pool_configuration(listen);
    if !conf.is_empty() && pool_enabled(&conf, &pool) {
        return Verdict::Unchanged;
    }
    tracing::debug!(
        namespace = service.metadata.namespace.as_deref().unwrap_or_default(),
        name = service.metadata.name.as_deref().unwrap_or_default(),
        pool,
        "node port service is disabled in this pool"
    );
    Verdict::Drop
}

/// The entries of the annotation, trimmed; of `a` and `-a` only the first
/// one given counts (upstream keeps the first per pool name).
fn pool_configuration(value: &str) -> BTreeSet<&str> {
    let mut seen = BTreeSet::new();
    let mut conf = BTreeSet::new();
    for entry in value.split(',').map(str::trim) {
        let pool = entry.strip_prefix('-').unwrap_or(entry);
        if !pool.is_empty() && seen.insert(pool) {
            conf.insert(entry);
        }
    }
    conf
}

fn pool_enabled(conf: &BTreeSet<&str>, pool: &str) -> bool {
    if conf.contains(pool) {
        return true;
    }
    if conf.contains(format!("-{pool}").as_str()) {
        return false;
    }
    conf.contains("*")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::test_support::{TestInputs, annotate, service, with_type};

    fn verdict(svc_type: &str, listen: Option<&str>, pool: Option<&str>) -> Verdict {
        let mut svc = with_type(
            service("default", "np", "10.96.0.20", &[("http", 80)]),
            svc_type,
        );
        if let Some(listen) = listen {
            svc = annotate(svc, LISTEN_ANNOTATION, listen);
        }
        let inputs = TestInputs {
            pool: pool.map(str::to_owned),
            ..TestInputs::default()
        };
        filter(&mut Object::Service(Box::new(svc)), &inputs)
    }

    #[test]
    fn pools_enable_and_disable_node_ports() {
        use Verdict::{Drop, Unchanged};
        let cases = [
            ("NodePort", Some("pool-a"), Some("pool-a"), Unchanged),
            ("NodePort", Some("pool-b"), Some("pool-a"), Drop),
            ("NodePort", Some("-pool-a,*"), Some("pool-a"), Drop),
            ("NodePort", Some("*"), Some("pool-a"), Unchanged),
            ("NodePort", Some("-pool-b,*"), Some("pool-a"), Unchanged),
            (
                "LoadBalancer",
                Some(" pool-a , pool-b"),
                Some("pool-b"),
                Unchanged,
            ),
            (
                "NodePort",
                Some("pool-a,-pool-a"),
                Some("pool-a"),
                Unchanged,
            ),
            ("NodePort", Some("-pool-a,pool-a"), Some("pool-a"), Drop),
            ("NodePort", Some(""), Some("pool-a"), Drop),
            ("NodePort", Some("pool-b"), None, Unchanged),
            ("NodePort", None, Some("pool-a"), Unchanged),
            ("ClusterIP", Some("pool-b"), Some("pool-a"), Unchanged),
        ];
        for (svc_type, listen, pool, want) in cases {
            assert_eq!(
                verdict(svc_type, listen, pool),
                want,
                "{svc_type} listen={listen:?} pool={pool:?}"
            );
        }
    }
}
