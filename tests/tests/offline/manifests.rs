//! deploy/kubernetes/: weft-etcd.yaml (etcd mode), weft.yaml (kube mode) and
//! weft-cleanup.yaml. Every object parses into the Kubernetes API's own
//! types (k8s-openapi) and serialises back to exactly what the file says (so
//! a misspelled field, which the types' Deserialize would ignore, fails
//! too); the DaemonSets are kube-flannel's shape; their arguments and
//! settings are ones `weft agent` accepts; their probes ask the paths the
//! agent serves, on the port the arguments give the agent; kube mode has
//! kube-flannel.yml's RBAC and ConfigMap, and a net-conf.json the agent's
//! own parser accepts. tests/tests/lab/kube_manifests.rs creates them on a real
//! kube-apiserver.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use clap::Parser as _;
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        batch::v1::Job,
        core::v1::{ConfigMap, Container, Namespace, PodSpec, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use weft_agent::{
    cli::{AgentArgs, Cli, Command},
    config::NetworkConfig,
    http::{HEALTHZ_PATH, METRICS_PATH, READYZ_PATH},
};
use weft_tests::{kube, settings::check_agent_setting};

const ETCD_MODE: Manifest = Manifest {
    file: "weft-etcd.yaml",
    text: include_str!("../../../deploy/kubernetes/weft-etcd.yaml"),
};
const KUBE_MODE: Manifest = Manifest {
    file: "weft.yaml",
    text: include_str!("../../../deploy/kubernetes/weft.yaml"),
};
const CLEANUP: Manifest = Manifest {
    file: "weft-cleanup.yaml",
    text: include_str!("../../../deploy/kubernetes/weft-cleanup.yaml"),
};
/// The node agents' manifests.
const DAEMON_SETS: [Manifest; 2] = [ETCD_MODE, KUBE_MODE];
/// The capabilities the systemd unit keeps, with the reasons next to them.
const UNIT: &str = include_str!("../../../packaging/weft.service");
/// Environment a DaemonSet gives the agent that is not a `weft agent` flag:
/// the node's and pod's names (read by the kube subnet manager) and the
/// log filter.
const NON_FLAG_ENV: [&str; 4] = ["NODE_NAME", "POD_NAME", "POD_NAMESPACE", "RUST_LOG"];

#[derive(Clone, Copy)]
struct Manifest {
    file: &'static str,
    text: &'static str,
}

#[derive(Default)]
struct Objects {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
    jobs: Vec<Job>,
}

impl Objects {
    fn daemon_set(&self) -> &DaemonSet {
        assert_eq!(self.daemon_sets.len(), 1);
        &self.daemon_sets[0]
    }

    fn config_map(&self, name: &str) -> &ConfigMap {
        self.config_maps
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no ConfigMap {name}"))
    }
}

/// `document` as `T`, checked to serialise back to the same value.
fn typed<T: DeserializeOwned + Serialize>(file: &str, document: &Value) -> T {
    let object: T = serde_json::from_value(document.clone())
        .unwrap_or_else(|error| panic!("{file}: {}: {error}", describe(document)));
    let back = serde_json::to_value(&object).unwrap();
    assert_eq!(
        &back,
        document,
        "{file}: {}: fields the type does not know (misspelled?) were dropped",
        describe(document)
    );
    object
}

fn describe(document: &Value) -> String {
    format!("{} {}", document["kind"], document["metadata"]["name"])
}

fn objects(manifest: Manifest) -> Objects {
    let file = manifest.file;
    let mut objects = Objects::default();
    for document in serde_yaml_ng::Deserializer::from_str(manifest.text) {
        let value: Value = serde::Deserialize::deserialize(document).unwrap();
        match value["kind"].as_str() {
            Some("Namespace") => objects.namespaces.push(typed(file, &value)),
            Some("ServiceAccount") => objects.service_accounts.push(typed(file, &value)),
            Some("ClusterRole") => objects.cluster_roles.push(typed(file, &value)),
            Some("ClusterRoleBinding") => objects.cluster_role_bindings.push(typed(file, &value)),
            Some("ConfigMap") => objects.config_maps.push(typed(file, &value)),
            Some("DaemonSet") => objects.daemon_sets.push(typed(file, &value)),
            Some("Job") => objects.jobs.push(typed(file, &value)),
            other => panic!("{file}: unexpected object kind {other:?}: {value}"),
        }
    }
    objects
}

fn pod_spec(daemon_set: &DaemonSet) -> &PodSpec {
    daemon_set
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
}

fn agent_container(daemon_set: &DaemonSet) -> &Container {
    pod_spec(daemon_set)
        .containers
        .iter()
        .find(|c| c.name == "weft")
        .expect("a container named weft")
}

/// The container's command line, parsed by the agent's own parser.
fn parsed_command_line(container: &Container) -> (Vec<String>, Cli) {
    let command_line: Vec<String> = std::iter::once("weft".to_owned())
        .chain(container.args.clone().unwrap_or_default())
        .collect();
    let cli = Cli::try_parse_from(&command_line)
        .unwrap_or_else(|error| panic!("{command_line:?}: {error}"));
    (command_line, cli)
}

fn agent_args(daemon_set: &DaemonSet) -> Box<AgentArgs> {
    let (command_line, cli) = parsed_command_line(agent_container(daemon_set));
    match cli.command {
        Command::Agent(agent) => agent,
        _ => panic!("the container does not run `weft agent`: {command_line:?}"),
    }
}

/// The capabilities packaging/weft.service keeps, as Kubernetes names them.
fn unit_capabilities() -> BTreeSet<String> {
    let line = UNIT
        .lines()
        .find_map(|line| line.strip_prefix("CapabilityBoundingSet="))
        .expect("weft.service has a CapabilityBoundingSet");
    line.split_whitespace()
        .map(|cap| cap.strip_prefix("CAP_").unwrap().to_owned())
        .collect()
}

#[test]
fn every_object_parses_into_its_kubernetes_type_without_unknown_fields() {
    // (namespaces, service accounts, cluster roles, bindings, config maps,
    // daemon sets, jobs)
    for (manifest, counts) in [
        (ETCD_MODE, [1, 1, 0, 0, 2, 1, 0]),
        (KUBE_MODE, [1, 1, 1, 1, 1, 1, 0]),
        (CLEANUP, [0, 0, 0, 0, 0, 0, 1]),
    ] {
        let objects = objects(manifest);
        assert_eq!(
            [
                objects.namespaces.len(),
                objects.service_accounts.len(),
                objects.cluster_roles.len(),
                objects.cluster_role_bindings.len(),
                objects.config_maps.len(),
                objects.daemon_sets.len(),
                objects.jobs.len(),
            ],
            counts,
            "{}",
            manifest.file
        );
        for metadata in objects
            .service_accounts
            .iter()
            .map(|o| &o.metadata)
            .chain(objects.config_maps.iter().map(|o| &o.metadata))
            .chain(objects.daemon_sets.iter().map(|o| &o.metadata))
            .chain(objects.jobs.iter().map(|o| &o.metadata))
        {
            assert_eq!(
                metadata.namespace.as_deref(),
                Some(kube::AGENT_NAMESPACE),
                "{}: {:?}",
                manifest.file,
                metadata.name
            );
        }
        for namespace in &objects.namespaces {
            assert_eq!(
                namespace.metadata.name.as_deref(),
                Some(kube::AGENT_NAMESPACE)
            );
        }
    }
}

#[test]
fn the_daemonsets_are_shaped_like_kube_flannels() {
    for manifest in DAEMON_SETS {
        let file = manifest.file;
        let objects = objects(manifest);
        let daemon_set = objects.daemon_set();
        let spec = daemon_set.spec.as_ref().unwrap();
        let pod = pod_spec(daemon_set);
        assert_eq!(pod.host_network, Some(true), "{file}");
        assert_eq!(
            pod.priority_class_name.as_deref(),
            Some("system-node-critical"),
            "{file}"
        );
        let tolerations = pod.tolerations.as_ref().unwrap();
        assert!(
            tolerations
                .iter()
                .any(|t| t.operator.as_deref() == Some("Exists")
                    && t.key.is_none()
                    && t.effect.is_none()),
            "{file}: the DaemonSet must tolerate every taint: {tolerations:?}"
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
                "{file}: the selector does not match the pods"
            );
        }
        let account = pod.service_account_name.as_deref().unwrap();
        assert!(
            objects
                .service_accounts
                .iter()
                .any(|a| a.metadata.name.as_deref() == Some(account)),
            "{file}: no ServiceAccount {account}"
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
                    "{file}: no volume {}",
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
        assert_eq!(host_path("/run/netns").as_deref(), Some("/run/netns"));
        // Pins are made on the host's bpffs, so they outlive the container;
        // pod namespaces made after the agent started show up in it.
        for path in ["/sys/fs/bpf", "/run/netns"] {
            assert!(
                matches!(
                    mounts[path].mount_propagation.as_deref(),
                    Some("HostToContainer" | "Bidirectional")
                ),
                "{file}: {path} must see the host's later mounts"
            );
        }

        // Either privileged (which Bidirectional propagation needs), or
        // exactly the capabilities the systemd unit keeps.
        let security = weft.security_context.as_ref().unwrap();
        let bidirectional = mounts
            .values()
            .any(|m| m.mount_propagation.as_deref() == Some("Bidirectional"));
        if security.privileged == Some(true) {
            assert!(
                bidirectional,
                "{file}: privileged, but nothing needs it (no Bidirectional mount)"
            );
        } else {
            assert!(
                !bidirectional,
                "{file}: Bidirectional propagation is refused to an unprivileged container"
            );
            let capabilities = security.capabilities.as_ref().unwrap();
            assert_eq!(
                capabilities.drop.as_deref(),
                Some(&["ALL".to_owned()][..]),
                "{file}"
            );
            let added: BTreeSet<String> = capabilities.add.iter().flatten().cloned().collect();
            assert_eq!(added, unit_capabilities(), "{file}: not weft.service's set");
            // The runtime's default AppArmor profile denies writes under
            // /sys/fs/bpf: pinning would fail on AppArmor hosts.
            let annotations = spec
                .template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap_or_else(|| panic!("{file}: no pod annotations"));
            assert_eq!(
                annotations
                    .get("container.apparmor.security.beta.kubernetes.io/weft")
                    .map(String::as_str),
                Some("unconfined"),
                "{file}"
            );
        }

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
            "{file}: {args:?}"
        );
        let cni = objects
            .config_maps
            .iter()
            .find_map(|c| c.data.as_ref()?.get("cni-conf.json"))
            .expect("a ConfigMap with cni-conf.json");
        let cni: Value = serde_json::from_str(cni).expect("cni-conf.json is JSON");
        assert_eq!(cni["plugins"][0]["type"], "flannel", "{file}");
    }
}

#[test]
fn the_agents_get_settings_they_accept_and_probes_ask_what_they_serve() {
    for manifest in DAEMON_SETS {
        let file = manifest.file;
        let objects = objects(manifest);
        let weft = agent_container(objects.daemon_set());

        // The command line parses with the agent's own parser.
        let (command_line, _) = parsed_command_line(weft);
        let agent = agent_args(objects.daemon_set());
        assert_eq!(
            weft.command.as_deref(),
            Some(&["/usr/bin/weft".to_owned()][..]),
            "{file}"
        );
        let port = agent.healthz_port;
        assert_ne!(
            port, 0,
            "{file}: --healthz-port is not set: no probes, no metrics"
        );

        // Every setting the agent takes from its environment is one it
        // reads, with a value it accepts.
        let mut settings = BTreeSet::new();
        for source in weft.env_from.iter().flatten() {
            if let Some(reference) = &source.config_map_ref {
                let config_map = objects.config_map(&reference.name);
                for (name, value) in config_map.data.as_ref().unwrap() {
                    let id = check_agent_setting(name, value).unwrap_or_else(|error| {
                        panic!("{file}: ConfigMap {}: {error:#}", reference.name)
                    });
                    settings.insert(id);
                }
            }
        }
        for var in weft.env.iter().flatten() {
            if NON_FLAG_ENV.contains(&var.name.as_str()) {
                continue;
            }
            let value = var.value.as_deref().unwrap_or_default();
            let id = check_agent_setting(&var.name, value)
                .unwrap_or_else(|error| panic!("{file}: env: {error:#}"));
            settings.insert(id);
        }
        if agent.kube_subnet_mgr {
            assert_eq!(file, KUBE_MODE.file);
        } else {
            assert!(settings.contains("etcd_endpoints"), "{file}: {settings:?}");
        }

        // The probes and the metrics port.
        let ports: BTreeMap<&str, i32> = weft
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.name.as_deref().unwrap_or_default(), p.container_port))
            .collect();
        assert_eq!(
            ports.get("metrics"),
            Some(&i32::from(port)),
            "{file}: {ports:?}"
        );
        let probe_port = |port: &IntOrString| match port {
            IntOrString::Int(number) => *number,
            IntOrString::String(name) => *ports
                .get(name.as_str())
                .unwrap_or_else(|| panic!("{file}: no container port named {name}")),
        };
        for (probe, path) in [
            (&weft.readiness_probe, READYZ_PATH),
            (&weft.liveness_probe, HEALTHZ_PATH),
        ] {
            let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
            assert_eq!(get.path.as_deref(), Some(path), "{file}");
            assert_eq!(probe_port(&get.port), i32::from(port), "{file}");
        }
        assert_eq!(METRICS_PATH, "/metrics", "Prometheus' default scrape path");

        // The endpoint listens on the node's own address (where kubelet
        // probes a hostNetwork pod and Prometheus scrapes), not on every
        // address.
        let field_of = |name: &str| {
            weft.env
                .iter()
                .flatten()
                .find(|var| var.name == name)
                .and_then(|var| var.value_from.as_ref()?.field_ref.as_ref())
                .map(|field| field.field_path.clone())
        };
        assert_eq!(
            field_of("WEFT_HEALTHZ_IP").as_deref(),
            Some("status.hostIP"),
            "{file}"
        );
        assert!(
            !command_line
                .iter()
                .any(|arg| arg.starts_with("--healthz-ip")),
            "{file}: --healthz-ip on the command line overrides WEFT_HEALTHZ_IP: {command_line:?}"
        );
        if agent.kube_subnet_mgr {
            // The node it runs on, straight from the downward API (and the
            // pod's name and namespace, as kube-flannel.yml gives flanneld).
            assert_eq!(field_of("NODE_NAME").as_deref(), Some("spec.nodeName"));
            assert_eq!(field_of("POD_NAME").as_deref(), Some("metadata.name"));
            assert_eq!(
                field_of("POD_NAMESPACE").as_deref(),
                Some("metadata.namespace")
            );
        }
    }
}

/// kube-flannel.yml's ClusterRole, verbatim (the lab binds its agents to it).
fn kube_flannel_cluster_role() -> ClusterRole {
    serde_yaml_ng::Deserializer::from_str(kube::AGENT_RBAC)
        .map(|document| -> Value { serde::Deserialize::deserialize(document).unwrap() })
        .find(|value| value["kind"] == "ClusterRole")
        .map(|value| serde_json::from_value(value).unwrap())
        .expect("kube-flannel.yml's ClusterRole")
}

#[test]
fn kube_mode_has_kube_flannels_rbac_and_config_and_a_network_config_weft_accepts() {
    let objects = objects(KUBE_MODE);
    let daemon_set = objects.daemon_set();
    let agent = agent_args(daemon_set);
    assert!(agent.kube_subnet_mgr, "weft.yaml: no --kube-subnet-mgr");
    assert!(agent.ip_masq, "weft.yaml: kube-flannel.yml runs --ip-masq");
    // Whatever the API server's address: the in-cluster config.
    assert_eq!(agent.kube_api_url, None);
    assert_eq!(agent.kubeconfig_file, None);

    // kube-flannel.yml's rights, exactly, bound to the ServiceAccount the
    // pods run as, whose token the pods get.
    let role = &objects.cluster_roles[0];
    assert_eq!(
        role.rules,
        kube_flannel_cluster_role().rules,
        "weft.yaml's ClusterRole and kube-flannel.yml's"
    );
    let binding = &objects.cluster_role_bindings[0];
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.as_ref().unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, kube::AGENT_SERVICE_ACCOUNT);
    assert_eq!(
        subjects[0].namespace.as_deref(),
        Some(kube::AGENT_NAMESPACE)
    );
    let pod = pod_spec(daemon_set);
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some(kube::AGENT_SERVICE_ACCOUNT)
    );
    assert_ne!(pod.automount_service_account_token, Some(false));
    assert_ne!(
        objects.service_accounts[0].automount_service_account_token,
        Some(false)
    );

    // kube-flannel-cfg, mounted where the agent reads net-conf.json by
    // default; that file passes the agent's own parser and rules.
    let config = objects.config_map("kube-flannel-cfg");
    let data = config.data.as_ref().unwrap();
    let network = NetworkConfig::parse(&data["net-conf.json"])
        .unwrap_or_else(|error| panic!("weft.yaml: net-conf.json: {error:#}"));
    assert_eq!(
        network.ipv4.map(|ipv4| ipv4.network.to_string()).as_deref(),
        Some("10.244.0.0/16")
    );
    assert_eq!(network.backend.type_name(), "vxlan");
    let weft = agent_container(daemon_set);
    let volumes = pod.volumes.as_ref().unwrap();
    let config_dir = agent.net_config_path.parent().unwrap();
    let mount = weft
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| Path::new(&m.mount_path) == config_dir)
        .unwrap_or_else(|| panic!("nothing mounted at {}", config_dir.display()));
    let volume = volumes.iter().find(|v| v.name == mount.name).unwrap();
    assert_eq!(
        volume.config_map.as_ref().map(|c| c.name.as_str()),
        config.metadata.name.as_deref()
    );
    assert!(
        data.contains_key(agent.net_config_path.file_name().unwrap().to_str().unwrap()),
        "kube-flannel-cfg lacks {}",
        agent.net_config_path.display()
    );
}

#[test]
fn the_cleanup_job_runs_weft_cleanup_where_the_agent_keeps_its_state() {
    let objects = objects(CLEANUP);
    let job = &objects.jobs[0];
    let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.node_name.as_deref(), Some("REPLACE_WITH_NODE_NAME"));
    assert_eq!(pod.host_network, Some(true), "cni0 and table inet weft");
    assert_eq!(pod.restart_policy.as_deref(), Some("OnFailure"));
    let container = &pod.containers[0];
    let (command_line, cli) = parsed_command_line(container);
    let Command::Cleanup(files) = cli.command else {
        panic!("the Job does not run `weft cleanup`: {command_line:?}");
    };
    let mounted: BTreeSet<&Path> = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| Path::new(&m.mount_path))
        .collect();
    for file in [&files.subnet_file, &files.bpf_pin_dir] {
        assert!(
            mounted.contains(file.parent().unwrap()),
            "{} is not mounted from the node",
            file.display()
        );
    }
}

/// The image `cargo xtask image` builds is `localhost/weft:<version>` with
/// `/usr/bin/weft` as its entrypoint (tests/tests/lab/image.rs checks the
/// archive's side): the agents, the CNI config steps and the cleanup Job
/// all run it, at this build's version, as the binary the image has.
#[test]
fn every_manifest_runs_the_image_cargo_xtask_image_builds() {
    let version = <Cli as clap::CommandFactory>::command()
        .get_version()
        .expect("weft has a version")
        .to_owned();
    let expected = format!("localhost/weft:{version}");
    for (manifest, weft_containers) in [(ETCD_MODE, 2), (KUBE_MODE, 2), (CLEANUP, 1)] {
        let file = manifest.file;
        let objects = objects(manifest);
        let pods: Vec<&PodSpec> = objects
            .daemon_sets
            .iter()
            .map(pod_spec)
            .chain(
                objects
                    .jobs
                    .iter()
                    .map(|job| job.spec.as_ref().unwrap().template.spec.as_ref().unwrap()),
            )
            .collect();
        let containers: Vec<&Container> = pods
            .iter()
            .flat_map(|pod| pod.init_containers.iter().flatten().chain(&pod.containers))
            .filter(|c| {
                c.image
                    .as_deref()
                    .is_some_and(|image| !image.contains("flannel-cni-plugin"))
            })
            .collect();
        assert_eq!(containers.len(), weft_containers, "{file}");
        for container in containers {
            assert_eq!(
                container.image.as_deref(),
                Some(expected.as_str()),
                "{file}: {}",
                container.name
            );
            // Imported on the node or pushed under another name: never
            // pulled as `latest`.
            assert_eq!(
                container.image_pull_policy.as_deref(),
                Some("IfNotPresent"),
                "{file}: {}",
                container.name
            );
            if container.command.as_deref() != Some(&["cp".to_owned()][..]) {
                assert_eq!(
                    container.command.as_deref(),
                    Some(["/usr/bin/weft".to_owned()].as_slice()),
                    "{file}: {}: the command is the image's entrypoint",
                    container.name
                );
            }
        }
    }
}
