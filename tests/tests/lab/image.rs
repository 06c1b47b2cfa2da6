//! The node image (`cargo xtask image`): an OCI archive that skopeo reads,
//! named as the DaemonSet references it, labelled, with weft as its
//! entrypoint, inside the size budget, holding nothing a node agent does
//! not run (no shell, no package manager, no compiler); and containerd (a
//! node's runtime) imports it under the DaemonSet's name and runs
//! `weft --version`, `weft agent --help` and nft in it, nft programming a
//! real table in the container's own network namespace.
//!
//! `cargo xtask test` builds the image and passes it in `WEFT_IMAGE`; run
//! alone, the test takes the one in target/image (`cargo xtask image`).
//!
//! With `nftables` left out of the base, the contents and containerd tests
//! fail (checked by hand).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;
use weft_tests::{containerd::Containerd, privileged};

const MANIFEST: &str = include_str!("../../../deploy/kubernetes/weft-etcd.yaml");
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
            labels[label]
                .as_str()
                .is_some_and(|value| !value.is_empty()),
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

/// Every entry of the image's layers as `tar -tv` lists it (mode, owner,
/// path), read from the layers skopeo copies out.
fn listing() -> Vec<String> {
    let dir = TempDir::new("image-listing");
    let mut entries = Vec::new();
    for layer in copied_layers(&dir.0) {
        let listed = run(Command::new("tar")
            .args(["-tvzf"])
            .arg(&layer)
            .arg("--numeric-owner"));
        entries.extend(listed.lines().map(str::to_owned));
    }
    entries
}

fn path_of(entry: &str) -> &str {
    let path = entry.split_whitespace().nth(5).unwrap_or_default();
    path.trim_start_matches("./")
}

#[test]
fn the_image_holds_nothing_to_run_but_weft_nft_ip_and_cp() {
    let entries = listing();
    let paths: Vec<&str> = entries.iter().map(|entry| path_of(entry)).collect();
    for present in [
        "usr/bin/weft",
        "usr/sbin/nft",
        "usr/sbin/iptables-nft-save",
        "bin/ip",
        "bin/cp",
        "usr/share/doc/weft/copyright",
    ] {
        assert!(paths.contains(&present), "the image lacks /{present}");
    }
    // No shell, no package manager, no interpreter, no compiler.
    for absent in [
        "bin/sh",
        "bin/bash",
        "bin/dash",
        "usr/bin/apt",
        "usr/bin/apt-get",
        "usr/bin/dpkg",
        "usr/bin/perl",
        "usr/bin/python3",
        "usr/bin/gcc",
        "usr/bin/cc",
    ] {
        assert!(!paths.contains(&absent), "the image has /{absent}");
    }
    // Everything is root's; the agent's binary is writable by root alone,
    // and nothing is set-uid.
    for entry in &entries {
        let mut fields = entry.split_whitespace();
        let (mode, owner) = (fields.next().unwrap(), fields.next().unwrap());
        assert_eq!(owner, "0/0", "not root's: {entry}");
        assert!(
            !mode.contains('s') && !mode.contains('S'),
            "set-uid or set-gid: {entry}"
        );
    }
    let weft = entries
        .iter()
        .find(|entry| path_of(entry) == "usr/bin/weft")
        .unwrap();
    assert!(weft.starts_with("-rwxr-xr-x "), "{weft}");
    // What is installed is listed for scanners, package by package.
    for package in ["nftables", "iproute2", "libc6", "libgcc-s1", "coreutils"] {
        let stanza = format!("var/lib/dpkg/status.d/{package}");
        assert!(
            paths.contains(&stanza.as_str()),
            "the image lacks /{stanza}"
        );
    }
}

/// `ctr run` of the imported image: output and success.
fn ctr_run(containerd: &Containerd, name: &str, options: &[&str], args: &[&str]) -> String {
    let id = format!("t-img-{}", std::process::id());
    let mut command = containerd.ctr(&["run", "--rm"]);
    command
        .args(options)
        .args([name, id.as_str()])
        .args(args)
        .stdin(Stdio::null());
    run(&mut command)
}

#[test]
fn containerd_imports_the_image_under_the_daemonsets_name_and_runs_weft_and_nft_in_it() {
    // containerd, its containers and their namespaces need root.
    let _guard = privileged!(
        "containerd_imports_the_image_under_the_daemonsets_name_and_runs_weft_and_nft_in_it"
    );
    let dir = TempDir::new("t-img-containerd");
    let containerd = Containerd::start(&dir.0.join("containerd")).unwrap();
    let archive = image();
    let imported = run(containerd.ctr(&["image", "import"]).arg(&archive));
    let name = daemonset_images().remove(0);
    assert!(
        imported.contains(&name),
        "ctr image import did not name the image {name}: {imported}"
    );
    let listed = run(&mut containerd.ctr(&["image", "ls", "--quiet"]));
    assert!(
        listed.lines().any(|line| line == name),
        "after the import, containerd has {listed}"
    );
    let config = skopeo_json(&["inspect", "--config", &transport()]);
    let entrypoint = config["config"]["Entrypoint"][0].as_str().unwrap();
    let version = config["config"]["Labels"]["org.opencontainers.image.version"]
        .as_str()
        .unwrap();

    // In a container of the image, run by runc as on a node.
    let printed = ctr_run(&containerd, &name, &[], &[entrypoint, "--version"]);
    assert_eq!(printed.trim(), format!("weft {version}"));
    let help = ctr_run(&containerd, &name, &[], &[entrypoint, "agent", "--help"]);
    assert!(
        help.contains("--etcd-endpoints"),
        "weft agent --help in the image: {help}"
    );
    let nft = ctr_run(&containerd, &name, &[], &["nft", "--version"]);
    assert!(nft.starts_with("nftables v1."), "nft --version: {nft}");
    // `weft status` runs ip; the DaemonSet's install-cni step runs cp.
    ctr_run(&containerd, &name, &[], &["ip", "-V"]);
    ctr_run(&containerd, &name, &[], &["cp", "--version"]);

    // The image's nft programs the kernel, privileged as the DaemonSet's
    // agent is, in the container's own network namespace (gone with it):
    // `--echo --handle` prints each addition back as the kernel confirmed
    // it, with the handle the kernel gave it.
    let echoed = ctr_run(
        &containerd,
        &name,
        &["--privileged"],
        &[
            "nft",
            "--echo",
            "--handle",
            "add table inet t_img; \
             add chain inet t_img forward { type filter hook forward priority 0; }; \
             add rule inet t_img forward ct state established accept",
        ],
    );
    assert!(
        echoed
            .lines()
            .any(|line| line.contains("ct state established accept # handle")),
        "the kernel did not confirm nft's rule: {echoed}"
    );
}
