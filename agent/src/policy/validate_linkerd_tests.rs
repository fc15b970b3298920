//! Unit tests of Linkerd's validation rules.

use super::*;

/// Linkerd's `validation.rs` cases.
#[test]
fn identities_are_checked_as_linkerd_checks_them() {
    for ok in [
        "system.local",
        "*",
        "*.system.local",
        "web.emojivoto.serviceaccount.identity.linkerd.cluster.local",
        "spiffe://trust.domain",
        "spiffe://trust.domain/path/to/workload",
    ] {
        assert_eq!(valid_identity(ok), Ok(()), "{ok}");
    }
    for bad in [
        "system.local.*",
        "foo.*.local",
        "Upper.case",
        "",
        "spiffe://",
        "spiffe://Trust",
        "spiffe://td/a//b",
        "spiffe://td/a/..",
        "spiffe://td/a/",
        "spiffe://td/a b",
    ] {
        assert!(valid_identity(bad).is_err(), "{bad}");
    }
}

#[test]
fn port_names_follow_kubernetes() {
    for ok in ["http", "grpc", "admin-http", "h2c"] {
        assert!(valid_port_name(ok), "{ok}");
    }
    for bad in [
        "",
        "HTTP",
        "8080",
        "-http",
        "http-",
        "a--b",
        "a-very-long-port-name",
    ] {
        assert!(!valid_port_name(bad), "{bad}");
    }
}
