//! `masterservice`: rewrites the `default/kubernetes` Service that kubelet
//! lists so that `spec.clusterIP`/`clusterIPs` are the hub address and the
//! port named `https` is `--proxy-secure-port`. Kubelet then injects
//! `KUBERNETES_SERVICE_HOST/PORT` pointing at the hub into every pod.
//! Superseded by the kernel redirect (off by default with `--redirect-mode=ebpf`).

use super::{FilterInputs, Object, Verdict};

pub(super) const NAMESPACE: &str = "default";
pub(super) const NAME: &str = "kubernetes";
pub(super) const PORT_NAME: &str = "https";

pub(super) fn filter(object: &mut Object, inputs: &dyn FilterInputs) -> Verdict {
    let Object::Service(service) = object else {
        return Verdict::Unchanged;
    };
    let meta = &service.metadata;
    if meta.namespace.as_deref() != Some(NAMESPACE) || meta.name.as_deref() != Some(NAME) {
        return Verdict::Unchanged;
    }
    let hub = inputs.hub_endpoint();
    let host = hub.ip().to_string();
    let port = i32::from(hub.port());
    let spec = service.spec.get_or_insert_with(Default::default);
    let mut mutated = false;
    if spec.cluster_ip.as_deref() != Some(host.as_str()) {
        spec.cluster_ip = Some(host.clone());
        mutated = true;
    }
    if spec.cluster_ips.as_deref() != Some(std::slice::from_ref(&host)) {
        spec.cluster_ips = Some(vec![host.clone()]);
        mutated = true;
    }
    if let Some(p) = spec
        .ports
        .iter_mut()
        .flatten()
        .find(|p| p.name.as_deref() == Some(PORT_NAME))
        && p.port != port
    {
        p.port = port;
        mutated = true;
    }
    if mutated {
        tracing::info!(cluster_ip = %host, port, "mutated the default/kubernetes service");
        Verdict::Mutated
    } else {
        Verdict::Unchanged
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::test_support::{inputs, service};

    #[test]
    fn rewrites_only_the_kubernetes_service() {
        let inputs = inputs();
        let mut kube = Object::Service(Box::new(service(
            "default",
            "kubernetes",
            "10.96.0.1",
            &[("https", 443), ("other", 80)],
        )));
        assert_eq!(filter(&mut kube, &inputs), Verdict::Mutated);
        let Object::Service(svc) = &kube else {
            unreachable!()
        };
        let spec = svc.spec.as_ref().expect("spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("169.254.2.1"));
        assert_eq!(
            spec.cluster_ips.as_deref(),
            Some(&["169.254.2.1".to_owned()][..])
        );
        let ports: Vec<_> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone(), p.port))
            .collect();
        assert_eq!(
            ports,
            vec![(Some("https".into()), 10268), (Some("other".into()), 80)]
        );
        assert_eq!(filter(&mut kube, &inputs), Verdict::Unchanged, "idempotent");

        let mut other = Object::Service(Box::new(service(
            "kube-system",
            "kubernetes",
            "10.96.0.9",
            &[("https", 443)],
        )));
        let before = other.clone();
        assert_eq!(filter(&mut other, &inputs), Verdict::Unchanged);
        assert_eq!(other, before);
    }
}
