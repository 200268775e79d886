//! `forwardkubesvctraffic`: rewrites the `default/kubernetes` EndpointSlice
//! kube-proxy reads so the apiserver VIP is DNATed to the hub: the port named
//! `https` becomes `--proxy-secure-port` and the endpoints become exactly one
//! ready endpoint, the hub address. Only when the slice's address family is
//! the hub address's. This is the mechanism the eBPF redirect replaces (off by
//! default with `--redirect-mode=ebpf`).

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};

use super::{FilterInputs, Object, Verdict};

const NAMESPACE: &str = "default";
const NAME: &str = "kubernetes";
const PORT_NAME: &str = "https";

pub(super) fn filter(object: &mut Object, inputs: &dyn FilterInputs) -> Verdict {
    let Object::EndpointSlice(slice) = object else {
        return Verdict::Unchanged;
    };
    let meta = &slice.metadata;
    if meta.namespace.as_deref() != Some(NAMESPACE) || meta.name.as_deref() != Some(NAME) {
        return Verdict::Unchanged;
    }
    let hub = inputs.hub_endpoint();
    let family = if hub.is_ipv6() { "IPv6" } else { "IPv4" };
    if slice.address_type != family {
        tracing::warn!(
            slice_family = slice.address_type,
            hub_family = family,
            "default/kubernetes endpointslice and the hub address differ in address family; not rewritten"
        );
        return Verdict::Unchanged;
    }
    let port = i32::from(hub.port());
    let mut mutated = false;
    if let Some(p) = slice
        .ports
        .iter_mut()
        .flatten()
        .find(|p| p.name.as_deref() == Some(PORT_NAME))
        && p.port != Some(port)
    {
        p.port = Some(port);
        mutated = true;
    }
    let want = vec![Endpoint {
        addresses: vec![hub.ip().to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }];
    if slice.endpoints.as_ref() != Some(&want) {
        slice.endpoints = Some(want);
        mutated = true;
    }
    if mutated {
        tracing::debug!(hub = %hub, "mutated the default/kubernetes endpointslice");
        Verdict::Mutated
    } else {
        Verdict::Unchanged
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::test_support::{TestInputs, endpoint, endpoint_slice, inputs};

    #[test]
    fn points_the_kubernetes_slice_at_the_hub() {
        let mut obj = Object::EndpointSlice(Box::new(endpoint_slice(
            "default",
            "kubernetes",
            "kubernetes",
            vec![
                endpoint("10.0.0.1", Some("master-1")),
                endpoint("10.0.0.2", Some("master-2")),
            ],
            &[("https", 6443)],
        )));
        assert_eq!(filter(&mut obj, &inputs()), Verdict::Mutated);
        let Object::EndpointSlice(slice) = &obj else {
            unreachable!()
        };
        let endpoints = slice.endpoints.as_ref().expect("endpoints");
        assert_eq!(endpoints.len(), 1);
        assert_eq!(endpoints[0].addresses, vec!["169.254.2.1".to_owned()]);
        assert_eq!(
            endpoints[0].conditions.as_ref().and_then(|c| c.ready),
            Some(true)
        );
        assert_eq!(slice.ports.as_ref().expect("ports")[0].port, Some(10268));
        assert_eq!(
            filter(&mut obj, &inputs()),
            Verdict::Unchanged,
            "idempotent"
        );
    }

    #[test]
    fn leaves_other_slices_and_other_families_alone() {
        let slice = endpoint_slice(
            "default",
            "web-abc",
            "web",
            vec![endpoint("10.0.0.5", Some("n1"))],
            &[("http", 80)],
        );
        let mut obj = Object::EndpointSlice(Box::new(slice));
        assert_eq!(filter(&mut obj, &inputs()), Verdict::Unchanged);

        let v6 = TestInputs {
            hub: "[fd00::2:1]:10268".parse().expect("v6 hub"),
            ..TestInputs::default()
        };
        let kube = endpoint_slice(
            "default",
            "kubernetes",
            "kubernetes",
            vec![endpoint("10.0.0.1", None)],
            &[("https", 6443)],
        );
        let mut obj = Object::EndpointSlice(Box::new(kube));
        assert_eq!(
            filter(&mut obj, &v6),
            Verdict::Unchanged,
            "IPv4 slice, IPv6 hub"
        );
    }
}
