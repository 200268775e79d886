//! `discardcloudservice`: hides cloud-only Services from kube-proxy on edge
//! nodes — LoadBalancer Services annotated `svc.openyurt.io/discard: "true"`,
//! and always `kube-system/x-tunnel-server-internal-svc` (upstream issue #447).

use super::{FilterInputs, Object, Verdict};

pub(super) const DISCARD_ANNOTATION: &str = "svc.openyurt.io/discard";
/// ClusterIP Services that only make sense in the cloud.
const CLOUD_CLUSTER_IP_SERVICES: &[(&str, &str)] =
    &[("kube-system", "x-tunnel-server-internal-svc")];

pub(super) fn filter(object: &mut Object, _inputs: &dyn FilterInputs) -> Verdict {
    let Object::Service(service) = object else {
        return Verdict::Unchanged;
    };
    let namespace = service.metadata.namespace.as_deref().unwrap_or_default();
    let name = service.metadata.name.as_deref().unwrap_or_default();
    let is_load_balancer =
        service.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer");
    let discard_annotated = service
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DISCARD_ANNOTATION))
        .is_some_and(|v| v == "true");
    if is_load_balancer && discard_annotated {
        tracing::debug!(namespace, name, "discarded a cloud load balancer service");
        return Verdict::Drop;
    }
    if CLOUD_CLUSTER_IP_SERVICES.contains(&(namespace, name)) {
        tracing::debug!(namespace, name, "discarded a cloud clusterIP service");
        return Verdict::Drop;
    }
    Verdict::Unchanged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::test_support::{annotate, inputs, service, with_type};

    fn verdict(svc: k8s_openapi::api::core::v1::Service) -> Verdict {
        filter(&mut Object::Service(Box::new(svc)), &inputs())
    }

    #[test]
    fn drops_annotated_load_balancers_and_the_tunnel_service() {
        let lb = with_type(
            service("default", "lb", "10.96.0.10", &[("http", 80)]),
            "LoadBalancer",
        );
        assert_eq!(
            verdict(annotate(lb.clone(), DISCARD_ANNOTATION, "true")),
            Verdict::Drop
        );
        assert_eq!(
            verdict(annotate(lb.clone(), DISCARD_ANNOTATION, "false")),
            Verdict::Unchanged
        );
        assert_eq!(verdict(lb), Verdict::Unchanged, "not annotated");
        let cluster_ip = service("default", "web", "10.96.0.11", &[("http", 80)]);
        assert_eq!(
            verdict(annotate(cluster_ip, DISCARD_ANNOTATION, "true")),
            Verdict::Unchanged,
            "only LoadBalancer services"
        );
        let tunnel = service(
            "kube-system",
            "x-tunnel-server-internal-svc",
            "10.96.0.12",
            &[("https", 10263)],
        );
        assert_eq!(verdict(tunnel), Verdict::Drop);
    }
}
