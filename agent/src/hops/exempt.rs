//! The mesh's own connections that no policy governs: built-in exemptions, each
//! with a name, a reason in the record, and a switch (`run --disable-exemption
//! NAME`) that turns it off.
//!
//! | name | what |
//! | --- | --- |
//! | `proxy-to-app` | a proxy delivering inbound traffic to its app inside one pod (Envoy's 127.0.0.6 passthrough, or the pod's own address or loopback) |
//! | `istio-envoy-prometheus` | port 15090 of a meshed pod: Prometheus scraping Envoy |
//! | `istio-agent-health` | ports 15020 and 15021 of a meshed pod: merged metrics, health, and the kubelet probes Istio rewrites to them |
//! | `istio-envoy-admin` | port 15000 on loopback in a meshed pod: Envoy's admin API |
//! | `istio-dns` | an app's DNS over TCP redirected to the proxy's 15053 (Istio DNS capture: a sidecar asks `SO_ORIGINAL_DST`, ztunnel's in-pod DNS proxy does not and is found by the translation of the SYN) |
//! | `istio-ambient-probe` | the kubelet's probes of an ambient pod, which istio-cni SNATs to 169.254.7.127 (`fd16:9254:7127:1337:ffff:ffff:ffff:ffff`) so that they reach the app uncaptured |
//! | `istio-ztunnel` | ports 15020 (metrics), 15021 (readiness) and 15000 (admin, on loopback) of a node proxy's own pod: ztunnel's sockets outside the pods it serves |
//! | `linkerd-admin` | port 4191 of a meshed pod: the Linkerd proxy's metrics, readiness and liveness |
//! | `linkerd-tap` | port 4190 of a meshed pod: the Linkerd proxy's tap API |
//!
//! A pod is *meshed* when a proxy was seen intercepting in its network namespace;
//! the ports are exempt only there, so a server of someone else's listening on
//! 15090 of an unmeshed host is judged like any other. 15008 (HBONE) is the mesh's
//! mutual TLS, never exempt.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::{Hop, HopFacts, Hops};
use crate::flows::Connection;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    ProxyToApp,
    IstioEnvoyPrometheus,
    IstioAgentHealth,
    IstioEnvoyAdmin,
    IstioDns,
    IstioAmbientProbe,
    IstioZtunnel,
    LinkerdAdmin,
    LinkerdTap,
}

impl Builtin {
    pub const ALL: [Builtin; 9] = [
        Self::ProxyToApp,
        Self::IstioEnvoyPrometheus,
        Self::IstioAgentHealth,
        Self::IstioEnvoyAdmin,
        Self::IstioDns,
        Self::IstioAmbientProbe,
        Self::IstioZtunnel,
        Self::LinkerdAdmin,
        Self::LinkerdTap,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::ProxyToApp => "proxy-to-app",
            Self::IstioEnvoyPrometheus => "istio-envoy-prometheus",
            Self::IstioAgentHealth => "istio-agent-health",
            Self::IstioEnvoyAdmin => "istio-envoy-admin",
            Self::IstioDns => "istio-dns",
            Self::IstioAmbientProbe => "istio-ambient-probe",
            Self::IstioZtunnel => "istio-ztunnel",
            Self::LinkerdAdmin => "linkerd-admin",
            Self::LinkerdTap => "linkerd-tap",
        }
    }
}

impl fmt::Display for Builtin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which built-in exemptions are on (all, unless switched off).
#[derive(Debug, Clone, Default)]
pub struct BuiltinExemptions {
    disabled: Vec<Builtin>,
}

impl BuiltinExemptions {
    /// From the names given to `--disable-exemption`; an unknown name is an error
    /// that lists the known ones.
    pub fn with_disabled(names: &[String]) -> Result<Self, String> {
        let mut disabled = Vec::new();
        for n in names {
            let b = Builtin::ALL
                .into_iter()
                .find(|b| b.name() == n.as_str())
                .ok_or_else(|| {
                    format!(
                        "unknown built-in exemption `{n}` (known: {})",
                        Builtin::ALL.map(Builtin::name).join(", ")
                    )
                })?;
            disabled.push(b);
        }
        Ok(Self { disabled })
    }

    fn on(&self, b: Builtin) -> bool {
        !self.disabled.contains(&b)
    }

    /// The built-in exemption that covers `conn`, with the reason a record gives.
    pub fn check(
        &self,
        facts: &HopFacts,
        conn: &Connection,
        hops: &Hops,
    ) -> Option<(Builtin, String)> {
        let port = conn.server.port();
        // A delivery out of a tunnel is the logical connection itself, judged by
        // the tunnel it came through: not exempt.
        if facts.hop == Hop::ProxyToApp && facts.tunnel.is_none() && self.on(Builtin::ProxyToApp) {
            let who = conn
                .client_end
                .as_ref()
                .and_then(|e| e.process.as_ref())
                .map_or_else(
                    || "the proxy".to_owned(),
                    |p| format!("{} (pid {})", p.comm, p.pid),
                );
            let from = facts
                .delivers
                .map(|c| format!(" (most likely the connection from {c})"))
                .unwrap_or_default();
            return Some((
                Builtin::ProxyToApp,
                format!(
                    "intra-pod hop: {who} delivers inbound traffic{from} to its app on port {port} inside the pod's network namespace"
                ),
            ));
        }
        if facts.hop == Hop::AppToProxy
            && facts
                .interceptor
                .as_ref()
                .is_some_and(|i| i.accepted_on.port() == 15053)
            && self.on(Builtin::IstioDns)
        {
            return Some((
                Builtin::IstioDns,
                format!(
                    "Istio DNS capture: the app's DNS to {} answered by the proxy on 15053",
                    conn.server
                ),
            ));
        }
        if is_ambient_probe_source(conn.client.ip()) && self.on(Builtin::IstioAmbientProbe) {
            return Some((
                Builtin::IstioAmbientProbe,
                format!(
                    "the kubelet's probe of port {port}, which istio-cni sends from {} past ztunnel",
                    conn.client.ip()
                ),
            ));
        }
        let server = conn.server_end.as_ref()?;
        let proxy = hops.proxy_of(server);
        // ztunnel's in-pod DNS proxy: the pod's rules REDIRECT its DNS over TCP to
        // 15053, and ztunnel answers without asking SO_ORIGINAL_DST; the SYN's
        // translation joined the two sockets.
        if port == 15053
            && facts.hop != Hop::AppToProxy
            && let Some(p) = proxy
            && hops.is_meshed_netns(server.netns_cookie)
            && self.on(Builtin::IstioDns)
        {
            let asked = conn
                .nat
                .as_ref()
                .map_or_else(|| conn.server.to_string(), |n| n.socket.1.to_string());
            return Some((
                Builtin::IstioDns,
                format!(
                    "Istio DNS capture: the app's DNS to {asked} answered by {} (pid {}) on 15053 inside the pod",
                    p.process.comm, p.process.pid
                ),
            ));
        }
        // A node proxy's own ports, in its own pod (not one it serves): ztunnel's
        // metrics, readiness and admin API.
        if let Some(p) = proxy
            && !hops.is_meshed_netns(server.netns_cookie)
            && facts.hop != Hop::AppToProxy
        {
            let what = match port {
                15020 => Some("its Prometheus metrics"),
                15021 => Some("its readiness probe"),
                15000 if conn.server.ip().is_loopback() => Some("its admin API on loopback"),
                _ => None,
            };
            if let Some(what) = what
                && self.on(Builtin::IstioZtunnel)
            {
                return Some((
                    Builtin::IstioZtunnel,
                    format!(
                        "port {port} of {} (pid {}), a node proxy in a pod of its own (ztunnel), serves {what}",
                        p.process.comm, p.process.pid
                    ),
                ));
            }
        }
        // The mesh's own ports, on a pod a proxy intercepts in.
        if !hops.is_meshed_netns(server.netns_cookie) || facts.hop == Hop::AppToProxy {
            return None;
        }
        let (b, what) = match port {
            15090 => (Builtin::IstioEnvoyPrometheus, "Envoy's Prometheus endpoint"),
            15020 => (
                Builtin::IstioAgentHealth,
                "the Istio agent's merged metrics and rewritten app probes",
            ),
            15021 => (
                Builtin::IstioAgentHealth,
                "the Istio agent's health checks (kubelet probes)",
            ),
            15000 if conn.server.ip().is_loopback() => {
                (Builtin::IstioEnvoyAdmin, "Envoy's admin API on loopback")
            }
            4191 => (
                Builtin::LinkerdAdmin,
                "the Linkerd proxy's metrics and health",
            ),
            4190 => (Builtin::LinkerdTap, "the Linkerd proxy's tap API"),
            _ => return None,
        };
        self.on(b)
            .then(|| (b, format!("port {port} of a meshed pod serves {what}")))
    }
}

/// The source address istio-cni SNATs the kubelet's probes of ambient pods to.
pub fn is_ambient_probe_source(ip: IpAddr) -> bool {
    ip == IpAddr::V4(Ipv4Addr::new(169, 254, 7, 127))
        || ip
            == IpAddr::V6(Ipv6Addr::new(
                0xfd16, 0x9254, 0x7127, 0x1337, 0xffff, 0xffff, 0xffff, 0xffff,
            ))
}
