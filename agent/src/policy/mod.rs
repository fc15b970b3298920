//! Policy: what each connection should be. Istio `PeerAuthentication`,
//! `DestinationRule`, `ServiceEntry` and mesh config; Linkerd's `Server`,
//! `AuthorizationPolicy`, `MeshTLSAuthentication`, `NetworkAuthentication` and
//! default inbound policies; this project's `TransportPolicy` (CIDRs, ports,
//! workloads, processes, exemptions) and `Inventory` (standalone workloads and
//! services).
//!
//! `load` reads and checks files (`validate`, `validate_istio`,
//! `validate_linkerd`), `PolicySet` (`resolve`) indexes them once (`peer`,
//! `destination`, `linkerd`, `native`) and answers what a connection requires.

pub mod destination;
pub mod linkerd;
pub mod load;
pub mod model;
pub mod native;
pub mod order;
pub mod peer;
pub mod resolve;
pub mod validate;
pub mod validate_istio;
pub mod validate_linkerd;
#[cfg(feature = "agent")]
pub mod watch;

pub use load::{Diagnostic, Located, PolicyFiles, Severity, load};
pub use peer::PeerDecision;
pub use resolve::{ClientDecision, ClientProxy, Expectation, PolicySet, Query, rank};
pub use validate::parse_net;

/// `s` with control characters escaped (`\n`, `\u{1b}`), for output a person
/// reads: a name from a policy file or the cluster cannot forge lines or move
/// the terminal's cursor.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_linkerd;
