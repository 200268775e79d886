//! `inclusterconfig`: comments out the `kubeconfig:` line of the
//! `kube-system/kube-proxy` ConfigMap's `config.conf` that kubelet reads, so
//! kube-proxy falls back to InClusterConfig and reaches the apiserver the way
//! pods do (through the hub).

use super::{FilterInputs, Object, Verdict};

const NAMESPACE: &str = "kube-system";
const NAME: &str = "kube-proxy";
const DATA_KEY: &str = "config.conf";
const KUBECONFIG_KEY: &str = "kubeconfig";

pub(super) fn filter(object: &mut Object, _inputs: &dyn FilterInputs) -> Verdict {
    let Object::ConfigMap(config_map) = object else {
        return Verdict::Unchanged;
    };
    let meta = &config_map.metadata;
    if meta.namespace.as_deref() != Some(NAMESPACE) || meta.name.as_deref() != Some(NAME) {
        return Verdict::Unchanged;
    }
    let Some(conf) = config_map.data.as_mut().and_then(|d| d.get_mut(DATA_KEY)) else {
        return Verdict::Unchanged;
    };
    match comment_out_kubeconfig(conf) {
        Some(new) => {
            *conf = new;
            tracing::info!("commented out kubeconfig in kube-system/kube-proxy config.conf");
            Verdict::Mutated
        }
        None => Verdict::Unchanged,
    }
}

/// The config with every `kubeconfig: <path>` line commented out, or `None`
/// when there is none. Like upstream, a line counts when, trimmed of spaces,
/// it splits on `:` into exactly two parts the first of which is `kubeconfig`.
fn comment_out_kubeconfig(conf: &str) -> Option<String> {
    let mut mutated = false;
    let lines: Vec<String> = conf
        .split('\n')
        .map(|line| {
            let mut parts = line.trim_matches(' ').split(':');
            let is_kubeconfig = parts.next() == Some(KUBECONFIG_KEY)
                && parts.next().is_some()
                && parts.next().is_none();
            if is_kubeconfig {
                mutated = true;
                line.replacen(KUBECONFIG_KEY, &format!("#{KUBECONFIG_KEY}"), 1)
            } else {
                line.to_owned()
            }
        })
        .collect();
    mutated.then(|| lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::test_support::{config_map, inputs};

    const CONF: &str = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nclientConnection:\n  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf\n  qps: 5\nmode: iptables\n";

    #[test]
    fn comments_out_the_kubeconfig_line() {
        let mut cm = Object::ConfigMap(Box::new(config_map(
            "kube-system",
            "kube-proxy",
            &[(DATA_KEY, CONF)],
        )));
        assert_eq!(filter(&mut cm, &inputs()), Verdict::Mutated);
        let Object::ConfigMap(cm_after) = &cm else {
            unreachable!()
        };
        let conf = &cm_after.data.as_ref().expect("data")[DATA_KEY];
        assert_eq!(
            conf,
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nclientConnection:\n  #kubeconfig: /var/lib/kube-proxy/kubeconfig.conf\n  qps: 5\nmode: iptables\n"
        );
        assert_eq!(
            filter(&mut cm, &inputs()),
            Verdict::Unchanged,
            "a commented line is not a key any more"
        );
    }

    #[test]
    fn leaves_other_config_maps_and_lines_alone() {
        let mut other = Object::ConfigMap(Box::new(config_map(
            "default",
            "kube-proxy",
            &[(DATA_KEY, CONF)],
        )));
        assert_eq!(filter(&mut other, &inputs()), Verdict::Unchanged);
        // Three parts on ':' (a URL-like value) is not the kubeconfig path line.
        assert_eq!(comment_out_kubeconfig("kubeconfig: c:/x\n"), None);
        assert_eq!(comment_out_kubeconfig("kubeconfigs: x"), None);
    }
}
