//! `serviceenvupdater`: in each container (not init containers) of the pods
//! kubelet reads, overwrites the values of explicitly declared
//! `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT` with the hub
//! address and `--proxy-secure-port`. Undeclared variables are not added
//! (kubelet injects those from the `masterservice`-rewritten Service).
//! Superseded by the kernel redirect (off by default with `--redirect-mode=ebpf`).

use super::{FilterInputs, Object, Verdict};

const HOST_VAR: &str = "KUBERNETES_SERVICE_HOST";
const PORT_VAR: &str = "KUBERNETES_SERVICE_PORT";

/// Both variables share this prefix; a pod without it is left as it is.
const PREFIX: &[u8] = b"KUBERNETES_SERVICE_";

pub(super) fn mentions_service_env(raw: &[u8]) -> bool {
    memchr::memmem::find(raw, PREFIX).is_some()
}

pub(super) fn filter(object: &mut Object, inputs: &dyn FilterInputs) -> Verdict {
    let Object::Pod(pod) = object else {
        return Verdict::Unchanged;
    };
    let Some(spec) = pod.spec.as_mut() else {
        return Verdict::Unchanged;
    };
    let hub = inputs.hub_endpoint();
    let host = hub.ip().to_string();
    let port = hub.port().to_string();
    let mut mutated = false;
    for container in &mut spec.containers {
        for var in container.env.iter_mut().flatten() {
            let want = match var.name.as_str() {
                HOST_VAR => &host,
                PORT_VAR => &port,
                _ => continue,
            };
            if var.value.as_deref() != Some(want.as_str()) {
                var.value = Some(want.clone());
                mutated = true;
            }
        }
    }
    if mutated {
        Verdict::Mutated
    } else {
        Verdict::Unchanged
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::test_support::{inputs, pod};

    #[test]
    fn only_pods_that_mention_the_variables_need_decoding() {
        assert!(mentions_service_env(
            br#"{"env":[{"name":"KUBERNETES_SERVICE_HOST"}]}"#
        ));
        assert!(!mentions_service_env(
            br#"{"env":[{"name":"OTHER","value":"KUBERNETES"}]}"#
        ));
    }

    #[test]
    fn overwrites_declared_variables_in_containers_only() {
        let mut obj = Object::Pod(Box::new(pod(
            "default",
            "p",
            &[
                &[(HOST_VAR, "10.96.0.1"), (PORT_VAR, "443"), ("OTHER", "x")],
                &[("OTHER", "y")],
            ],
            &[&[(HOST_VAR, "10.96.0.1")]],
        )));
        assert_eq!(filter(&mut obj, &inputs()), Verdict::Mutated);
        let Object::Pod(p) = &obj else { unreachable!() };
        let spec = p.spec.as_ref().expect("spec");
        let env = |c: &k8s_openapi::api::core::v1::Container| {
            c.env
                .iter()
                .flatten()
                .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            env(&spec.containers[0]),
            vec![
                (HOST_VAR.to_owned(), "169.254.2.1".to_owned()),
                (PORT_VAR.to_owned(), "10268".to_owned()),
                ("OTHER".to_owned(), "x".to_owned())
            ]
        );
        assert_eq!(
            env(&spec.containers[1]),
            vec![("OTHER".to_owned(), "y".to_owned())],
            "nothing added"
        );
        let init = spec.init_containers.as_ref().expect("init containers");
        assert_eq!(
            env(&init[0]),
            vec![(HOST_VAR.to_owned(), "10.96.0.1".to_owned())],
            "init containers untouched"
        );
        assert_eq!(
            filter(&mut obj, &inputs()),
            Verdict::Unchanged,
            "idempotent"
        );
    }
}
