//! Bad input ends with one clear error line naming the problem and a non-zero
//! exit, never a panic. None of these need root: the agent checks its inputs
//! before it touches the kernel.

use std::process::Command;

use weft_tests::lab::default_weft_bin;

struct Outcome {
    code: Option<i32>,
    stderr: String,
}

fn weft(args: &[&str]) -> Outcome {
    let bin = default_weft_bin();
    assert!(
        bin.exists(),
        "{} not built; run `cargo xtask test`",
        bin.display()
    );
    let output = Command::new(&bin).args(args).output().unwrap();
    Outcome {
        code: output.status.code(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Exactly one error line, naming what was wrong; no panic.
fn assert_one_clear_error(outcome: &Outcome, expected: &str) {
    assert_ne!(outcome.code, Some(0), "{}", outcome.stderr);
    assert!(!outcome.stderr.contains("panicked"), "{}", outcome.stderr);
    let errors: Vec<&str> = outcome
        .stderr
        .lines()
        .filter(|line| line.contains("error"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", outcome.stderr);
    assert!(
        errors[0].contains(expected),
        "expected {expected:?} in {:?}",
        errors[0]
    );
}

fn temp_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-bad-input-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_missing_interface_is_named() {
    let outcome = weft(&[
        "agent",
        "--iface",
        "nosuchif0",
        "--subnet-file",
        "/nonexistent/subnet.env",
    ]);
    assert_one_clear_error(&outcome, "interface \"nosuchif0\" not found");
    assert_eq!(outcome.code, Some(1));
}

#[test]
fn a_pin_dir_outside_bpffs_is_named() {
    let dir = temp_dir("pin");
    let pin_dir = dir.join("pins");
    let outcome = weft(&[
        "agent",
        "--iface",
        "lo",
        "--subnet-file",
        "/nonexistent/subnet.env",
        "--bpf-pin-dir",
        pin_dir.to_str().unwrap(),
    ]);
    assert_one_clear_error(
        &outcome,
        &format!(
            "--bpf-pin-dir {}: {} is not on a bpffs mount",
            pin_dir.display(),
            dir.display()
        ),
    );
    assert!(
        !pin_dir.exists(),
        "the agent created a pin dir outside bpffs"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_malformed_subnet_env_is_named_with_its_line() {
    let dir = temp_dir("env");
    let file = dir.join("subnet.env");
    std::fs::write(&file, "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=jumbo\nFLANNEL_IPMASQ=true\n").unwrap();
    let outcome = weft(&[
        "agent",
        "--iface",
        "lo",
        "--subnet-file",
        file.to_str().unwrap(),
    ]);
    assert_one_clear_error(
        &outcome,
        &format!("{}:3: FLANNEL_MTU=\"jumbo\" is not an MTU", file.display()),
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_bad_flag_value_is_named() {
    let outcome = weft(&["agent", "--iface", "lo", "--xdp-mode", "turbo"]);
    assert_eq!(outcome.code, Some(2), "{}", outcome.stderr);
    assert_one_clear_error(&outcome, "invalid value 'turbo' for '--xdp-mode");
}

#[test]
fn reading_maps_without_an_agent_is_named() {
    let outcome = weft(&["maps", "stats", "--bpf-pin-dir", "/nonexistent/pins"]);
    assert_one_clear_error(&outcome, "cannot open pinned map /nonexistent/pins/STATS");
}

#[test]
fn flanneld_environment_names_are_honoured() {
    let bin = default_weft_bin();
    let output = Command::new(&bin)
        .args(["agent", "--subnet-file", "/nonexistent/subnet.env"])
        .env("FLANNELD_IFACE", "fromflanneld0")
        .env_remove("WEFT_IFACE")
        .output()
        .unwrap();
    let outcome = Outcome {
        code: output.status.code(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert_one_clear_error(&outcome, "interface \"fromflanneld0\" not found");
}

/// TLS files and credentials are checked once, before connecting: a retry
/// cannot fix a missing file, so the agent must not wait on etcd for it.
#[test]
fn etcd_tls_files_and_credentials_are_checked_before_connecting() {
    let dir = temp_dir("tls");
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let missing = dir.join("missing-ca.pem");
    let base = [
        "agent",
        "--iface",
        "lo",
        "--subnet-file",
        "/nonexistent/subnet.env",
        "--dataplane",
        "kernel",
        // Nothing listens here: an agent that tried to connect would retry
        // forever instead of exiting.
        "--etcd-endpoints",
        "http://127.0.0.1:1",
    ];
    let cases: [(&[&str], String); 4] = [
        (
            &["--etcd-cafile", missing.to_str().unwrap()],
            format!("--etcd-cafile {}: cannot read it", missing.display()),
        ),
        (
            &["--etcd-cafile", not_pem.to_str().unwrap()],
            format!("--etcd-cafile {}: not a PEM file", not_pem.display()),
        ),
        (
            &["--etcd-certfile", not_pem.to_str().unwrap()],
            "--etcd-certfile is set but --etcd-keyfile is not".to_owned(),
        ),
        (
            &["--etcd-username", "root"],
            "--etcd-username is set but --etcd-password is not".to_owned(),
        ),
    ];
    for (extra, expected) in cases {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let outcome = weft(&args);
        assert_one_clear_error(&outcome, &expected);
        assert_eq!(outcome.code, Some(1), "{extra:?}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}
