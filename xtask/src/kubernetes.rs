//! The lab's Kubernetes control plane: kube-apiserver, kube-controller-manager
//! and kubectl v1.20.2, built once from Debian 12's `kubernetes` source
//! package, so the kube subnet manager is tested against the real API server
//! (no Kubernetes server binary can be downloaded on a build machine).
//!
//! Either the user names a directory holding the three binaries
//! (`WEFT_KUBERNETES_BIN`), or xtask builds them from a directory holding the
//! source package's three files (`WEFT_KUBERNETES_SOURCE`: the `.dsc`, the
//! orig tarball with vendored Go modules and Debian's packaging), checked
//! against their pinned sha256s, with Debian's Go 1.19, offline, the way the
//! package's `debian/rules` builds them. One fix is applied: the vendored
//! `github.com/modern-go/reflect2` v1.0.1 crashes the server under Go >= 1.18
//! (SIGSEGV in `aeshashbody` during map iteration, seconds after start), so
//! Debian's `golang-github-modern-go-reflect2-dev` (1.0.2) replaces it.
//!
//! The build lands in `$XDG_CACHE_HOME/weft/kubernetes/<recipe>-<sha256 of the
//! orig tarball>/`, outside the work tree, so clean clones and `cargo clean`
//! reuse it.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::flanneld::{remove_build_tree, run, sha256, weft_cache_dir};

/// A directory holding kube-apiserver, kube-controller-manager and kubectl.
pub const BINARY_ENV: &str = "WEFT_KUBERNETES_BIN";
/// A directory holding Debian's `kubernetes` source package.
pub const SOURCE_ENV: &str = "WEFT_KUBERNETES_SOURCE";
/// What the lab runs; every one is built from the same tree.
pub const BINARIES: &[&str] = &["kube-apiserver", "kube-controller-manager", "kubectl"];
/// Debian's Go 1.19 (what `debian/rules` builds with on Debian 12).
const GO_BIN: &str = "/usr/lib/go-1.19/bin";
/// Debian's reflect2 1.0.2 source (`golang-github-modern-go-reflect2-dev`).
const REFLECT2_SOURCE: &str = "/usr/share/gocode/src/github.com/modern-go/reflect2";
/// Bumped whenever the recipe below changes, so an old build is not reused.
const RECIPE: &str = "r1";

const ORIG: &str = "kubernetes_1.20.5+really1.20.2.orig.tar.gz";
/// The source package's files and their sha256s, as Debian's archive serves
/// them (1.20.5+really1.20.2-1.1+deb12u1). Only this source is built: the
/// reflect2 fix and the lab's flags were validated against it.
const SOURCE_FILES: &[(&str, &str)] = &[
    (
        ORIG,
        "b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc",
    ),
    (
        "kubernetes_1.20.5+really1.20.2-1.1+deb12u1.debian.tar.xz",
        "9b6e5fd41769d2b5badf2e73b274e3bcd90f85e13d06a1a4a845ccce018127d8",
    ),
    (
        "kubernetes_1.20.5+really1.20.2-1.1+deb12u1.dsc",
        "19fa1da5aefcef673894ac9511986bd98a14410cf8eea0b626613c30df435257",
    ),
];

pub const HOW_TO_PROVIDE: &str = "set WEFT_KUBERNETES_SOURCE=/path/to/dir holding Debian 12's \
`kubernetes` source package (kubernetes_1.20.5+really1.20.2*: .dsc, orig tarball, debian \
tarball), or WEFT_KUBERNETES_BIN=/path/to/dir with kube-apiserver, kube-controller-manager and \
kubectl v1.20.2 (see docs/testing.md, \"Kubernetes in the lab\")";

/// The directory holding the lab's Kubernetes binaries, building them on
/// first use. `None` when the user gave neither binaries nor a source: what
/// needs the API server then skips (or fails in CI).
pub fn ensure() -> Result<Option<PathBuf>> {
    if let Some(dir) = std::env::var_os(BINARY_ENV) {
        let dir = PathBuf::from(dir);
        check_all_run(&dir).with_context(|| format!("{BINARY_ENV}={}", dir.display()))?;
        return Ok(Some(dir));
    }
    let Some(source) = std::env::var_os(SOURCE_ENV) else {
        return Ok(None);
    };
    let source = PathBuf::from(source);
    build_cached(&source)
        .with_context(|| format!("building Kubernetes from {SOURCE_ENV}={}", source.display()))
        .map(Some)
}

fn build_cached(source: &Path) -> Result<PathBuf> {
    ensure!(source.is_dir(), "not a directory");
    let started = Instant::now();
    for (file, expected) in SOURCE_FILES {
        let path = source.join(file);
        ensure!(path.is_file(), "{} is missing", path.display());
        let digest = sha256(&path)?;
        ensure!(
            digest == *expected,
            "{} has sha256 {digest}, expected {expected}: only Debian's \
             kubernetes 1.20.5+really1.20.2-1.1+deb12u1 is built",
            path.display()
        );
    }
    let orig_digest = SOURCE_FILES[0].1;
    let dir = weft_cache_dir()?
        .join("kubernetes")
        .join(format!("{RECIPE}-{}", &orig_digest[..16]));
    if check_all_run(&dir).is_ok() {
        println!(
            "setup: Kubernetes v1.20.2: {} (cached, checked in {:.1} s)",
            dir.display(),
            started.elapsed().as_secs_f64()
        );
        return Ok(dir);
    }
    ensure!(
        Path::new(REFLECT2_SOURCE).join("reflect2.go").is_file(),
        "{REFLECT2_SOURCE} is missing (apt-get install golang-github-modern-go-reflect2-dev)"
    );
    println!(
        "setup: building kube-apiserver, kube-controller-manager and kubectl v1.20.2 from {} \
         (5-10 minutes on 2 cores; once, then cached)",
        source.display()
    );
    let work = dir.join("build");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let built = build_in(source, &work, &dir);
    remove_build_tree(&work);
    built?;
    check_all_run(&dir)?;
    println!(
        "setup: Kubernetes v1.20.2: {} (built in {:.0} s)",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(dir)
}

fn build_in(source: &Path, work: &Path, out: &Path) -> Result<()> {
    run(Command::new("tar")
        .arg("-xzf")
        .arg(source.join(ORIG))
        .arg("-C")
        .arg(work))
    .context("unpacking the orig tarball")?;
    let tree = work.join("kubernetes-1.20.2");
    ensure!(
        tree.join("vendor").is_dir(),
        "{} has no vendor/ directory",
        tree.display()
    );
    // Debian's packaging and its patches, applied as dpkg-source would.
    run(Command::new("tar")
        .arg("-xJf")
        .arg(source.join(SOURCE_FILES[1].0))
        .arg("-C")
        .arg(&tree))
    .context("unpacking Debian's packaging")?;
    let series = std::fs::read_to_string(tree.join("debian/patches/series"))
        .context("reading debian/patches/series")?;
    for patch in series
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
    {
        run(Command::new("patch")
            .args(["-p1", "--quiet", "--input"])
            .arg(tree.join("debian/patches").join(patch))
            .current_dir(&tree))
        .with_context(|| format!("applying Debian's patch {patch}"))?;
    }
    replace_reflect2(&tree)?;

    // As debian/rules: GOPATH inside the tree, with k8s.io/kubernetes
    // pointing back at it; no cgo.
    let gopath = tree.join(".go");
    std::fs::create_dir_all(gopath.join("src/k8s.io"))?;
    std::os::unix::fs::symlink("../../..", gopath.join("src/k8s.io/kubernetes"))?;
    let path = format!(
        "{GO_BIN}:{}",
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    );
    let what = BINARIES
        .iter()
        .map(|binary| format!("cmd/{binary}"))
        .collect::<Vec<_>>()
        .join(" ");
    run(Command::new("make")
        .arg(format!("WHAT={what}"))
        .current_dir(&tree)
        .env("PATH", path)
        .env("GOPATH", &gopath)
        .env("GOCACHE", work.join("go-cache"))
        .env("GOPROXY", "off")
        .env("HOME", work)
        .env("CGO_ENABLED", "0")
        // Kubernetes' build otherwise asks git for its version.
        .env("KUBE_GIT_VERSION", "v1.20.2")
        .env("KUBE_GIT_TREE_STATE", "clean"))
    .context("`make` (are golang-1.19, rsync and make installed?)")?;
    for binary in BINARIES {
        let built = tree.join("_output/bin").join(binary);
        let unfinished = out.join(format!("{binary}.partial"));
        std::fs::copy(&built, &unfinished)
            .with_context(|| format!("copying {}", built.display()))?;
        std::fs::rename(&unfinished, out.join(binary))?;
    }
    Ok(())
}

/// Swaps the vendored reflect2 v1.0.1 for Debian's 1.0.2 (without its
/// go.mod: a vendored package has none).
fn replace_reflect2(tree: &Path) -> Result<()> {
    let vendored = tree.join("vendor/github.com/modern-go/reflect2");
    ensure!(
        vendored.is_dir(),
        "{} is missing: not the tree this recipe expects",
        vendored.display()
    );
    std::fs::remove_dir_all(&vendored)?;
    std::fs::create_dir_all(&vendored)?;
    for entry in std::fs::read_dir(REFLECT2_SOURCE)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "go.mod" || name == "go.sum" || !entry.file_type()?.is_file() {
            continue;
        }
        std::fs::copy(entry.path(), vendored.join(&name))?;
    }
    Ok(())
}

fn check_all_run(dir: &Path) -> Result<()> {
    for binary in BINARIES {
        let path = dir.join(binary);
        let flag = if *binary == "kubectl" {
            "version"
        } else {
            "--version"
        };
        let mut command = Command::new(&path);
        command.arg(flag);
        if *binary == "kubectl" {
            command.arg("--client");
        }
        let out = command
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", path.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !text.contains("v1.20.2") {
            bail!("`{} {flag}` did not report v1.20.2: {text}", path.display());
        }
    }
    Ok(())
}
