//! What Linkerd's objects grant, compiled once per load: identity patterns,
//! networks, and the authorization of a default policy, a Server's
//! `accessPolicy` or an AuthorizationPolicy (Linkerd's `DefaultPolicy`,
//! `meshtls_authentication`, `network_authentication` and
//! `authorization_policy` index modules).

use std::net::IpAddr;

use ipnet::IpNet;

use super::{Authns, LinkerdCluster, ap_label};
use crate::policy::{
    model::{
        AuthnKind, AuthorizationPolicy, InboundPolicy, MeshTlsAuthentication,
        NetworkAuthentication, targets_kind,
    },
    validate::parse_net,
};

/// A mesh identity pattern: exact, or a suffix (`*` is every identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityMatch {
    Exact(String),
    /// The labels after `*.`; empty for `*`.
    Suffix(Vec<String>),
}

impl IdentityMatch {
    /// Linkerd's parse: `*`, `*.suffix`, else exact.
    pub fn parse(s: &str) -> Self {
        if s == "*" {
            Self::Suffix(Vec::new())
        } else if let Some(rest) = s.strip_prefix("*.") {
            Self::Suffix(rest.split('.').map(str::to_owned).collect())
        } else {
            Self::Exact(s.to_owned())
        }
    }

    /// Whether `id` matches (the proxy's `Suffix::contains`: the identity ends
    /// with `.` and the suffix).
    pub fn matches(&self, id: &str) -> bool {
        match self {
            Self::Exact(e) => e == id,
            Self::Suffix(s) if s.is_empty() => true,
            Self::Suffix(s) => id
                .strip_suffix(&s.join("."))
                .is_some_and(|head| head.ends_with('.')),
        }
    }
}

impl std::fmt::Display for IdentityMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(e) => f.write_str(e),
            Self::Suffix(s) => {
                f.write_str("*")?;
                for part in s {
                    write!(f, ".{part}")?;
                }
                Ok(())
            }
        }
    }
}

/// A network with exceptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetMatch {
    pub net: IpNet,
    pub except: Vec<IpNet>,
}

impl NetMatch {
    pub(super) fn all() -> Vec<Self> {
        ["0.0.0.0/0", "::/0"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .map(|net| Self {
                net,
                except: Vec::new(),
            })
            .collect()
    }

    pub(super) fn contains(&self, addr: IpAddr) -> bool {
        self.net.contains(&addr) && !self.except.iter().any(|e| e.contains(&addr))
    }
}

/// One authorization of a Server or default policy.
#[derive(Debug, Clone)]
pub(super) struct Authz {
    /// The object and field that grant it.
    pub(super) label: String,
    pub(super) networks: Vec<NetMatch>,
    /// `None`: no identity needed (plaintext admitted).
    pub(super) identities: Option<Vec<IdentityMatch>>,
    /// Admitted, and logged as `audit`.
    pub(super) audit: bool,
}

/// The authorizations a default policy (or a Server's `accessPolicy`) grants:
/// Linkerd's `DefaultPolicy::default_authzs`.
pub(super) fn default_authzs(
    p: InboundPolicy,
    label: String,
    cluster: &LinkerdCluster,
) -> Vec<Authz> {
    let networks = if p.cluster_only() {
        cluster
            .networks
            .iter()
            .map(|n| NetMatch {
                net: *n,
                except: Vec::new(),
            })
            .collect()
    } else {
        NetMatch::all()
    };
    match p {
        InboundPolicy::Deny => Vec::new(),
        InboundPolicy::Audit => vec![Authz {
            label,
            networks,
            identities: None,
            audit: true,
        }],
        _ => vec![Authz {
            label,
            networks,
            identities: p
                .authenticated()
                .then(|| vec![IdentityMatch::Suffix(Vec::new())]),
            audit: false,
        }],
    }
}

/// A MeshTLSAuthentication's identities (Linkerd's
/// `meshtls_authentication::Spec::try_from_resource`).
pub(super) fn meshtls_matches(
    m: &MeshTlsAuthentication,
    cluster: &LinkerdCluster,
) -> Result<Vec<IdentityMatch>, String> {
    let ns = m.metadata.ns();
    let mut out: Vec<IdentityMatch> = m
        .spec
        .identities
        .iter()
        .flatten()
        .map(|s| IdentityMatch::parse(s))
        .collect();
    for r in m.spec.identity_refs.iter().flatten() {
        let name = r.name.as_deref().ok_or("an identityRef without a name")?;
        if targets_kind(r.group.as_deref(), &r.kind, "", "ServiceAccount") {
            let rns = r.namespace.as_deref().unwrap_or(ns);
            out.push(IdentityMatch::Exact(format!(
                "{name}.{rns}.serviceaccount.identity.{}.{}",
                cluster.control_plane_ns, cluster.trust_domain
            )));
        } else if targets_kind(r.group.as_deref(), &r.kind, "", "Namespace") {
            out.push(IdentityMatch::parse(&format!(
                "*.{name}.serviceaccount.identity.{}.{}",
                cluster.control_plane_ns, cluster.trust_domain
            )));
        } else {
            return Err(format!("unsupported target type: {}", r.canonical_kind()));
        }
    }
    if out.is_empty() {
        return Err("no identities configured".into());
    }
    Ok(out)
}

pub(super) fn network_matches(n: &NetworkAuthentication) -> Result<Vec<NetMatch>, String> {
    let out: Vec<NetMatch> = n
        .spec
        .networks
        .iter()
        .filter_map(|net| {
            Some(NetMatch {
                net: parse_net(&net.cidr)?,
                except: net
                    .except
                    .iter()
                    .flatten()
                    .filter_map(|e| parse_net(e))
                    .collect(),
            })
        })
        .collect();
    if out.is_empty() {
        return Err("no networks configured".into());
    }
    Ok(out)
}

/// The authorization an AuthorizationPolicy grants (Linkerd's
/// `policy_client_authz`), or why Linkerd ignores it.
pub(super) fn policy_authz(
    ap: &AuthorizationPolicy,
    meshtls: &Authns<Vec<IdentityMatch>>,
    nets: &Authns<Vec<NetMatch>>,
    cluster: &LinkerdCluster,
) -> Result<Authz, String> {
    let ns = ap.metadata.ns();
    let mut identities: Option<Vec<IdentityMatch>> = None;
    let mut networks: Option<Vec<NetMatch>> = None;
    let mut refs = Vec::new();
    for r in &ap.spec.required_authentication_refs {
        let rns = r.namespace.as_deref().unwrap_or(ns).to_owned();
        let name = r.name().to_owned();
        let key = (rns.clone(), name.clone());
        match r.authn_kind() {
            Some(AuthnKind::MeshTls) => {
                let found = meshtls
                    .get(&key)
                    .ok_or_else(|| {
                        format!("could not find MeshTLSAuthentication {name} in namespace {rns}")
                    })?
                    .as_ref()
                    .map_err(|e| format!("MeshTLSAuthentication {rns}/{name}: {e}"))?;
                if identities.is_some() {
                    return Err("policy must not include multiple MeshTLSAuthentications".into());
                }
                identities = Some(found.clone());
                refs.push(format!("MeshTLSAuthentication {rns}/{name}"));
            }
            Some(AuthnKind::ServiceAccount) => {
                if identities.is_some() {
                    return Err("policy must not include multiple ServiceAccounts".into());
                }
                identities = Some(vec![IdentityMatch::Exact(format!(
                    "{name}.{rns}.serviceaccount.identity.{}.{}",
                    cluster.control_plane_ns, cluster.trust_domain
                ))]);
                refs.push(format!("ServiceAccount {rns}/{name}"));
            }
            Some(AuthnKind::Network) => {
                let found = nets
                    .get(&key)
                    .ok_or_else(|| {
                        format!("could not find NetworkAuthentication {name} in namespace {rns}")
                    })?
                    .as_ref()
                    .map_err(|e| format!("NetworkAuthentication {rns}/{name}: {e}"))?;
                if networks.is_some() {
                    return Err("policy must not include multiple NetworkAuthentications".into());
                }
                networks = Some(found.clone());
                refs.push(format!("NetworkAuthentication {rns}/{name}"));
            }
            None => {
                return Err(format!(
                    "unsupported authentication target: {}",
                    r.canonical_kind()
                ));
            }
        }
    }
    Ok(Authz {
        label: format!(
            "{} requiredAuthenticationRefs=[{}]",
            ap_label(ap),
            refs.join(", ")
        ),
        networks: networks.unwrap_or_else(NetMatch::all),
        identities,
        audit: false,
    })
}
