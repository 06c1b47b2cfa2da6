//! `cargo xtask image`: the node image the DaemonSets run, as an OCI archive.
//! Two layers: Debian's packages weft runs with (`base`, cached by its
//! inputs) and the release binary with its copyright; a config with the
//! entrypoint, root as the user (the DaemonSet's agent is privileged: it
//! loads eBPF programs and edits nftables) and the OCI labels. Written by
//! `oci`, without a container engine, so the same inputs give the same
//! digest.

mod base;
mod oci;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::{
    build::{target_dir, workspace_root},
    package,
};
use oci::Blob;

/// The name the archive carries, which the DaemonSets reference: what
/// `ctr -n k8s.io image import` and `podman load` name the image on a node,
/// and what `skopeo copy` pushes from (docs/operating.md, "The node image").
pub const REPOSITORY: &str = "localhost/weft";
/// Where the agent is, in the image and in the DaemonSets' `command`.
const BINARY: &str = "usr/bin/weft";
const COPYRIGHT: &str = "packaging/copyright";
/// Overrides the `org.opencontainers.image.source` label (by default the
/// git remote `origin`, else the work tree's path).
pub const SOURCE_ENV: &str = "WEFT_IMAGE_SOURCE";

/// Where `cargo xtask image` writes the archive by default.
pub fn image_dir() -> PathBuf {
    target_dir().join("image")
}

/// Builds `<out_dir>/weft_<version>_<arch>.oci.tar` from `binary` (a release
/// build of the agent) and returns its path.
pub fn build(binary: &Path, out_dir: &Path) -> Result<PathBuf> {
    let version = package::binary_version(binary)?;
    let arch = package::architecture()?;
    let revision = revision()?;
    let created = source_date_epoch()?;
    let base = base::ensure(&arch)?;
    let weft = weft_layer(binary, created)?;

    let name = format!("{REPOSITORY}:{version}");
    let labels = labels(&version, &revision, created)?;
    let config = Blob::json(&json!({
        "created": rfc3339(created)?,
        "architecture": arch,
        "os": "linux",
        "config": {
            "User": "0:0",
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Entrypoint": [format!("/{BINARY}")],
            "Cmd": ["agent"],
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": [base.layer.diff_id, weft.diff_id],
        },
        "history": [
            {
                "created": rfc3339(base::epoch_of(&base.archive_date)?)?,
                "created_by": base::recipe(),
                "comment": format!("Debian archive of {}; packages:\n{}", base.archive_date, base.packages),
            },
            {
                "created": rfc3339(created)?,
                "created_by": format!("cargo xtask image: /{BINARY} (weft {version}, {revision})"),
            },
        ],
    }))?;
    let manifest = Blob::json(&json!({
        "schemaVersion": 2,
        "mediaType": oci::MANIFEST_MEDIA_TYPE,
        "config": config.descriptor(oci::CONFIG_MEDIA_TYPE),
        "layers": [
            base.layer.descriptor(oci::LAYER_MEDIA_TYPE),
            weft.descriptor(oci::LAYER_MEDIA_TYPE),
        ],
        "annotations": labels,
    }))?;
    let mut entry = manifest.descriptor(oci::MANIFEST_MEDIA_TYPE);
    entry["platform"] = json!({"architecture": arch, "os": "linux"});
    entry["annotations"] = json!({
        // Read by skopeo and podman (the OCI name) and by containerd.
        "org.opencontainers.image.ref.name": name,
        "io.containerd.image.name": name,
    });
    let index = json!({
        "schemaVersion": 2,
        "mediaType": oci::INDEX_MEDIA_TYPE,
        "manifests": [entry],
    });

    fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let archive = out_dir.join(format!("weft_{version}_{arch}.oci.tar"));
    oci::write_archive(
        &archive,
        &index,
        &[&base.layer, &weft, &config, &manifest],
        created,
    )?;
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    println!(
        "image: {name} {} ({:.1} MiB unpacked: base {:.1}, weft {:.1}; {:.1} MiB compressed)",
        manifest.digest,
        mib(base.layer.tar_size + weft.tar_size),
        mib(base.layer.tar_size),
        mib(weft.tar_size),
        mib(base.layer.size + weft.size),
    );
    Ok(archive)
}

/// The binary and its copyright, owned by root, read-only but for the
/// owner: the layer is the same whoever builds it.
fn weft_layer(binary: &Path, mtime: u64) -> Result<Blob> {
    let executable =
        fs::read(binary).with_context(|| format!("cannot read {}", binary.display()))?;
    let copyright = fs::read(workspace_root().join(COPYRIGHT))
        .with_context(|| format!("cannot read {COPYRIGHT}"))?;
    let mut tar = tar::Builder::new(Vec::new());
    oci::file_entry(&mut tar, BINARY, 0o755, mtime, &executable)?;
    oci::directory(&mut tar, "usr/share/doc/weft/", mtime)?;
    oci::file_entry(
        &mut tar,
        "usr/share/doc/weft/copyright",
        0o644,
        mtime,
        &copyright,
    )?;
    Blob::gzip_tar(&tar.into_inner()?)
}

/// The OCI annotations, as labels on the config and annotations on the
/// manifest.
fn labels(version: &str, revision: &str, created: u64) -> Result<Value> {
    Ok(json!({
        "org.opencontainers.image.title": "weft",
        "org.opencontainers.image.description": "flannel-compatible overlay network agent with an eBPF fast path",
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.source": source()?,
        "org.opencontainers.image.licenses": "MIT OR Apache-2.0",
        "org.opencontainers.image.created": rfc3339(created)?,
    }))
}

/// The commit the binary was built from; `-dirty` when the work tree has
/// changes git would commit (the binary may then differ from the commit's).
fn revision() -> Result<String> {
    let commit = git(&["rev-parse", "HEAD"])?;
    let changes = git(&["status", "--porcelain", "--untracked-files=no"])?;
    Ok(if changes.is_empty() {
        commit
    } else {
        format!("{commit}-dirty")
    })
}

fn source() -> Result<String> {
    if let Some(source) = std::env::var_os(SOURCE_ENV) {
        return Ok(source.to_string_lossy().into_owned());
    }
    match git(&["remote", "get-url", "origin"]) {
        Ok(url) if !url.is_empty() => Ok(url),
        _ => Ok(format!("file://{}", workspace_root().display())),
    }
}

/// SOURCE_DATE_EPOCH when set, else the commit's time: every time stamp in
/// the image (file times, `created`) is this one.
fn source_date_epoch() -> Result<u64> {
    if let Some(value) = std::env::var_os("SOURCE_DATE_EPOCH") {
        let value = value.to_string_lossy();
        return value
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={value:?} is not a number of seconds"));
    }
    let time = git(&["log", "-1", "--format=%ct"])?;
    time.parse()
        .with_context(|| format!("git log printed the commit time {time:?}"))
}

fn rfc3339(epoch: impl std::fmt::Display) -> Result<String> {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{epoch}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .context("cannot run date")?;
    if !out.status.success() {
        bail!("date -d @{epoch} failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn git(args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(workspace_root())
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn cache_root() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    Ok(base.join("weft").join("image"))
}
