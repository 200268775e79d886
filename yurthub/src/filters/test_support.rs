//! Builders and a fixed [`FilterInputs`] for the filters' unit tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, Pod, PodSpec, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::FilterInputs;

/// Node `node-1`, hub `169.254.2.1:10268`, pools and services as given.
#[derive(Debug, Clone)]
pub struct TestInputs {
    pub node: String,
    pub pool: Option<String>,
    pub hub: SocketAddr,
    pub services: Vec<Service>,
    pub pools: BTreeMap<String, Vec<String>>,
}

impl Default for TestInputs {
    fn default() -> Self {
        TestInputs {
            node: "node-1".into(),
            pool: None,
            hub: "169.254.2.1:10268".parse().expect("hub address"),
            services: Vec::new(),
            pools: BTreeMap::new(),
        }
    }
}

impl FilterInputs for TestInputs {
    fn node_name(&self) -> &str {
        &self.node
    }
    fn pool_name(&self) -> Option<String> {
        self.pool.clone()
    }
    fn hub_endpoint(&self) -> SocketAddr {
        self.hub
    }
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.services
            .iter()
            .find(|s| {
                s.metadata.namespace.as_deref() == Some(namespace)
                    && s.metadata.name.as_deref() == Some(name)
            })
            .cloned()
            .map(Arc::new)
    }
    fn nodes_in_pool(&self, pool: &str) -> Option<Vec<String>> {
        self.pools.get(pool).cloned()
    }
}

pub fn inputs() -> TestInputs {
    TestInputs::default()
}

pub fn meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        resource_version: Some("100".into()),
        ..ObjectMeta::default()
    }
}

pub fn service(namespace: &str, name: &str, cluster_ip: &str, ports: &[(&str, i32)]) -> Service {
    Service {
        metadata: meta(namespace, name),
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_ip.into()),
            cluster_ips: Some(vec![cluster_ip.into()]),
            type_: Some("ClusterIP".into()),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| ServicePort {
                        name: Some((*n).into()),
                        port: *p,
                        protocol: Some("TCP".into()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

pub fn with_type(mut svc: Service, type_: &str) -> Service {
    svc.spec.get_or_insert_with(Default::default).type_ = Some(type_.into());
    svc
}

pub fn annotate(mut svc: Service, key: &str, value: &str) -> Service {
    svc.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(key.into(), value.into());
    svc
}

pub fn config_map(namespace: &str, name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: meta(namespace, name),
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        ),
        ..ConfigMap::default()
    }
}

fn container(i: usize, env: &[(&str, &str)]) -> Container {
    Container {
        name: format!("c{i}"),
        image: Some("registry.example/app:1".into()),
        env: Some(
            env.iter()
                .map(|(n, v)| EnvVar {
                    name: (*n).into(),
                    value: Some((*v).into()),
                    ..EnvVar::default()
                })
                .collect(),
        ),
        ..Container::default()
    }
}

pub fn pod(
    namespace: &str,
    name: &str,
    containers: &[&[(&str, &str)]],
    init: &[&[(&str, &str)]],
) -> Pod {
    Pod {
        metadata: meta(namespace, name),
        spec: Some(PodSpec {
            node_name: Some("node-1".into()),
            containers: containers
                .iter()
                .enumerate()
                .map(|(i, e)| container(i, e))
                .collect(),
            init_containers: (!init.is_empty()).then(|| {
                init.iter()
                    .enumerate()
                    .map(|(i, e)| container(i, e))
                    .collect()
            }),
            ..PodSpec::default()
        }),
        status: None,
    }
}

pub fn endpoint(address: &str, node: Option<&str>) -> Endpoint {
    Endpoint {
        addresses: vec![address.into()],
        conditions: Some(EndpointConditions {
            ready: Some(true),
            ..EndpointConditions::default()
        }),
        node_name: node.map(str::to_owned),
        ..Endpoint::default()
    }
}

pub fn endpoint_slice(
    namespace: &str,
    name: &str,
    service: &str,
    endpoints: Vec<Endpoint>,
    ports: &[(&str, i32)],
) -> EndpointSlice {
    let mut metadata = meta(namespace, name);
    metadata.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".to_owned(),
        service.to_owned(),
    )]));
    EndpointSlice {
        metadata,
        address_type: "IPv4".into(),
        endpoints: Some(endpoints),
        ports: Some(
            ports
                .iter()
                .map(|(n, p)| EndpointPort {
                    name: Some((*n).into()),
                    port: Some(*p),
                    protocol: Some("TCP".into()),
                    ..EndpointPort::default()
                })
                .collect(),
        ),
    }
}
