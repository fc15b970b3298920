//! From a connection to its record: the stages after `flows`, in pipeline order.
//!
//! 1. `classify` the connection's own bytes (a settled class is reused; resumed
//!    TLS sessions inherit the class of the full handshake they resume);
//! 2. `hops`: what the connection is on the mesh's data path; an app's
//!    redirected connection takes its proxy's upstream evidence;
//! 3. `verdict`: who the ends are and what the policy says (built-in exemptions
//!    of the mesh's own traffic first).
//!
//! Used for finished connections and for open ones that settled (which are
//! counted in the metrics then).

use std::net::SocketAddr;

use crate::{
    classify::{self, Resumptions},
    clock::Clock,
    export::ConnectionRecord,
    flows::{Connection, FlowTable},
    hops::{BuiltinExemptions, Hop, Hops},
    policy::PolicySet,
    verdict,
};

/// What the stages read (and the resumption memory they update).
pub struct Stages<'a> {
    pub resumptions: &'a mut Resumptions,
    pub hops: &'a Hops,
    /// For the upstream connections an app's connection links to.
    pub table: &'a FlowTable,
    pub policy: Option<&'a PolicySet>,
    pub builtin: &'a BuiltinExemptions,
    pub clock: &'a Clock,
}

impl Stages<'_> {
    pub fn record(&mut self, conn: &Connection) -> ConnectionRecord {
        let mut own = match &conn.settled {
            Some(cls) => classify::Classification::clone(cls),
            None => conn.classify(),
        };
        self.resumptions.apply(
            (conn.client.ip(), conn.server.ip(), conn.server.port()),
            &mut own,
        );
        let mut facts = self.hops.facts(conn, &own);
        if let (Some(i), Some(p), Some(s)) = (
            facts.interceptor.as_mut(),
            self.policy,
            conn.server_end.as_ref(),
        ) {
            i.container = p
                .inventory
                .workload_of(&crate::inventory::EndFacts {
                    cgroup: s.cgroup.as_deref(),
                    netns_cookie: (s.netns_cookie != 0).then_some(s.netns_cookie),
                    addr: s.local.ip(),
                    comm: s.process.as_ref().map(|p| &*p.comm),
                })
                .and_then(|w| w.container);
        }
        if facts.hop == Hop::ProxyToApp
            && let Some((cls, link)) = self
                .hops
                .tunnel_evidence(conn, self.table, &|c| c.classify())
        {
            // A delivery out of a tunnel stands for the logical connection at the
            // destination: the tunnel's class decides.
            facts.tunnel = Some(link);
            own = cls;
        }
        let (cls, app_protocol) = if facts.hop == Hop::AppToProxy {
            let inventory = self.policy.map(|p| &p.inventory);
            // A proxy sends a connection for a service's address to one of its
            // endpoints: those are the same destination.
            let same_service = |a: SocketAddr, b: SocketAddr| {
                inventory.is_some_and(|inv| {
                    let of_a = inv.services_for(a.ip(), a.port());
                    !of_a.is_empty()
                        && inv
                            .services_for(b.ip(), b.port())
                            .iter()
                            .any(|s| of_a.iter().any(|t| t.fqdn == s.fqdn))
                })
            };
            let (logical, link) =
                self.hops
                    .upstream_evidence(conn, self.table, &same_service, &|c| c.classify());
            facts.upstream = link;
            (logical, Some(own.protocol))
        } else {
            (own, None)
        };
        let builtin = self.builtin.check(&facts, conn, self.hops);
        let client_has_proxy = self.hops.client_has_proxy(conn, &facts);
        let assessment = self
            .policy
            .map(|p| verdict::assess(conn, &cls, p, &facts, builtin, client_has_proxy));
        ConnectionRecord::with_hop(conn, self.clock, cls, assessment, facts, app_protocol)
    }
}
