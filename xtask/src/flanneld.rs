//! The reference flanneld: stock flannel, built from its source once, so the
//! lab, the bench and the mixed-cluster tests run flanneld itself next to
//! weft (no flanneld release binary can be downloaded on a build machine).
//!
//! Either the user names their own binary (`WEFT_FLANNELD`), or xtask builds
//! one from a tarball of flannel's source tree with its Go modules vendored
//! (`WEFT_FLANNEL_SOURCE`) with Debian's Go 1.19, offline. The build lands in
//! `$XDG_CACHE_HOME/weft/flanneld/<sha256 of the tarball>/` (outside the work
//! tree, so clean clones and `cargo clean` reuse it; another tarball gets its
//! own directory).

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// A flanneld binary the user already has.
pub const BINARY_ENV: &str = "WEFT_FLANNELD";
/// flannel's source tarball (vendored Go modules) to build the reference from.
pub const SOURCE_ENV: &str = "WEFT_FLANNEL_SOURCE";
/// Debian 12's `golang-1.19`: flannel v0.20.2 is the newest release it builds.
const GO: &str = "/usr/lib/go-1.19/bin/go";
/// The source the lab and the bench were validated against. Another tarball
/// is built too, with a warning.
const VALIDATED_SOURCE_SHA256: &str =
    "270103b51d2221b9e97690da58d206088f6e2775044aa76f8dea45d3fe5278a1";

/// The reference flanneld to use, building it on first use. `None` when the
/// user gave neither a binary nor a source: what needs flanneld then skips
/// (or fails in CI), and [`HOW_TO_PROVIDE`] says what to set.
pub fn ensure() -> Result<Option<PathBuf>> {
    if let Some(binary) = std::env::var_os(BINARY_ENV) {
        let binary = PathBuf::from(binary);
        check_runs(&binary).with_context(|| format!("{BINARY_ENV}={}", binary.display()))?;
        return Ok(Some(binary));
    }
    let Some(source) = std::env::var_os(SOURCE_ENV) else {
        return Ok(None);
    };
    let source = PathBuf::from(source);
    build_cached(&source)
        .with_context(|| format!("building flanneld from {SOURCE_ENV}={}", source.display()))
        .map(Some)
}

pub const HOW_TO_PROVIDE: &str = "set WEFT_FLANNELD=/path/to/flanneld, or \
WEFT_FLANNEL_SOURCE=/path/to/flannel-v0.20.2.tar.gz (flannel's source with vendored Go modules; \
see docs/testing.md, \"Stock flanneld in the lab\")";

fn build_cached(source: &Path) -> Result<PathBuf> {
    if !source.is_file() {
        bail!("no such file");
    }
    let digest = sha256(source)?;
    let dir = cache_root()?.join(&digest[..16]);
    let binary = dir.join("flanneld");
    if check_runs(&binary).is_ok() {
        println!("setup: reference flanneld: {} (cached)", binary.display());
        return Ok(binary);
    }
    if digest != VALIDATED_SOURCE_SHA256 {
        println!(
            "setup: warning: {} is not the flannel v0.20.2 source weft was validated against (sha256 {digest})",
            source.display()
        );
    }
    println!(
        "setup: building the reference flanneld from {} (about two minutes)",
        source.display()
    );
    let work = dir.join("build");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    run(Command::new("tar")
        .arg("-xzf")
        .arg(source)
        .arg("-C")
        .arg(&work))
    .context("unpacking the source")?;
    let tree = single_directory(&work)?;
    if !tree.join("vendor").is_dir() {
        bail!(
            "{} has no vendor/ directory: the build is offline, so Go modules must be vendored (`go mod vendor`)",
            tree.display()
        );
    }
    let unfinished = dir.join("flanneld.partial");
    let built = run(Command::new(GO)
        .args(["build", "-o"])
        .arg(&unfinished)
        .arg("-ldflags")
        .arg(format!(
            "-X github.com/flannel-io/flannel/version.Version={}",
            version_of(source)
        ))
        .arg(".")
        .current_dir(&tree)
        .env("GOFLAGS", "-mod=vendor")
        .env("GOPROXY", "off")
        .env("GOCACHE", work.join("go-cache"))
        // cgo as flannel's own amd64 release build: its UDP backend needs it.
        .env("GOPATH", work.join("go-path")))
    .with_context(|| {
        format!(
            "`go build` in {} (is golang-1.19 installed?)",
            tree.display()
        )
    });
    remove_build_tree(&work);
    built?;
    std::fs::rename(&unfinished, &binary)?;
    check_runs(&binary)?;
    println!("setup: reference flanneld: {}", binary.display());
    Ok(binary)
}

/// Only the binary is kept. Go's module cache is read-only, so it is made
/// writable first.
pub(crate) fn remove_build_tree(work: &Path) {
    let _ = Command::new("chmod")
        .arg("-R")
        .arg("u+w")
        .arg(work)
        .status();
    if let Err(error) = std::fs::remove_dir_all(work) {
        println!("setup: warning: cannot remove {}: {error}", work.display());
    }
}

/// `flannel-v0.20.2.tar.gz` -> `v0.20.2`, so the binary reports the release
/// it was built from rather than flannel's default "dev".
fn version_of(source: &Path) -> String {
    let name = source
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_prefix("flannel-")
        .and_then(|rest| rest.strip_suffix(".tar.gz"))
        .unwrap_or("reference")
        .to_owned()
}

fn cache_root() -> Result<PathBuf> {
    Ok(weft_cache_dir()?.join("flanneld"))
}

/// `$XDG_CACHE_HOME/weft` (or `~/.cache/weft`): where builds of reference
/// software live, outside any work tree.
pub(crate) fn weft_cache_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let home: OsString = std::env::var_os("HOME").context("HOME is not set")?;
            PathBuf::from(home).join(".cache")
        }
    };
    Ok(base.join("weft"))
}

fn single_directory(dir: &Path) -> Result<PathBuf> {
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .collect();
    match entries.as_slice() {
        [only] if only.is_dir() => Ok(only.clone()),
        _ => bail!("expected the tarball to hold one top-level directory (flannel's tree)"),
    }
}

pub(crate) fn sha256(file: &Path) -> Result<String> {
    let out = Command::new("sha256sum")
        .arg(file)
        .output()
        .context("running sha256sum")?;
    if !out.status.success() {
        bail!("sha256sum {} failed", file.display());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .filter(|digest| digest.len() == 64)
        .map(str::to_owned)
        .context("sha256sum printed no digest")
}

fn check_runs(binary: &Path) -> Result<()> {
    let out = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    if !out.status.success() {
        bail!("`{} --version` failed", binary.display());
    }
    Ok(())
}

pub(crate) fn run(command: &mut Command) -> Result<()> {
    let status = command.status().context("cannot start")?;
    if !status.success() {
        bail!("failed ({status})");
    }
    Ok(())
}
