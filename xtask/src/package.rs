//! `cargo xtask package`: the node package. A staged tree (the release
//! binary, the systemd unit, the defaults file, the copyright) built into a
//! `.deb` with `dpkg-deb`, Debian's own tool, present on every Debian system:
//! nothing to install and no extra build in CI.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::build::{target_dir, workspace_root};

/// What the package installs: source (relative to the workspace), path in
/// the package, mode.
const FILES: &[(&str, &str, u32)] = &[
    (
        "packaging/weft.service",
        "lib/systemd/system/weft.service",
        0o644,
    ),
    ("packaging/weft.default", "etc/default/weft", 0o644),
    ("packaging/copyright", "usr/share/doc/weft/copyright", 0o644),
    ("README.md", "usr/share/doc/weft/README.md", 0o644),
    // The README's links to the operator's docs resolve on the node too.
    ("CHANGELOG.md", "usr/share/doc/weft/CHANGELOG.md", 0o644),
    (
        "docs/operating.md",
        "usr/share/doc/weft/docs/operating.md",
        0o644,
    ),
    (
        "docs/security.md",
        "usr/share/doc/weft/docs/security.md",
        0o644,
    ),
    (
        "docs/datapath.md",
        "usr/share/doc/weft/docs/datapath.md",
        0o644,
    ),
    (
        "docs/kubernetes.md",
        "usr/share/doc/weft/docs/kubernetes.md",
        0o644,
    ),
];
const BINARY: &str = "usr/bin/weft";
/// Kept across upgrades when the admin changed them.
const CONFFILES: &[&str] = &["/etc/default/weft"];
/// Besides the C library: `nft` drives the verdict and masquerade tables;
/// `weft status` runs `ip`.
const DEPENDS: &[&str] = &["libgcc-s1", "nftables", "iptables", "iproute2"];

/// Builds `<out_dir>/weft_<version>_<arch>.deb` from `binary` (a release
/// build of the agent) and returns its path.
pub fn deb(binary: &Path, out_dir: &Path) -> Result<PathBuf> {
    let version = binary_version(binary)?;
    let arch = architecture()?;
    let stage = target_dir().join("package").join("stage");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("cannot clear {}", stage.display()))?;
    }
    install(binary, &stage.join(BINARY), 0o755)?;
    let root = workspace_root();
    for (source, destination, mode) in FILES {
        install(&root.join(source), &stage.join(destination), *mode)?;
    }
    let libc = glibc_requirement(binary)?;
    let control = control(&version, &arch, &libc, installed_kib(&stage)?);
    let debian = stage.join("DEBIAN");
    write(&debian.join("control"), &control, 0o644)?;
    write(
        &debian.join("conffiles"),
        &(CONFFILES.join("\n") + "\n"),
        0o644,
    )?;

    fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let deb = out_dir.join(format!("weft_{version}_{arch}.deb"));
    let status = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&stage)
        .arg(&deb)
        .stdout(std::process::Stdio::null())
        .status()
        .context("cannot run dpkg-deb (apt-get install dpkg)")?;
    if !status.success() {
        bail!("dpkg-deb --build {} failed ({status})", stage.display());
    }
    Ok(deb)
}

fn control(version: &str, arch: &str, libc: &str, installed_kib: u64) -> String {
    let depends = std::iter::once(format!("libc6 (>= {libc})"))
        .chain(DEPENDS.iter().map(|name| (*name).to_owned()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "Package: weft\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: weft developers <weft@localhost>\n\
         Installed-Size: {installed_kib}\n\
         Depends: {depends}\n\
         Section: net\n\
         Priority: optional\n\
         Description: flannel-compatible overlay network agent with an eBPF fast path\n \
         weft leases pod subnets in etcd and writes subnet.env as flanneld does,\n \
         programs flannel's VXLAN or host-gw datapath, and adds eBPF programs on\n \
         the uplink and pod veths for flows netfilter already accepted.\n \
         Configure /etc/default/weft, then: systemctl enable --now weft\n"
    )
}

/// Debian's name for the build machine's architecture (`amd64`), which is
/// the binary's: the package's and the image's.
pub fn architecture() -> Result<String> {
    output("dpkg", &["--print-architecture"])
}

/// `weft --version` prints `weft <version>`: the package version is the
/// binary's own, and a binary that does not run is caught here.
pub fn binary_version(binary: &Path) -> Result<String> {
    let printed = output(&binary.display().to_string(), &["--version"])?;
    printed
        .strip_prefix("weft ")
        .map(str::to_owned)
        .with_context(|| format!("{} --version printed {printed:?}", binary.display()))
}

/// The newest `GLIBC_x.y` symbol version the binary references: the lowest
/// libc6 it runs with (what dpkg-shlibdeps would find, without needing a
/// debian/ source tree).
fn glibc_requirement(binary: &Path) -> Result<String> {
    let bytes = fs::read(binary).with_context(|| format!("cannot read {}", binary.display()))?;
    let marker = b"GLIBC_2.";
    let newest = bytes
        .windows(marker.len())
        .enumerate()
        .filter(|(_, window)| *window == marker)
        .filter_map(|(at, _)| {
            let digits: String = bytes[at + marker.len()..]
                .iter()
                .take_while(|byte| byte.is_ascii_digit())
                .map(|byte| *byte as char)
                .collect();
            digits.parse::<u32>().ok()
        })
        .max()
        .with_context(|| format!("{} references no GLIBC_2.x symbol", binary.display()))?;
    Ok(format!("2.{newest}"))
}

fn installed_kib(dir: &Path) -> Result<u64> {
    let mut bytes = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let metadata = entry.metadata()?;
        bytes += if metadata.is_dir() {
            installed_kib(&entry.path())? * 1024
        } else {
            metadata.len()
        };
    }
    Ok(bytes.div_ceil(1024))
}

fn install(source: &Path, destination: &Path, mode: u32) -> Result<()> {
    let text = fs::read(source).with_context(|| format!("cannot read {}", source.display()))?;
    write(destination, &text, mode)
}

fn write(path: &Path, contents: impl AsRef<[u8]>, mode: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        fs::set_permissions(parent, fs::Permissions::from_mode(0o755))?;
    }
    fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))
}

fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
