//! `mtls-auditor policy check` on broken files: every error names file, line and
//! column, lists the allowed values where there is a list, and fails the command.

use std::{path::Path, process::Command};

fn check(paths: &[&Path]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mtls-auditor"))
        .arg("policy")
        .arg("check")
        .args(paths)
        .output()
        .expect("run mtls-auditor");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (file name, content, the diagnostic line it must produce)
const BROKEN: &[(&str, &str, &str)] = &[
    (
        "bad-cidr.yaml",
        r#"apiVersion: mtls-auditor.io/v1alpha1
kind: TransportPolicy
metadata:
  name: p
spec:
  rules:
  - name: db
    require: tls
    match:
      destinationCidrs: ["10.0.0.0/33"]
"#,
        "bad-cidr.yaml:10:27: error: spec.rules[0].match.destinationCidrs: `10.0.0.0/33` is not an IP address or CIDR",
    ),
    (
        "bad-enum.yaml",
        r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: strict
  namespace: default
spec:
  mtls:
    mode: STRCT
"#,
        "bad-enum.yaml:8:11: error: spec.mtls.mode: unknown variant `STRCT`, expected one of `UNSET`, `DISABLE`, `PERMISSIVE`, `STRICT`",
    ),
    (
        "bad-port.yaml",
        r#"apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: p
  namespace: default
spec:
  selector:
    matchLabels:
      app: a
  portLevelMtls:
    99999:
      mode: DISABLE
"#,
        "bad-port.yaml:11:5: error: spec.portLevelMtls: 99999 is not a port number (1-65535)",
    ),
    (
        "bad-require.yaml",
        r#"apiVersion: mtls-auditor.io/v1alpha1
kind: TransportPolicy
metadata:
  name: p
spec:
  rules:
  - name: db
    require: mtls
"#,
        "bad-require.yaml:8:14: error: spec.rules[0].require: unknown variant `mtls`, expected one of `mutual_tls`, `tls`, `none`",
    ),
    (
        "bad-version.yaml",
        r#"apiVersion: security.istio.io/v1alpha3
kind: PeerAuthentication
metadata:
  name: strict
spec:
  mtls:
    mode: STRICT
"#,
        "bad-version.yaml:1:13: error: apiVersion: `security.istio.io/v1alpha3` is not a version of PeerAuthentication; expected one of `security.istio.io/v1`, `security.istio.io/v1beta1`",
    ),
    (
        "missing-host.yaml",
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: r
  namespace: default
spec:
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
"#,
        "missing-host.yaml:7:3: error: spec: missing field `host`",
    ),
    (
        "second-doc.yaml",
        r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: ok
  namespace: default
spec:
  mtls:
    mode: STRICT
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: r
  namespace: default
spec:
  host: reviews
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUL
"#,
        "second-doc.yaml:19:13: error: spec.trafficPolicy.tls.mode: unknown variant `ISTIO_MUTUL`, expected one of `DISABLE`, `SIMPLE`, `MUTUAL`, `ISTIO_MUTUAL`",
    ),
    (
        "syntax.yaml",
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: r
 namespace: default
spec:
  host: reviews
"#,
        "syntax.yaml:5:2: error: did not find expected key, while parsing a block mapping",
    ),
    (
        "unknown-field.yaml",
        r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: strict
  namespace: default
spec:
  mtls:
    mode: STRICT
  portLevelMTLS:
    8080:
      mode: DISABLE
"#,
        "unknown-field.yaml:9:3: error: spec: unknown field `portLevelMTLS`, expected one of `selector`, `mtls`, `portLevelMtls`, `portLevelTls`",
    ),
    (
        "wrong-type.yaml",
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: r
  namespace: default
spec:
  host: reviews
  subsets: v1
"#,
        "wrong-type.yaml:8:12: error: spec.subsets: invalid type: string \"v1\", expected a sequence",
    ),
];

#[test]
fn every_broken_file_gets_its_message_and_a_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, content, want) in BROKEN {
        let path = dir.path().join(name);
        std::fs::write(&path, content).expect("write");
        let (ok, stdout, stderr) = check(&[&path]);
        assert!(!ok, "{name}: must fail");
        let first = stdout.lines().next().unwrap_or("");
        let want = format!("{}/{want}", dir.path().display());
        assert_eq!(first, want, "{name}");
        assert!(
            stderr.contains("policy check failed: 1 error(s)"),
            "{name}: {stderr}"
        );
    }
}

#[test]
fn istio_documentation_examples_load_unchanged() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/policy/istio-docs.yaml");
    let (ok, stdout, _) = check(&[&docs]);
    assert!(ok, "{stdout}");
    assert!(stdout.ends_with("5 PeerAuthentication, 9 DestinationRule, 0 TransportPolicy, 0 Inventory; 0 error(s), 16 warning(s)\n"), "{stdout}");
    // Conflicts are warnings that say who wins.
    assert!(stdout.contains("namespace-wide PeerAuthentications in `foo` conflict: `default` is ignored, the oldest (`default`, line 1) wins"), "{stdout}");
}

#[test]
fn the_seed_policies_load_unchanged() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let seed = root.join("examples/seed");
    let native = root.join("examples/transport-policy.yaml");
    let (ok, stdout, _) = check(&[&seed, &native]);
    assert!(ok, "{stdout}");
    assert!(stdout.contains("3 PeerAuthentication, 2 DestinationRule, 1 TransportPolicy, 1 Inventory; 0 error(s), 0 warning(s)"), "{stdout}");
    // The four objects from the write-up the project started from, byte for byte.
    let original = std::fs::read_to_string(root.join("examples/seed/istio-policies.yaml")).unwrap();
    assert!(
        original.contains("host: example-service\n") && original.contains("app: example-service-a")
    );
}

#[test]
fn explain_names_the_deciding_objects() {
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seed");
    let run = |to: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_mtls-auditor"))
            .args(["policy", "explain", "--policy"])
            .arg(&seed)
            .args(["--from", "default/example-service-b", "--to", to])
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let a = run("example-service-a:8443");
    assert!(a.contains("expected:   mutual_tls"), "{a}");
    assert!(a.contains("decided by: PeerAuthentication default/example-service-a-peer-auth spec.mtls.mode=STRICT"), "{a}");
    assert!(a.contains("DestinationRule default/example-service-a-destination-rule spec.trafficPolicy.tls.mode=ISTIO_MUTUAL"), "{a}");
    let c = run("10.213.52.1:8080");
    assert!(c.contains("expected:   none"), "{c}");
    assert!(c.contains("permissive: yes"), "{c}");
    assert!(
        c.contains(
            "PeerAuthentication default/example-service-c-peer-auth spec.mtls.mode=PERMISSIVE"
        ),
        "{c}"
    );
}

#[test]
fn explain_rejects_what_it_cannot_resolve() {
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seed");
    let out = Command::new(env!("CARGO_BIN_EXE_mtls-auditor"))
        .args(["policy", "explain", "--policy"])
        .arg(&seed)
        .args(["--from", "default/nope", "--to", "example-service-a:8443"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "mtls-auditor: `default/nope`: no workload nope in namespace default in the inventory"
    );
}

#[test]
fn explain_rejects_a_source_that_is_neither_a_workload_nor_an_address() {
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seed");
    let out = Command::new(env!("CARGO_BIN_EXE_mtls-auditor"))
        .args(["policy", "explain", "--policy"])
        .arg(&seed)
        .args([
            "--from",
            "example-service-b",
            "--to",
            "example-service-a:8443",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "mtls-auditor: --from `example-service-b`: expected namespace/workload from the inventory or an IP address"
    );
}
