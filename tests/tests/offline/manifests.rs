//! deploy/kubernetes/weft-etcd.yaml: every object parses into the
//! Kubernetes API's own types (k8s-openapi) and serialises back to exactly
//! what the file says (so a misspelled field, which the types' Deserialize
//! would ignore, fails too); the DaemonSet is kube-flannel's shape; its
//! arguments and settings are ones `weft agent` accepts; its probes ask the
//! paths the agent serves, on the port the arguments give the agent.

use std::collections::{BTreeMap, BTreeSet};

use clap::Parser as _;
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Container, Namespace, ServiceAccount},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use weft_agent::{
    cli::{Cli, Command},
    http::{HEALTHZ_PATH, METRICS_PATH, READYZ_PATH},
};
use weft_tests::settings::check_agent_setting;

const MANIFEST: &str = include_str!("../../../deploy/kubernetes/weft-etcd.yaml");

struct Objects {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
}

/// `document` as `T`, checked to serialise back to the same value.
fn typed<T: DeserializeOwned + Serialize>(document: &Value) -> T {
    let object: T = serde_json::from_value(document.clone())
        .unwrap_or_else(|error| panic!("{}: {error}", describe(document)));
    let back = serde_json::to_value(&object).unwrap();
    assert_eq!(
        &back,
        document,
        "{}: fields the type does not know (misspelled?) were dropped",
        describe(document)
    );
    object
}

fn describe(document: &Value) -> String {
    format!("{} {}", document["kind"], document["metadata"]["name"])
}

fn objects() -> Objects {
    let mut objects = Objects {
        namespaces: Vec::new(),
        service_accounts: Vec::new(),
        config_maps: Vec::new(),
        daemon_sets: Vec::new(),
    };
    for document in serde_yaml_ng::Deserializer::from_str(MANIFEST) {
        let value: Value = serde::Deserialize::deserialize(document).unwrap();
        match value["kind"].as_str() {
            Some("Namespace") => objects.namespaces.push(typed(&value)),
            Some("ServiceAccount") => objects.service_accounts.push(typed(&value)),
            Some("ConfigMap") => objects.config_maps.push(typed(&value)),
            Some("DaemonSet") => objects.daemon_sets.push(typed(&value)),
            other => panic!("weft-etcd.yaml: unexpected object kind {other:?}: {value}"),
        }
    }
    objects
}

fn agent_container(daemon_set: &DaemonSet) -> &Container {
    let pod = daemon_set
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    pod.containers
        .iter()
        .find(|c| c.name == "weft")
        .expect("a container named weft")
}

#[test]
fn every_object_parses_into_its_kubernetes_type_without_unknown_fields() {
    let objects = objects();
    assert_eq!(objects.namespaces.len(), 1);
    assert_eq!(objects.service_accounts.len(), 1);
    assert_eq!(objects.config_maps.len(), 2);
    assert_eq!(objects.daemon_sets.len(), 1);
    let namespace = objects.namespaces[0].metadata.name.clone().unwrap();
    for metadata in objects
        .service_accounts
        .iter()
        .map(|o| &o.metadata)
        .chain(objects.config_maps.iter().map(|o| &o.metadata))
        .chain(objects.daemon_sets.iter().map(|o| &o.metadata))
    {
        assert_eq!(
            metadata.namespace.as_ref(),
            Some(&namespace),
            "{:?}",
            metadata.name
        );
    }
}

#[test]
fn the_daemonset_is_shaped_like_kube_flannels() {
    let objects = objects();
    let daemon_set = &objects.daemon_sets[0];
    let spec = daemon_set.spec.as_ref().unwrap();
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.as_ref().unwrap();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "the DaemonSet must tolerate every taint: {tolerations:?}"
    );
    let selector = spec.selector.match_labels.as_ref().unwrap();
    let labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    for (key, value) in selector {
        assert_eq!(
            labels.get(key),
            Some(value),
            "the selector does not match the pods"
        );
    }
    let account = pod.service_account_name.as_deref().unwrap();
    assert!(
        objects
            .service_accounts
            .iter()
            .any(|a| a.metadata.name.as_deref() == Some(account))
    );

    // Every mount has its volume; the host paths the agent works in.
    let volumes: BTreeMap<&str, _> = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| (v.name.as_str(), v))
        .collect();
    let init = pod.init_containers.as_ref().unwrap();
    for container in init.iter().chain(&pod.containers) {
        for mount in container.volume_mounts.as_ref().unwrap() {
            assert!(
                volumes.contains_key(mount.name.as_str()),
                "no volume {}",
                mount.name
            );
        }
    }
    let weft = agent_container(daemon_set);
    let mounts: BTreeMap<&str, _> = weft
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| (m.mount_path.as_str(), m))
        .collect();
    let host_path = |mount: &str| {
        let volume = volumes[mounts[mount].name.as_str()];
        volume.host_path.as_ref().map(|h| h.path.clone())
    };
    assert_eq!(host_path("/run/flannel").as_deref(), Some("/run/flannel"));
    assert_eq!(host_path("/sys/fs/bpf").as_deref(), Some("/sys/fs/bpf"));
    assert_eq!(
        mounts["/sys/fs/bpf"].mount_propagation.as_deref(),
        Some("Bidirectional"),
        "pins must outlive the container"
    );
    assert_eq!(host_path("/run/netns").as_deref(), Some("/run/netns"));
    // Bidirectional propagation is refused to unprivileged containers.
    assert_eq!(
        weft.security_context.as_ref().and_then(|s| s.privileged),
        Some(true)
    );

    // The CNI config init step copies the ConfigMap's cni-conf.json into
    // /etc/cni/net.d, and that file is a CNI config list naming flannel.
    let install = init
        .iter()
        .find(|c| {
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path == "/etc/cni/net.d")
        })
        .expect("an init container writing /etc/cni/net.d");
    let args = install.args.as_ref().unwrap();
    assert!(
        args.iter().any(|a| a.starts_with("/etc/cni/net.d/")),
        "{args:?}"
    );
    let cni = objects
        .config_maps
        .iter()
        .find_map(|c| c.data.as_ref()?.get("cni-conf.json"))
        .expect("a ConfigMap with cni-conf.json");
    let cni: Value = serde_json::from_str(cni).expect("cni-conf.json is JSON");
    assert_eq!(cni["plugins"][0]["type"], "flannel");
}

#[test]
fn the_agent_gets_settings_it_accepts_and_probes_ask_what_it_serves() {
    let objects = objects();
    let weft = agent_container(&objects.daemon_sets[0]);

    // The command line parses with the agent's own parser.
    let command_line: Vec<String> = std::iter::once("weft".to_owned())
        .chain(weft.args.clone().unwrap())
        .collect();
    let cli = Cli::try_parse_from(&command_line)
        .unwrap_or_else(|error| panic!("{command_line:?}: {error}"));
    let Command::Agent(agent) = cli.command else {
        panic!("the container does not run `weft agent`: {command_line:?}");
    };
    assert_eq!(
        weft.command.as_deref(),
        Some(&["/usr/bin/weft".to_owned()][..])
    );
    let port = agent.healthz_port;
    assert_ne!(port, 0, "--healthz-port is not set: no probes, no metrics");

    // Every ConfigMap the agent takes its environment from holds settings
    // the agent reads, with values it accepts.
    let config_maps: BTreeMap<&str, &ConfigMap> = objects
        .config_maps
        .iter()
        .map(|c| (c.metadata.name.as_deref().unwrap(), c))
        .collect();
    let mut settings = BTreeSet::new();
    for source in weft.env_from.as_ref().unwrap() {
        if let Some(reference) = &source.config_map_ref {
            let config_map = config_maps
                .get(reference.name.as_str())
                .unwrap_or_else(|| panic!("no ConfigMap {}", reference.name));
            for (name, value) in config_map.data.as_ref().unwrap() {
                let id = check_agent_setting(name, value)
                    .unwrap_or_else(|error| panic!("ConfigMap {}: {error:#}", reference.name));
                settings.insert(id);
            }
        }
    }
    assert!(settings.contains("etcd_endpoints"), "{settings:?}");

    // The probes and the metrics port.
    let ports: BTreeMap<&str, i32> = weft
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.name.as_deref().unwrap_or_default(), p.container_port))
        .collect();
    assert_eq!(ports.get("metrics"), Some(&i32::from(port)), "{ports:?}");
    let probe_port = |port: &IntOrString| match port {
        IntOrString::Int(number) => *number,
        IntOrString::String(name) => *ports
            .get(name.as_str())
            .unwrap_or_else(|| panic!("no container port named {name}")),
    };
    for (probe, path) in [
        (&weft.readiness_probe, READYZ_PATH),
        (&weft.liveness_probe, HEALTHZ_PATH),
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(probe_port(&get.port), i32::from(port));
    }
    assert_eq!(METRICS_PATH, "/metrics", "Prometheus' default scrape path");

    // The endpoint listens on the node's own address (where kubelet probes
    // a hostNetwork pod and Prometheus scrapes), not on every address.
    let listen = weft
        .env
        .iter()
        .flatten()
        .find(|var| var.name == "WEFT_HEALTHZ_IP")
        .expect("WEFT_HEALTHZ_IP in the container's env");
    let field = listen
        .value_from
        .as_ref()
        .and_then(|from| from.field_ref.as_ref())
        .map(|field| field.field_path.as_str());
    assert_eq!(field, Some("status.hostIP"), "{listen:?}");
    assert!(
        !command_line
            .iter()
            .any(|arg| arg.starts_with("--healthz-ip")),
        "--healthz-ip on the command line overrides WEFT_HEALTHZ_IP: {command_line:?}"
    );
}

/// The image `cargo xtask image` builds is `localhost/weft:<version>` with
/// `/usr/bin/weft` as its entrypoint (tests/tests/image.rs checks the
/// archive's side): the agent and the CNI config step both run it, at this
/// build's version, as the binary the image has.
#[test]
fn the_daemonset_runs_the_image_cargo_xtask_image_builds() {
    let version = <Cli as clap::CommandFactory>::command()
        .get_version()
        .expect("weft has a version")
        .to_owned();
    let expected = format!("localhost/weft:{version}");
    let objects = objects();
    let pod = objects.daemon_sets[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let weft_containers: Vec<&Container> = pod
        .init_containers
        .iter()
        .flatten()
        .chain(&pod.containers)
        .filter(|c| {
            c.image
                .as_deref()
                .is_some_and(|image| !image.contains("flannel-cni-plugin"))
        })
        .collect();
    assert_eq!(weft_containers.len(), 2, "the agent and install-cni");
    for container in weft_containers {
        assert_eq!(
            container.image.as_deref(),
            Some(expected.as_str()),
            "{}",
            container.name
        );
        // Imported on the node or pushed under another name: never pulled
        // as `latest`.
        assert_eq!(
            container.image_pull_policy.as_deref(),
            Some("IfNotPresent"),
            "{}",
            container.name
        );
    }
    let weft = agent_container(&objects.daemon_sets[0]);
    assert_eq!(
        weft.command.as_deref(),
        Some(["/usr/bin/weft".to_owned()].as_slice()),
        "the agent's command is the image's entrypoint"
    );
}
