//! The node image (`cargo xtask image`): an OCI archive that skopeo reads
//! (as `podman load` and `ctr image import` do, through the same image
//! layout), named as the DaemonSet references it, labelled, with weft as
//! its entrypoint, inside the size budget; and its own root filesystem runs
//! `weft --version`, `weft agent --help` and nft (which programs a real
//! table in a throw-away network namespace), with nothing a node agent does
//! not need (no shell, no package manager, no compiler).
//!
//! `cargo xtask test` builds the image and passes it in `WEFT_IMAGE`; run
//! alone, the test takes the one in target/image (`cargo xtask image`).

// Each integration test is its own crate and sees every dependency of the
// package; the lint is for the library.
#![allow(unused_crate_dependencies)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;
use weft_tests::privileged_test;

const MANIFEST: &str = include_str!("../../deploy/kubernetes/weft-etcd.yaml");
/// The image unpacked, in bytes: the goal is a node image under 100 MB.
const SIZE_BUDGET: u64 = 100 * 1000 * 1000;

fn image() -> PathBuf {
    if let Some(image) = std::env::var_os("WEFT_IMAGE") {
        return PathBuf::from(image);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/image");
    let archives: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| path.to_string_lossy().ends_with(".oci.tar"))
                .collect()
        })
        .unwrap_or_default();
    match archives.as_slice() {
        [archive] => archive.clone(),
        _ => panic!(
            "no single .oci.tar in {} ({archives:?}) and WEFT_IMAGE unset: run `cargo xtask image` \
             (`cargo xtask test` builds it and sets WEFT_IMAGE)",
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

fn run(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn skopeo_json(args: &[&str]) -> Value {
    serde_json::from_str(&run(Command::new("skopeo").args(args))).unwrap()
}

fn transport() -> String {
    format!("oci-archive:{}", image().display())
}

/// The archive's own index.json, as the OCI image layout has it.
fn index() -> Value {
    let text = run(Command::new("tar")
        .arg("-xOf")
        .arg(image())
        .arg("index.json"));
    serde_json::from_str(&text).unwrap()
}

/// Every `image:` the DaemonSet names for weft (the agent and its
/// install-cni step).
fn daemonset_images() -> Vec<String> {
    MANIFEST
        .lines()
        .filter_map(|line| line.trim().strip_prefix("image: "))
        .filter(|image| !image.contains("flannel-cni-plugin"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_archive_is_an_oci_image_named_labelled_and_started_as_the_daemonset_expects() {
    let index = index();
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "one image in the archive: {index}");
    let name = manifests[0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .unwrap();
    assert_eq!(
        manifests[0]["annotations"]["io.containerd.image.name"], name,
        "containerd's name and the OCI name differ"
    );
    let images = daemonset_images();
    assert_eq!(images.len(), 2, "the agent and install-cni: {images:?}");
    for image in &images {
        assert_eq!(
            image, name,
            "the DaemonSet runs {image}, the archive is {name}"
        );
    }

    // skopeo reads the archive as an image (manifest, config, layers).
    let inspect = skopeo_json(&["inspect", &transport()]);
    let labels = &inspect["Labels"];
    let version = labels["org.opencontainers.image.version"].as_str().unwrap();
    assert_eq!(
        name,
        format!("localhost/weft:{version}"),
        "the name's tag is the version"
    );
    let revision = labels["org.opencontainers.image.revision"]
        .as_str()
        .unwrap();
    let commit = revision.trim_end_matches("-dirty");
    assert!(
        commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "revision label {revision:?} is not a git commit"
    );
    for label in [
        "org.opencontainers.image.source",
        "org.opencontainers.image.title",
        "org.opencontainers.image.licenses",
        "org.opencontainers.image.created",
    ] {
        assert!(
            labels[label].as_str().is_some_and(|value| !value.is_empty()),
            "no {label} label: {labels}"
        );
    }
    assert_eq!(inspect["Os"], "linux");
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 2);

    let config = skopeo_json(&["inspect", "--config", &transport()]);
    let process = &config["config"];
    assert_eq!(process["Entrypoint"], serde_json::json!(["/usr/bin/weft"]));
    assert_eq!(process["Cmd"], serde_json::json!(["agent"]));
    // Root, as the DaemonSet's privileged agent runs.
    assert_eq!(process["User"], "0:0");
    // The DaemonSet's command is the entrypoint.
    assert!(
        MANIFEST.contains("          command:\n            - /usr/bin/weft\n"),
        "the DaemonSet's agent command is not the image's entrypoint /usr/bin/weft"
    );
}

#[test]
fn the_image_is_inside_its_size_budget() {
    let manifest = skopeo_json(&["inspect", "--raw", &transport()]);
    let config = skopeo_json(&["inspect", "--config", &transport()]);
    let compressed: Vec<u64> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|layer| layer["size"].as_u64().unwrap())
        .collect();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(diff_ids.len(), compressed.len());

    // The unpacked size is what a node stores: each layer's tar.
    let dir = TempDir::new("image-size");
    let layers = copied_layers(&dir.0);
    let unpacked: Vec<u64> = layers
        .iter()
        .map(|layer| {
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("gzip -dc '{}' | wc -c", layer.display()))
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        })
        .collect();
    let mb = |bytes: u64| bytes as f64 / 1e6;
    let total: u64 = unpacked.iter().sum();
    eprintln!(
        "image: {:.1} MB unpacked (base {:.1} MB, weft {:.1} MB), {:.1} MB compressed",
        mb(total),
        mb(unpacked[0]),
        mb(unpacked[1]),
        mb(compressed.iter().sum())
    );
    assert!(
        total < SIZE_BUDGET,
        "the image unpacks to {:.1} MB, over the {:.0} MB budget",
        mb(total),
        mb(SIZE_BUDGET)
    );
}

/// The archive's layers in order, copied out by skopeo (`dir:` transport),
/// as a container engine pulls them.
fn copied_layers(dir: &Path) -> Vec<PathBuf> {
    let copy = dir.join("copy");
    run(Command::new("skopeo")
        .args(["copy", "--quiet", &transport()])
        .arg(format!("dir:{}", copy.display())));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(copy.join("manifest.json")).unwrap()).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|layer| {
            let digest = layer["digest"].as_str().unwrap();
            copy.join(digest.trim_start_matches("sha256:"))
        })
        .collect()
}

/// Runs `args` in the image's root as the image's user, with the image's
/// environment only.
fn in_image(root: &Path, config: &Value, args: &[&str]) -> std::process::Output {
    let user = config["config"]["User"].as_str().unwrap();
    let env: Vec<&str> = config["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|value| value.as_str().unwrap())
        .collect();
    Command::new("chroot")
        .arg(format!("--userspec={user}"))
        .arg(root)
        .args(args)
        .env_clear()
        .envs(env.iter().filter_map(|pair| pair.split_once('=')))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn succeeds_in_image(root: &Path, config: &Value, args: &[&str]) -> String {
    let out = in_image(root, config, args);
    assert!(
        out.status.success(),
        "{args:?} in the image failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_images_root_runs_weft_and_nft_and_holds_nothing_else_to_run() {
    // chroot and a network namespace need root.
    let Some(_guard) =
        privileged_test("the_images_root_runs_weft_and_nft_and_holds_nothing_else_to_run")
    else {
        return;
    };
    let dir = TempDir::new("image-root");
    let root = dir.0.join("root");
    std::fs::create_dir_all(&root).unwrap();
    for layer in copied_layers(&dir.0) {
        run(Command::new("tar")
            .arg("-xzf")
            .arg(&layer)
            .arg("-C")
            .arg(&root)
            .arg("--numeric-owner"));
    }
    let config = skopeo_json(&["inspect", "--config", &transport()]);
    let entrypoint = config["config"]["Entrypoint"][0].as_str().unwrap();
    let version = config["config"]["Labels"]["org.opencontainers.image.version"]
        .as_str()
        .unwrap();

    let printed = succeeds_in_image(&root, &config, &[entrypoint, "--version"]);
    assert_eq!(printed.trim(), format!("weft {version}"));
    let help = succeeds_in_image(&root, &config, &[entrypoint, "agent", "--help"]);
    assert!(
        help.contains("--etcd-endpoints"),
        "weft agent --help in the image: {help}"
    );
    let nft = succeeds_in_image(&root, &config, &["nft", "--version"]);
    assert!(nft.starts_with("nftables v1."), "nft --version: {nft}");
    // `weft status` runs ip; the DaemonSet's install-cni step runs cp.
    succeeds_in_image(&root, &config, &["ip", "-V"]);
    succeeds_in_image(&root, &config, &["cp", "--version"]);

    // nft from the image programs the kernel as the agent does (`nft -f -`),
    // in a network namespace of its own that goes away with the process.
    let ruleset = "table inet t-img { chain c { type filter hook forward priority 0; ct state established accept; } }\n";
    let script = format!(
        "printf '%s' '{ruleset}' | chroot --userspec=0:0 {root} nft -f - && chroot {root} nft list table inet t-img",
        root = root.display()
    );
    let listed = run(Command::new("unshare")
        .args(["--net", "sh", "-c", &script])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"));
    assert!(
        listed.contains("ct state established accept"),
        "nft list in the image's nft: {listed}"
    );

    // Nothing to run but what weft needs: no shell, no package manager, no
    // compiler.
    for absent in [
        "bin/sh",
        "bin/bash",
        "usr/bin/apt",
        "usr/bin/dpkg",
        "usr/bin/perl",
        "usr/bin/gcc",
        "usr/bin/cc",
    ] {
        assert!(
            std::fs::symlink_metadata(root.join(absent)).is_err(),
            "the image has /{absent}"
        );
    }
    // What is installed is listed for scanners, and includes what runs.
    let status_d = root.join("var/lib/dpkg/status.d");
    for package in ["nftables", "iproute2", "libc6", "libgcc-s1"] {
        let stanza = std::fs::read_to_string(status_d.join(package))
            .unwrap_or_else(|error| panic!("/var/lib/dpkg/status.d/{package}: {error}"));
        assert!(stanza.contains("\nVersion: "), "{package}: {stanza}");
    }
    // The agent's binary is root's, and not writable by anyone else.
    let meta = std::fs::metadata(root.join(entrypoint.trim_start_matches('/'))).unwrap();
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
}
