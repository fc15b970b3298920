//! This project's rules and exemptions (`TransportPolicy`), compiled once per
//! load: addresses parsed, and every entry filed under the narrowest key it has
//! (a destination port, else a destination network, else the general list), so
//! that a connection is only compared with the entries that could match it.

use std::net::IpAddr;

use foldhash::{HashMap, HashMapExt as _};
use ipnet::IpNet;

use super::{
    load::Located,
    model::{ConnMatch, TransportPolicy, WorkloadRef},
    resolve::Query,
    validate::parse_net,
};
use crate::inventory::Workload;

/// One rule or exemption, ready to match.
#[derive(Debug)]
pub struct Compiled {
    /// Which TransportPolicy (index in the files) and which entry of it.
    pub policy: usize,
    pub entry: usize,
    destination: Vec<IpNet>,
    source: Vec<IpNet>,
}

/// Entries of one prefix length and family: masked network -> entries.
type NetGroup = ((u8, bool), HashMap<u128, Vec<u32>>);

/// Entries filed by key; a lookup gathers the candidates in declaration order.
#[derive(Debug, Default)]
struct Filed {
    by_port: HashMap<u16, Vec<u32>>,
    /// (prefix length, IPv6) -> masked network -> entries.
    by_net: Vec<NetGroup>,
    general: Vec<u32>,
}

fn key(addr: IpAddr, prefix: u8) -> (u128, bool) {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let masked = if prefix == 0 {
                0
            } else {
                bits & (u32::MAX << (32 - u32::from(prefix.min(32))))
            };
            (u128::from(masked), false)
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let masked = if prefix == 0 {
                0
            } else {
                bits & (u128::MAX << (128 - u32::from(prefix.min(128))))
            };
            (masked, true)
        }
    }
}

impl Filed {
    fn add(&mut self, id: u32, m: &ConnMatch, destination: &[IpNet]) {
        if !m.ports.is_empty() {
            for p in &m.ports {
                let list = self.by_port.entry(*p).or_default();
                if list.last() != Some(&id) {
                    list.push(id);
                }
            }
        } else if !destination.is_empty() {
            for n in destination {
                let (k, v6) = key(n.network(), n.prefix_len());
                let group = match self
                    .by_net
                    .iter_mut()
                    .position(|(g, _)| *g == (n.prefix_len(), v6))
                {
                    Some(i) => &mut self.by_net[i].1,
                    None => {
                        self.by_net.push(((n.prefix_len(), v6), HashMap::new()));
                        let last = self.by_net.len() - 1;
                        &mut self.by_net[last].1
                    }
                };
                let list = group.entry(k).or_default();
                if list.last() != Some(&id) {
                    list.push(id);
                }
            }
        } else {
            self.general.push(id);
        }
    }

    /// Every entry that could match a connection to `addr:port`, ascending.
    fn candidates(&self, addr: IpAddr, port: u16, out: &mut Vec<u32>) {
        out.clear();
        if let Some(v) = self.by_port.get(&port) {
            out.extend_from_slice(v);
        }
        let v6 = addr.is_ipv6();
        for ((prefix, is_v6), map) in &self.by_net {
            if *is_v6 != v6 {
                continue;
            }
            if let Some(v) = map.get(&key(addr, *prefix).0) {
                out.extend_from_slice(v);
            }
        }
        out.extend_from_slice(&self.general);
        out.sort_unstable();
        out.dedup();
    }
}

/// Compiled rules and exemptions of every TransportPolicy.
#[derive(Debug, Default)]
pub struct NativeIndex {
    pub rules: Vec<Compiled>,
    pub exemptions: Vec<Compiled>,
    rule_index: Filed,
    exemption_index: Filed,
    /// The built-in exemption of loopback hops inside one workload.
    pub exempt_loopback_within_workload: bool,
}

fn nets(list: &[String]) -> Vec<IpNet> {
    list.iter().filter_map(|s| parse_net(s)).collect()
}

impl NativeIndex {
    pub fn new(tps: &[Located<TransportPolicy>]) -> Self {
        let mut idx = Self {
            exempt_loopback_within_workload: tps.iter().all(|t| {
                t.object
                    .spec
                    .exempt_loopback_within_workload
                    .unwrap_or(true)
            }),
            ..Self::default()
        };
        for (p, tp) in tps.iter().enumerate() {
            for (e, r) in tp.object.spec.rules.iter().enumerate() {
                let c = Compiled {
                    policy: p,
                    entry: e,
                    destination: nets(&r.conn_match.destination_cidrs),
                    source: nets(&r.conn_match.source_cidrs),
                };
                let id = u32::try_from(idx.rules.len()).unwrap_or(u32::MAX);
                idx.rule_index.add(id, &r.conn_match, &c.destination);
                idx.rules.push(c);
            }
            for (e, x) in tp.object.spec.exemptions.iter().enumerate() {
                let c = Compiled {
                    policy: p,
                    entry: e,
                    destination: nets(&x.conn_match.destination_cidrs),
                    source: nets(&x.conn_match.source_cidrs),
                };
                let id = u32::try_from(idx.exemptions.len()).unwrap_or(u32::MAX);
                idx.exemption_index.add(id, &x.conn_match, &c.destination);
                idx.exemptions.push(c);
            }
        }
        idx
    }

    /// The rules that match `q`, in declaration order.
    pub fn matching_rules(
        &self,
        tps: &[Located<TransportPolicy>],
        q: &Query<'_>,
    ) -> Vec<&Compiled> {
        let mut cand = Vec::new();
        self.rule_index
            .candidates(q.destination_addr, q.port, &mut cand);
        cand.iter()
            .filter_map(|&i| self.rules.get(i as usize))
            .filter(|c| {
                let m = &tps[c.policy].object.spec.rules[c.entry].conn_match;
                matches(m, c, q)
            })
            .collect()
    }

    /// The first exemption (in declaration order) that covers `q`.
    pub fn exemption(&self, tps: &[Located<TransportPolicy>], q: &Query<'_>) -> Option<&Compiled> {
        let mut cand = Vec::new();
        self.exemption_index
            .candidates(q.destination_addr, q.port, &mut cand);
        cand.iter()
            .filter_map(|&i| self.exemptions.get(i as usize))
            .find(|c| {
                let x = &tps[c.policy].object.spec.exemptions[c.entry];
                x.all == Some(true) || (!x.conn_match.is_empty() && matches(&x.conn_match, c, q))
            })
    }
}

fn workload_ok(r: &Option<WorkloadRef>, w: Option<&Workload>) -> bool {
    match r {
        None => true,
        Some(r) => w.is_some_and(|w| {
            r.namespace.as_ref().is_none_or(|n| *n == w.namespace)
                && r.name.as_ref().is_none_or(|n| *n == w.name)
                && super::model::subset_of(&r.match_labels, &w.labels)
        }),
    }
}

/// Whether every field of `m` matches `q`.
fn matches(m: &ConnMatch, c: &Compiled, q: &Query<'_>) -> bool {
    (c.destination.is_empty() && m.destination_cidrs.is_empty()
        || c.destination
            .iter()
            .any(|n| n.contains(&q.destination_addr)))
        && (c.source.is_empty() && m.source_cidrs.is_empty()
            || c.source.iter().any(|n| n.contains(&q.source_addr)))
        && (m.ports.is_empty() || m.ports.contains(&q.port))
        && (m.port_names.is_empty()
            || q.destination
                .as_ref()
                .and_then(|w| w.port_names.get(&q.port))
                .is_some_and(|n| m.port_names.contains(n)))
        && workload_ok(&m.destination, q.destination.as_ref())
        && workload_ok(&m.source, q.source.as_ref())
        && (m.processes.is_empty()
            || m.processes.iter().any(|p| {
                Some(p.as_str()) == q.client_process || Some(p.as_str()) == q.server_process
            }))
        && m.direction.is_none_or(|d| d == q.direction)
        && m.loopback
            .is_none_or(|l| l == (q.source_addr.is_loopback() && q.destination_addr.is_loopback()))
}
