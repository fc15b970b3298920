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
    let c = run("10.213.51.3:8080");
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

/// Runs `policy check` and fails the test if it does not finish in time (a hang
/// on a FIFO or /dev/zero is the bug this guards against).
fn check_in_time(paths: &[&Path]) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mtls-auditor"))
        .arg("policy")
        .arg("check")
        .args(paths)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run mtls-auditor");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("policy check of {paths:?} did not finish");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn fifos_devices_and_empty_input_get_a_message_not_a_hang() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("p.yaml");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let (ok, stdout, _) = check_in_time(&[&fifo]);
    assert!(!ok);
    assert!(
        stdout.contains("p.yaml: error: cannot read: is a FIFO (named pipe), not a regular file"),
        "{stdout}"
    );
    let (ok, stdout, _) = check_in_time(&[Path::new("/dev/zero")]);
    assert!(!ok);
    assert!(
        stdout.contains("/dev/zero: error: cannot read: is a character device, not a regular file"),
        "{stdout}"
    );
    // Empty: a warning, and the summary says nothing was checked.
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "").expect("write");
    let (ok, stdout, _) = check_in_time(&[&empty]);
    assert!(ok, "{stdout}");
    assert!(
        stdout.contains("empty.yaml: warning: empty file: no policy objects"),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("no policy objects found: nothing was checked\n"),
        "{stdout}"
    );
    let none = tempfile::tempdir().expect("tempdir");
    let (ok, stdout, _) = check_in_time(&[none.path()]);
    assert!(ok);
    assert!(
        stdout.contains("warning: directory has no *.yaml or *.yml file: no policy from here"),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("no policy objects found: nothing was checked\n"),
        "{stdout}"
    );
}

/// The YAML mistakes whose messages used to mislead.
#[test]
fn yaml_mistakes_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let head = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: p\n  namespace: default\n";
    let cases: &[(&str, Vec<u8>, &str)] = &[
        (
            "bom.yaml",
            [b"\xef\xbb\xbf".as_slice(), head.as_bytes()].concat(),
            "0 error(s)",
        ),
        (
            "nul.yaml",
            format!("{head}  labels:\n    a: \"x\0\"\n").into_bytes(),
            "nul.yaml:7:10: error: control character U+0000 is not allowed in YAML",
        ),
        (
            "latin1.yaml",
            [head.as_bytes(), b"  labels:\n    a: caf\xe9\n"].concat(),
            "latin1.yaml:7:11: error: cannot read: not UTF-8 text: invalid byte at line 7, column 11",
        ),
        (
            "seq.yaml",
            format!("{head}spec:\n  mtls:\n    mode: [STRICT]\n").into_bytes(),
            "seq.yaml:8:11: error: spec.mtls.mode: invalid type: sequence, expected one of `UNSET`, `DISABLE`, `PERMISSIVE`, `STRICT`",
        ),
        (
            "tab.yaml",
            format!("{head}spec:\n\tmtls: {{}}\n").into_bytes(),
            "tab.yaml:7:1: error: a tab in the indentation: YAML indents with spaces only",
        ),
        (
            "scalar.yaml",
            b"strict please\n".to_vec(),
            "scalar.yaml:1:1: error: a policy document must be a Kubernetes object (a mapping with `apiVersion` and `kind`), not a string (\"strict please\")",
        ),
        (
            "deep.yaml",
            format!(
                "{head}spec: {}1{}\n",
                "[".repeat(100_000),
                "]".repeat(100_000)
            )
            .into_bytes(),
            "deep.yaml:6:71: error: flow collections",
        ),
    ];
    for (name, bytes, want) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        let (_, stdout, _) = check_in_time(&[&path]);
        assert!(stdout.contains(want), "{name}: {stdout}");
    }
}

#[test]
fn an_exemption_without_a_match_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.yaml");
    std::fs::write(&path, "apiVersion: mtls-auditor.io/v1alpha1\nkind: TransportPolicy\nmetadata:\n  name: t\nspec:\n  exemptions:\n  - name: everything\n    match: {}\n").expect("write");
    let (ok, stdout, _) = check(&[&path]);
    assert!(!ok);
    assert!(stdout.contains("t.yaml:7:5: error: spec.exemptions[0] (everything): no `match` (or an empty one) would exempt every connection; give a `match`, or `all: true` to exempt everything on purpose"), "{stdout}");
}

#[test]
fn explain_escapes_control_characters_in_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("inv.yaml");
    std::fs::write(&path, "apiVersion: mtls-auditor.io/v1alpha1\nkind: Inventory\nmetadata:\n  name: inv\nspec:\n  workloads:\n  - name: \"web\\n10:00 forged row\\u001b[2J\"\n    namespace: default\n    match:\n      addresses: [\"10.9.0.1\"]\n  services:\n  - name: api\n    namespace: default\n    addresses: [\"10.9.0.2\"]\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_mtls-auditor"))
        .args(["policy", "explain", "--policy"])
        .arg(&path)
        .args(["--from", "10.9.0.1", "--to", "10.9.0.2:80"])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.starts_with("connection: default/web\\n10:00 forged row\\u{1b}[2J -> "),
        "{stdout}"
    );
    assert!(!stdout.contains('\u{1b}'));
}

/// Linkerd's kinds, broken the ways Linkerd's CRD schemas, admission webhook or
/// policy controller refuse: (file name, content, the diagnostic line).
const LINKERD_BROKEN: &[(&str, &str, &str)] = &[
    (
        "linkerd-access-policy.yaml",
        r#"apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata:
  name: web
  namespace: shop
spec:
  podSelector:
    matchLabels:
      app: web
  port: 8080
  accessPolicy: all-authenticted
"#,
        "linkerd-access-policy.yaml:11:3: error: spec.accessPolicy: `all-authenticted` is not one of `all-unauthenticated`, `all-authenticated`, `cluster-unauthenticated`, `cluster-authenticated`, `deny`, `audit` (Linkerd: the admission webhook refuses an invalid 'accessPolicy')",
    ),
    (
        "linkerd-no-selector.yaml",
        r#"apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata:
  name: web
  namespace: shop
spec:
  port: 8080
"#,
        "linkerd-no-selector.yaml:6:1: error: spec: a Server selects its workloads with `podSelector` or `externalWorkloadSelector`; it has neither (Linkerd: Server CRD, exactly one of them)",
    ),
    (
        "linkerd-port.yaml",
        r#"apiVersion: policy.linkerd.io/v1beta2
kind: Server
metadata:
  name: web
  namespace: shop
spec:
  podSelector: {}
  port: 70000
"#,
        "linkerd-port.yaml:8:3: error: spec.port: 70000 is not a port number (1-65535) (Linkerd: the policy controller reads a Server's port as a number 1-65535 or a port name)",
    ),
    (
        "linkerd-target.yaml",
        r#"apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: p
  namespace: shop
spec:
  targetRef:
    kind: Service
    name: web
  requiredAuthenticationRefs: []
"#,
        "linkerd-target.yaml:8:5: error: spec.targetRef: unsupported authorization target type: Service; expected a Server (policy.linkerd.io), an HTTPRoute (policy.linkerd.io or gateway.networking.k8s.io), a GRPCRoute (gateway.networking.k8s.io) or a Namespace (Linkerd: the policy controller refuses the AuthorizationPolicy)",
    ),
    (
        "linkerd-cidr.yaml",
        r#"apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthentication
metadata:
  name: office
  namespace: shop
spec:
  networks:
  - cidr: 10.0.0.0/8
    except: [192.168.0.0/16]
"#,
        "linkerd-cidr.yaml:9:14: error: spec.networks[0]: cidr '10.0.0.0/8' does not include exception '192.168.0.0/16' (Linkerd: NetworkAuthentication admission)",
    ),
    (
        "linkerd-identity.yaml",
        r#"apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata:
  name: clients
  namespace: shop
spec:
  identities:
  - "web.*.serviceaccount.identity.linkerd.cluster.local"
"#,
        "linkerd-identity.yaml:8:6: error: spec.identities: id web.*.serviceaccount.identity.linkerd.cluster.local is invalid: identity must be a valid SPIFFE id or a DNS SAN (lowercase DNS labels, a leading `*` allowed) (Linkerd: MeshTLSAuthentication admission)",
    ),
    (
        "linkerd-unknown-field.yaml",
        r#"apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata:
  name: web
  namespace: shop
spec:
  podSelectr:
    matchLabels:
      app: web
  port: 8080
"#,
        "linkerd-unknown-field.yaml:7:3: error: spec: unknown field `podSelectr`, expected one of `podSelector`, `externalWorkloadSelector`, `port`, `proxyProtocol`, `accessPolicy`",
    ),
    (
        "linkerd-namespace.yaml",
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: shop
  annotations:
    config.linkerd.io/default-inbound-policy: strict
"#,
        "linkerd-namespace.yaml:6:5: error: metadata.annotations[config.linkerd.io/default-inbound-policy]: `strict` is not one of `all-unauthenticated`, `all-authenticated`, `cluster-unauthenticated`, `cluster-authenticated`, `deny`, `audit` (Linkerd: the injector ignores an unrecognized value and the cluster default applies)",
    ),
];

#[test]
fn every_broken_linkerd_file_gets_its_message_and_a_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, content, want) in LINKERD_BROKEN {
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
fn linkerd_documentation_examples_load_unchanged() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/policy/linkerd-docs.yaml");
    let (ok, stdout, _) = check(&[&docs]);
    assert!(ok, "{stdout}");
    assert!(
        stdout.ends_with(", 3 Server, 3 AuthorizationPolicy, 3 MeshTLSAuthentication, 1 NetworkAuthentication; 0 error(s), 2 warning(s)\n"),
        "{stdout}"
    );
    // What Linkerd accepts but the auditor cannot use is a warning that says so.
    assert!(
        stdout.contains("HTTPRoute `authors-get-route`: an authorization per route is decided request by request"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Server booksapp/authors is not in the policy files"),
        "{stdout}"
    );
}

/// `policy explain` for Linkerd workloads of a standalone inventory
/// (examples/linkerd-policy.yaml): the deciding Server and field, refusals,
/// and the proxies' mutual TLS.
#[test]
fn explain_names_the_deciding_linkerd_objects() {
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/linkerd-policy.yaml");
    let run = |from: &str, to: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_mtls-auditor"))
            .args(["policy", "explain", "--policy"])
            .arg(&policy)
            .args(["--from", from, "--to", to])
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // No Server on 7000: the workload's default, all-authenticated.
    let e = run("shop/legacy", "shop/web:7000");
    assert!(e.contains("expected:   mutual_tls"), "{e}");
    assert!(e.contains("decided by: default-inbound-policy=all-authenticated (the inventory workload's config.linkerd.io/default-inbound-policy)"), "{e}");
    // The Server on the named port admits plaintext from the cluster.
    let e = run("shop/legacy", "shop/web:8080");
    assert!(e.contains("expected:   none"), "{e}");
    assert!(e.contains("permissive: yes"), "{e}");
    assert!(e.contains("decided by: Server shop/web-http spec.accessPolicy=cluster-unauthenticated admits 10.213.150.3 without a mesh identity"), "{e}");
    // Between two meshed pods the proxies speak mutual TLS.
    let e = run("shop/cart", "shop/web:8080");
    assert!(e.contains("expected:   mutual_tls"), "{e}");
    assert!(
        e.contains("client:     Linkerd: the client's proxy speaks mutual TLS"),
        "{e}"
    );
    // A Server without authorizations refuses everyone.
    let e = run("shop/cart", "shop/web:9990");
    assert!(e.contains("refused:    yes"), "{e}");
    assert!(e.contains("HTTP gets a 403"), "a detected port: {e}");
    assert!(
        e.contains("Server shop/web-admin spec.accessPolicy=deny"),
        "{e}"
    );
}
