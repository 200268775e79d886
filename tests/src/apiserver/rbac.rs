//! A minimal RBAC authorizer for the identities a test restricts, plus the
//! default ClusterRoleBindings a real cluster has that matter here:
//! system:masters may do anything; every authenticated user gets
//! system:basic-user, system:discovery and system:public-info-viewer;
//! system:service-account-issuer-discovery is bound only to the group
//! system:serviceaccounts (and to whatever the test grants it to).
//! Identities the test never restricts keep the double's allow-all.

use std::collections::{HashMap, HashSet};

use super::User;
use super::route::{ApiRequest, ResourcePath, Target, verb_of};
use super::satoken::{JWKS_PATH, OPENID_CONFIG_PATH};
use super::status::{ApiError, GroupResource};

/// One PolicyRule. `namespaces` empty means the rule is bound cluster-wide
/// (a ClusterRoleBinding: every namespace and cluster-scoped resources);
/// otherwise it holds only inside those namespaces (RoleBindings).
/// Empty `resource_names` means every name. `"*"` matches anything in
/// verbs, api_groups and resources; a non-resource URL ending in `*`
/// matches by prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub namespaces: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

fn owned(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

impl Rule {
    /// A resource rule: `Rule::new(&["get", "list"], &[""], &["pods", "pods/status"])`.
    pub fn new(verbs: &[&str], api_groups: &[&str], resources: &[&str]) -> Self {
        Self {
            verbs: owned(verbs),
            api_groups: owned(api_groups),
            resources: owned(resources),
            ..Self::default()
        }
    }

    /// A non-resource rule: `Rule::non_resource(&["get"], &["/metrics"])`.
    pub fn non_resource(verbs: &[&str], urls: &[&str]) -> Self {
        Self {
            verbs: owned(verbs),
            non_resource_urls: owned(urls),
            ..Self::default()
        }
    }

    /// Binds the rule only in these namespaces (like a RoleBinding each).
    pub fn in_namespaces(mut self, namespaces: &[&str]) -> Self {
        self.namespaces = owned(namespaces);
        self
    }

    /// Limits the rule to these object names (resourceNames).
    pub fn names(mut self, names: &[&str]) -> Self {
        self.resource_names = owned(names);
        self
    }

    fn allows(&self, a: &Attributes) -> bool {
        let any = |list: &[String], v: &str| list.iter().any(|x| x == "*" || x == v);
        if !any(&self.verbs, &a.verb) {
            return false;
        }
        match &a.resource {
            None => self
                .non_resource_urls
                .iter()
                .any(|u| match u.strip_suffix('*') {
                    Some(prefix) => a.path.starts_with(prefix),
                    None => *u == a.path,
                }),
            Some(r) => {
                let resource = match &r.subresource {
                    Some(s) => format!("{}/{s}", r.resource),
                    None => r.resource.clone(),
                };
                let resource_ok = self.resources.iter().any(|x| {
                    x == "*"
                        || *x == resource
                        || (r.subresource.is_some() && *x == format!("*/{}", r.subresource_str()))
                });
                let scope_ok = self.namespaces.is_empty()
                    || r.namespace
                        .as_ref()
                        .is_some_and(|ns| self.namespaces.contains(ns));
                let name_ok = self.resource_names.is_empty()
                    || r.name
                        .as_ref()
                        .is_some_and(|n| self.resource_names.contains(n));
                any(&self.api_groups, &r.group) && resource_ok && scope_ok && name_ok
            }
        }
    }
}

/// The resource part of authorization attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceAttributes {
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl ResourceAttributes {
    fn subresource_str(&self) -> &str {
        self.subresource.as_deref().unwrap_or("")
    }
}

/// authorizer.Attributes: who does what to which resource or path.
#[derive(Clone, Debug)]
pub struct Attributes {
    pub verb: String,
    pub resource: Option<ResourceAttributes>,
    pub path: String,
}

impl Attributes {
    /// The attributes of a request, as RequestInfo derives them (a named
    /// namespace is its own namespace attribute).
    pub fn of(req: &ApiRequest, target: &Target) -> Self {
        let verb = verb_of(req, target).to_owned();
        let resource = match target {
            Target::Resource(rp) => Some(resource_attributes(rp)),
            _ => None,
        };
        Self {
            verb,
            resource,
            path: req.path.clone(),
        }
    }
}

impl Attributes {
    /// The attributes a SubjectAccessReview spec asks about.
    pub fn from_review(spec: &serde_json::Value) -> Option<Self> {
        let s = |v: &serde_json::Value, k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_str)
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
        };
        if let Some(ra) = spec.get("resourceAttributes") {
            return Some(Self {
                verb: s(ra, "verb").unwrap_or_default(),
                resource: Some(ResourceAttributes {
                    group: s(ra, "group").unwrap_or_default(),
                    resource: s(ra, "resource").unwrap_or_default(),
                    subresource: s(ra, "subresource"),
                    namespace: s(ra, "namespace"),
                    name: s(ra, "name"),
                }),
                path: String::new(),
            });
        }
        let nra = spec.get("nonResourceAttributes")?;
        Some(Self {
            verb: s(nra, "verb").unwrap_or_default(),
            resource: None,
            path: s(nra, "path").unwrap_or_default(),
        })
    }
}

fn resource_attributes(rp: &ResourcePath) -> ResourceAttributes {
    let namespace = if rp.group.is_empty() && rp.resource == "namespaces" {
        rp.name.clone()
    } else {
        rp.namespace.clone()
    };
    ResourceAttributes {
        group: rp.group.clone(),
        resource: rp.resource.clone(),
        subresource: rp.subresource.clone(),
        namespace,
        name: rp.name.clone(),
    }
}

/// The restrictions and grants a test configured; shared by replicas.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Subject (user name or group) → the only rules it is granted.
    pub restricted: HashMap<String, Vec<Rule>>,
    /// Extra subjects bound to system:service-account-issuer-discovery.
    pub issuer_discovery: HashSet<String>,
}

/// The rules system:basic-user, system:discovery and
/// system:public-info-viewer give every authenticated user.
fn authenticated_defaults() -> Vec<Rule> {
    vec![
        Rule::new(
            &["create"],
            &["authorization.k8s.io"],
            &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
        ),
        Rule::new(
            &["create"],
            &["authentication.k8s.io"],
            &["selfsubjectreviews"],
        ),
        Rule::non_resource(
            &["get"],
            &[
                "/api",
                "/api/*",
                "/apis",
                "/apis/*",
                "/healthz",
                "/livez",
                "/openapi",
                "/openapi/*",
                "/readyz",
                "/version",
                "/version/",
            ],
        ),
    ]
}

/// The user name and groups, with the system:authenticated every
/// authenticated user gets.
fn subjects(user: &User) -> impl Iterator<Item = &str> {
    std::iter::once(user.name.as_str())
        .chain(user.groups.iter().map(String::as_str))
        .chain(std::iter::once("system:authenticated"))
}

impl Policy {
    /// Whether `user` may do `a`.
    pub fn allows(&self, user: &User, a: &Attributes) -> bool {
        if user.groups.iter().any(|g| g == "system:masters") {
            return true;
        }
        let discovery_path = a.resource.is_none()
            && a.verb == "get"
            && (a.path == OPENID_CONFIG_PATH || a.path == JWKS_PATH);
        if discovery_path
            && (user.groups.iter().any(|g| g == "system:serviceaccounts")
                || subjects(user).any(|s| self.issuer_discovery.contains(s)))
        {
            return true;
        }
        let granted: Vec<&Rule> = subjects(user)
            .filter_map(|s| self.restricted.get(s))
            .flatten()
            .collect();
        if granted.is_empty() && !self.is_restricted(user) {
            // Unrestricted identities keep the allow-all, except for the
            // issuer-discovery paths, which only that ClusterRole grants.
            return !discovery_path;
        }
        granted.iter().any(|r| r.allows(a)) || authenticated_defaults().iter().any(|r| r.allows(a))
    }

    fn is_restricted(&self, user: &User) -> bool {
        subjects(user).any(|s| self.restricted.contains_key(s))
    }
}

/// The 403 Status WithAuthorization writes for a denied request.
pub fn forbidden(user_name: &str, a: &Attributes) -> ApiError {
    let Some(r) = &a.resource else {
        return ApiError::forbidden(
            &GroupResource::new("", ""),
            "",
            &format!("User {user_name:?} cannot {} path {:?}", a.verb, a.path),
        );
    };
    let resource = match &r.subresource {
        Some(s) => format!("{}/{s}", r.resource),
        None => r.resource.clone(),
    };
    let scope = match &r.namespace {
        Some(ns) => format!("in the namespace {ns:?}"),
        None => "at the cluster scope".to_owned(),
    };
    ApiError::forbidden(
        &GroupResource::new(&r.group, &r.resource),
        r.name.as_deref().unwrap_or(""),
        &format!(
            "User {user_name:?} cannot {} resource {resource:?} in API group {:?} {scope}",
            a.verb, r.group
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(
        verb: &str,
        group: &str,
        resource: &str,
        ns: Option<&str>,
        name: Option<&str>,
    ) -> Attributes {
        Attributes {
            verb: verb.into(),
            resource: Some(ResourceAttributes {
                group: group.into(),
                resource: resource.into(),
                subresource: None,
                namespace: ns.map(str::to_owned),
                name: name.map(str::to_owned),
            }),
            path: String::new(),
        }
    }

    #[test]
    fn rules_scope_by_namespace_and_name() {
        let mut p = Policy::default();
        p.restricted.insert(
            "system:serviceaccount:a:b".into(),
            vec![
                Rule::new(&["get"], &[""], &["configmaps"])
                    .in_namespaces(&["a"])
                    .names(&["c"]),
            ],
        );
        let u = super::super::satoken::sa_user("a", "b");
        assert!(p.allows(&u, &attrs("get", "", "configmaps", Some("a"), Some("c"))));
        assert!(!p.allows(&u, &attrs("get", "", "configmaps", Some("a"), Some("d"))));
        assert!(!p.allows(&u, &attrs("get", "", "configmaps", Some("x"), Some("c"))));
        assert!(!p.allows(&u, &attrs("list", "", "configmaps", Some("a"), None)));
        let other = User::new("someone", &[]);
        assert!(p.allows(
            &other,
            &attrs("delete", "", "secrets", Some("a"), Some("s"))
        ));
    }
}
