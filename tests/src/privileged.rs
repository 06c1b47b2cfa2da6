//! Privileged integration tests: they need root (namespaces, BPF). Where the
//! runner is not root they skip loudly; CI sets `WEFT_REQUIRE_PRIVILEGED=1`,
//! which turns such a skip into a failure.
//!
//! Lab tests also take a host-wide lock: they assert on host-wide state
//! (`ip netns list`, `/sys/fs/bpf`, loaded programs) that another lab coming
//! up at the same time would change.

use std::{fs::File, os::fd::AsRawFd as _, path::Path};

use crate::host::BPFFS;

pub const REQUIRE_PRIVILEGED: &str = "WEFT_REQUIRE_PRIVILEGED";
const LOCK_FILE: &str = "/run/weft-lab.lock";

/// Held for the whole test; dropping it releases the host-wide lock.
pub struct PrivilegedGuard {
    _lock: File,
}

/// The first line of every privileged test: `let _guard = privileged!("name");`
/// returns from the test (after saying loudly that it is skipped) where it
/// cannot run, else holds the host-wide lab lock until the test ends.
#[macro_export]
macro_rules! privileged {
    ($test:expr) => {
        match $crate::privileged_test($test) {
            Some(guard) => guard,
            None => return,
        }
    };
}

/// Returns a guard if this test can run, `None` (after saying so loudly) if
/// it must be skipped; panics where skipping is not allowed or a tool the
/// lab needs is missing.
pub fn privileged_test(test: &str) -> Option<PrivilegedGuard> {
    if !nix::unistd::geteuid().is_root() {
        let required = std::env::var(REQUIRE_PRIVILEGED).is_ok_and(|value| value == "1");
        assert!(
            !required,
            "{test} needs root and this runner is not root; {REQUIRE_PRIVILEGED}=1 forbids skipping it"
        );
        eprintln!(
            "\n*** SKIPPED {test}: needs root (namespaces, BPF). Run as root, or set {REQUIRE_PRIVILEGED}=1 to make this a failure. ***\n"
        );
        return None;
    }
    let missing: Vec<&str> = [
        "/usr/bin/etcd",
        "/usr/lib/cni/bridge",
        "/usr/lib/cni/host-local",
        "/usr/sbin/bpftool",
        "/usr/bin/ping",
    ]
    .into_iter()
    .filter(|tool| !Path::new(tool).exists())
    .collect();
    assert!(
        missing.is_empty(),
        "{test}: missing {missing:?}; run `cargo xtask setup`"
    );
    ensure_bpffs();
    let lock = File::create(LOCK_FILE)
        .unwrap_or_else(|error| panic!("cannot create {LOCK_FILE}: {error}"));
    // SAFETY: plain flock on a descriptor we own.
    let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(locked, 0, "cannot lock {LOCK_FILE}");
    Some(PrivilegedGuard { _lock: lock })
}

/// The reference flanneld (`$WEFT_FLANNELD`, which `cargo xtask test` sets
/// to the flanneld it built from flannel's source) for tests that run stock
/// flanneld; `None` after saying so loudly where there is none, a failure
/// where `WEFT_REQUIRE_PRIVILEGED=1` (CI) forbids skipping.
pub fn reference_flanneld(test: &str) -> Option<std::path::PathBuf> {
    if let Some(flanneld) = crate::lab::reference_flanneld() {
        assert!(
            flanneld.is_file(),
            "{test}: WEFT_FLANNELD={} does not exist",
            flanneld.display()
        );
        return Some(flanneld);
    }
    let required = std::env::var(REQUIRE_PRIVILEGED).is_ok_and(|value| value == "1");
    assert!(
        !required,
        "{test} needs the reference flanneld and none was given; set WEFT_FLANNELD, or \
         WEFT_FLANNEL_SOURCE for `cargo xtask test` to build it ({REQUIRE_PRIVILEGED}=1 forbids skipping)"
    );
    eprintln!(
        "\n*** SKIPPED {test}: no reference flanneld (set WEFT_FLANNELD, or WEFT_FLANNEL_SOURCE for `cargo xtask test`). ***\n"
    );
    None
}

/// Mounts bpffs at /sys/fs/bpf if nothing is mounted there.
pub fn ensure_bpffs() {
    let mounted = nix::sys::statfs::statfs(BPFFS)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC);
    if !mounted {
        nix::mount::mount(
            Some("bpf"),
            BPFFS,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap_or_else(|error| panic!("cannot mount bpffs at {BPFFS}: {error}"));
    }
}

/// The lab's Kubernetes binaries (`$WEFT_KUBERNETES_BIN`, which `cargo xtask
/// test` sets to the kube-apiserver and kubectl it built from Debian's source
/// package) for tests that run the kube subnet manager; `None` after saying
/// so loudly where there are none, a failure where `WEFT_REQUIRE_PRIVILEGED=1`
/// (CI) forbids skipping.
pub fn reference_kubernetes(test: &str) -> Option<std::path::PathBuf> {
    if let Some(dir) = crate::kube::binaries() {
        assert!(
            dir.join("kube-apiserver").is_file() && dir.join("kubectl").is_file(),
            "{test}: {}={} holds no kube-apiserver and kubectl",
            crate::kube::BINARY_ENV,
            dir.display()
        );
        return Some(dir);
    }
    let required = std::env::var(REQUIRE_PRIVILEGED).is_ok_and(|value| value == "1");
    assert!(
        !required,
        "{test} needs kube-apiserver v1.20.2 and none was given; set {}, or \
         WEFT_KUBERNETES_SOURCE for `cargo xtask test` to build it ({REQUIRE_PRIVILEGED}=1 forbids skipping)",
        crate::kube::BINARY_ENV
    );
    eprintln!(
        "\n*** SKIPPED {test}: no kube-apiserver (set {}, or WEFT_KUBERNETES_SOURCE for `cargo xtask test`). ***\n",
        crate::kube::BINARY_ENV
    );
    None
}
