//! The node package (`cargo xtask package`): what it installs, that its
//! systemd unit passes `systemd-analyze verify` where the package put the
//! binary, that the packaged binary runs, and that /etc/default/weft names
//! only settings the agent reads, with values it accepts; and that the
//! capabilities the unit keeps are enough: agents on the lab holding only
//! those become ready and carry pod traffic on the fast path.
//!
//! `cargo xtask test` builds the .deb and passes it in `WEFT_DEB`; run alone,
//! the test takes the one in target/debian (`cargo xtask package`).

use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use weft_agent::cli::FLANNELD_ALIASES;
use weft_common::{Hook::TcPodEgress, Reason};
use weft_tests::{
    Lab, LabSpec, NodeId,
    lab::{DECAP_COUNTERS, FLOW_SETUP_PACKETS, counter_delta, counters_delta},
    privileged,
    settings::{agent_settings, check_agent_setting},
};

fn deb() -> PathBuf {
    if let Some(deb) = std::env::var_os("WEFT_DEB") {
        return PathBuf::from(deb);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    let debs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| path.extension().is_some_and(|ext| ext == "deb"))
                .collect()
        })
        .unwrap_or_default();
    match debs.as_slice() {
        [deb] => deb.clone(),
        _ => panic!(
            "no single .deb in {} ({debs:?}) and WEFT_DEB unset: run `cargo xtask package` \
             (`cargo xtask test` builds it and sets WEFT_DEB)",
            dir.display()
        ),
    }
}

/// A throw-away directory, removed when the test ends (also on failure).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("weft-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn field(deb: &str, name: &str) -> String {
    run("dpkg-deb", &["--field", deb, name]).trim().to_owned()
}

/// The package unpacked into a throw-away root (`dpkg -x`, as dpkg installs
/// it, without maintainer scripts or the host's database).
fn unpacked(root: &Path) {
    run(
        "dpkg",
        &["-x", deb().to_str().unwrap(), root.to_str().unwrap()],
    );
}

#[test]
fn the_deb_installs_the_release_binary_the_unit_and_the_defaults() {
    let deb = deb();
    let deb = deb.to_str().unwrap();
    let files: BTreeSet<String> = run("dpkg-deb", &["--contents", deb])
        .lines()
        .filter(|line| !line.ends_with('/'))
        .map(|line| {
            let path = line.split_whitespace().last().unwrap();
            path.trim_start_matches('.').to_owned()
        })
        .collect();
    let expected: BTreeSet<String> = [
        "/usr/bin/weft",
        "/lib/systemd/system/weft.service",
        "/etc/default/weft",
        "/usr/share/doc/weft/copyright",
        "/usr/share/doc/weft/README.md",
        "/usr/share/doc/weft/CHANGELOG.md",
        "/usr/share/doc/weft/docs/operating.md",
        "/usr/share/doc/weft/docs/security.md",
        "/usr/share/doc/weft/docs/datapath.md",
        "/usr/share/doc/weft/docs/kubernetes.md",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(files, expected, "files in {deb}");

    assert_eq!(field(deb, "Package"), "weft");
    let depends = field(deb, "Depends");
    for needed in ["libc6 (>= 2.", "nftables", "iptables", "iproute2"] {
        assert!(
            depends.contains(needed),
            "Depends: {depends} lacks {needed}"
        );
    }
    let control = TempDir::new("deb-control");
    run("dpkg-deb", &["--control", deb, control.0.to_str().unwrap()]);
    let conffiles = std::fs::read_to_string(control.0.join("conffiles")).unwrap();
    assert_eq!(conffiles.lines().collect::<Vec<_>>(), ["/etc/default/weft"]);

    let root = TempDir::new("deb-root");
    unpacked(&root.0);
    let binary = root.0.join("usr/bin/weft");
    let mode = std::fs::metadata(&binary).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755, "mode of /usr/bin/weft");
    let version = run(binary.to_str().unwrap(), &["--version"]);
    assert_eq!(
        version.trim(),
        format!("weft {}", field(deb, "Version")),
        "the packaged binary's --version and the package version"
    );
    // A release build: the debug build's symbols make it several times
    // larger, and a debug binary is far too slow for a node.
    let size = std::fs::metadata(&binary).unwrap().len();
    assert!(
        size < 40 << 20,
        "/usr/bin/weft is {size} bytes: not a release build?"
    );
}

#[test]
fn the_unit_passes_systemd_analyze_verify_in_the_unpacked_root() {
    let root = TempDir::new("unit-root");
    unpacked(&root.0);
    // verify --root resolves every unit the service names (multi-user.target,
    // network-online.target, ...) inside the root: give it the host's.
    let units = root.0.join("usr/lib/systemd");
    std::fs::create_dir_all(&units).unwrap();
    run(
        "cp",
        &["-r", "/lib/systemd/system", units.to_str().unwrap()],
    );
    let unit = root.0.join("lib/systemd/system/weft.service");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.0.display()))
        .arg(&unit)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Unknown keys and sections are only warnings: any output is a defect.
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify weft.service ({}): {said}",
        out.status
    );
    let text = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "EnvironmentFile=/etc/default/weft",
        "ExecStart=/usr/bin/weft agent",
        "Restart=on-failure",
        "After=network-online.target",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_BPF CAP_PERFMON CAP_SYS_ADMIN",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "weft.service lacks {line:?}"
        );
    }
}

/// Every `NAME=value` in /etc/default/weft, commented examples included.
fn default_settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(|line| line.strip_prefix('#').unwrap_or(line))
        .filter_map(|line| line.split_once('='))
        .filter(|(name, _)| {
            // Digits too: WEFT_PUBLIC_IPV6.
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

#[test]
fn the_defaults_file_names_only_settings_the_agent_reads_with_values_it_accepts() {
    let root = TempDir::new("defaults-root");
    unpacked(&root.0);
    let text = std::fs::read_to_string(root.0.join("etc/default/weft")).unwrap();
    let settings = default_settings(&text);
    let mut documented = BTreeSet::new();
    for (name, value) in settings.iter().filter(|(name, _)| name != "RUST_LOG") {
        match check_agent_setting(name, value) {
            Ok(id) => documented.insert(id),
            Err(error) => panic!("/etc/default/weft: {error:#}"),
        };
    }
    for (id, env) in agent_settings() {
        assert!(
            documented.contains(&id),
            "/etc/default/weft does not document {env}"
        );
    }
    for alias in FLANNELD_ALIASES {
        assert!(
            text.contains(&format!("FLANNELD_{alias}")),
            "/etc/default/weft does not mention FLANNELD_{alias}"
        );
    }
}

/// The unit in the source tree (the one the package installs).
fn unit_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/weft.service");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

/// The unit's `CapabilityBoundingSet=`, lower-cased without `CAP_`
/// (`net_admin`).
fn unit_capabilities(unit: &str) -> Vec<String> {
    let sets: Vec<&str> = unit
        .lines()
        .filter_map(|line| line.trim().strip_prefix("CapabilityBoundingSet="))
        .collect();
    let [set] = sets.as_slice() else {
        panic!("the unit should have one CapabilityBoundingSet= line, has {sets:?}");
    };
    set.split_whitespace()
        .map(|cap| {
            cap.strip_prefix("CAP_")
                .unwrap_or_else(|| panic!("{cap:?} in CapabilityBoundingSet= is not CAP_*"))
                .to_ascii_lowercase()
        })
        .collect()
}

/// The kernel's number for capability `name` (linux/capability.h), for the
/// ones a unit might keep.
fn capability_bit(name: &str) -> u32 {
    match name {
        "chown" => 0,
        "dac_override" => 1,
        "kill" => 5,
        "setuid" => 7,
        "net_bind_service" => 10,
        "net_admin" => 12,
        "net_raw" => 13,
        "ipc_lock" => 14,
        "sys_ptrace" => 19,
        "sys_admin" => 21,
        "sys_resource" => 24,
        "perfmon" => 38,
        "bpf" => 39,
        _ => panic!(
            "capability_bit: add CAP_{} (linux/capability.h)",
            name.to_uppercase()
        ),
    }
}

/// A capability line (`CapEff:` ...) of `/proc/<pid>/status`, as a mask.
fn capability_mask(pid: u32, line: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|row| row.strip_prefix(line))
        .unwrap_or_else(|| panic!("no {line} in /proc/{pid}/status"))
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

#[test]
fn the_units_capabilities_suffice_for_a_ready_agent_on_the_fast_path() {
    let _guard = privileged!("the_units_capabilities_suffice_for_a_ready_agent_on_the_fast_path");
    let unit = unit_text();
    let capabilities = unit_capabilities(&unit);
    // As systemd runs it: root, bounded to the unit's set (so that is all
    // it and the tools it runs, nft and ip, ever hold), with no new
    // privileges (the unit's NoNewPrivileges=yes).
    assert!(
        unit.lines()
            .any(|line| line.trim() == "NoNewPrivileges=yes"),
        "the unit no longer sets NoNewPrivileges=yes: bound the lab's agents as it does"
    );
    let bits: Vec<u32> = capabilities.iter().map(|cap| capability_bit(cap)).collect();
    let mut spec = LabSpec::new("uc-caps", 2, 1);
    spec.agent_capabilities = Some(bits.clone());
    // Ready: lease held, datapath programmed, subnet.env written, TC on
    // the uplink.
    let lab = Lab::up(&spec).unwrap();
    let wanted = bits.iter().fold(0u64, |mask, bit| mask | 1 << bit);
    for node in [NodeId::new(1), NodeId::new(2)] {
        lab.wait_pods_attached(node).unwrap();
        let pid = lab.agent_pid(node).unwrap();
        for line in ["CapEff:", "CapBnd:"] {
            assert_eq!(
                capability_mask(pid, line),
                wanted,
                "node {node}'s agent: {line} is not the unit's {capabilities:?}"
            );
        }
    }
    lab.warm_up().unwrap();
    let (from, to) = (
        lab.node(NodeId::new(1)).pods[0].clone(),
        lab.node(NodeId::new(2)).pods[0].clone(),
    );
    let before = [
        lab.counters(NodeId::new(1)).unwrap(),
        lab.counters(NodeId::new(2)).unwrap(),
    ];
    const PINGS: u64 = 50;
    let out = lab.ping(&from, to.ip(), PINGS as u32).unwrap();
    assert!(out.contains(&format!("{PINGS} received")), "{out}");
    let after = [
        lab.counters(NodeId::new(1)).unwrap(),
        lab.counters(NodeId::new(2)).unwrap(),
    ];
    let sent = counter_delta(&before[0], &after[0], TcPodEgress.counter(Reason::Encap)).0;
    let delivered = counters_delta(&before[1], &after[1], &DECAP_COUNTERS).0;
    assert!(
        sent >= PINGS - FLOW_SETUP_PACKETS && delivered >= PINGS - FLOW_SETUP_PACKETS,
        "with only {capabilities:?} the fast path sent {sent} and delivered {delivered} of {PINGS} pings"
    );
    // Nothing the agents tried on the way was refused for want of a
    // capability (a step that fails softly, such as GRO at a pod's end,
    // only logs).
    for node in [NodeId::new(1), NodeId::new(2)] {
        let log_path = lab.node(node).agent_log.clone().unwrap();
        let log = std::fs::read_to_string(&log_path).unwrap();
        let refused: Vec<&str> = log
            .lines()
            .filter(|line| {
                let line = line.to_ascii_lowercase();
                line.contains("operation not permitted") || line.contains("permission denied")
            })
            .collect();
        assert!(
            refused.is_empty(),
            "node {node}'s agent, with only {capabilities:?}, was refused:\n{}",
            refused.join("\n")
        );
    }
}
