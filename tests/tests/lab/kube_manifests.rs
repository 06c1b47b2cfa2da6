//! deploy/kubernetes/weft.yaml and weft-cleanup.yaml on a real
//! kube-apiserver (v1.20.2, TLS and RBAC on, the lab's): `kubectl apply`
//! validates every object against the server's own schema and the server
//! admits and stores it; read back, the server holds every field the file
//! sets, with the file's value (a 1.20 server drops fields it does not know
//! without a word, so a misspelled field shows here); the ClusterRole the
//! file creates gives the agents' ServiceAccount exactly kube-flannel.yml's
//! rights; the stored net-conf.json passes the agent's own parser and holds
//! the Nodes' podCIDRs; every argument the stored DaemonSet passes is a
//! `weft agent` flag the agent's own clap definition accepts. And the check
//! can fail: a misspelled field is refused by kubectl's validation, and
//! slipped past it (`--validate=false`), is caught as missing on the server.
//!
//! tests/tests/offline/manifests.rs checks the same files offline (k8s-openapi).

use clap::Parser as _;
use ipnet::Ipv4Net;
use serde_json::Value;
use weft_agent::{
    cli::{Cli, Command},
    config::NetworkConfig,
};
use weft_tests::{
    Dataplane, Lab, LabSpec, SubnetManager,
    containerd::Containerd,
    flannel,
    kube::{self, KubeState},
    lab::{DECAP_COUNTERS, counter_delta, counters_delta},
    privileged::reference_kubernetes,
    privileged_test,
};

const KUBE_MODE: &str = include_str!("../../../deploy/kubernetes/weft.yaml");
const CLEANUP: &str = include_str!("../../../deploy/kubernetes/weft-cleanup.yaml");
const NODE_PLACEHOLDER: &str = "REPLACE_WITH_NODE_NAME";
/// The DaemonSet of flannel v0.20.2's Documentation/kube-flannel.yml,
/// verbatim: the cluster a switch to weft starts from.
const KUBE_FLANNEL_DAEMONSET: &str = r#"apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: kube-flannel-ds
  namespace: kube-flannel
  labels:
    tier: node
    app: flannel
spec:
  selector:
    matchLabels:
      app: flannel
  template:
    metadata:
      labels:
        tier: node
        app: flannel
    spec:
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
            - matchExpressions:
              - key: kubernetes.io/os
                operator: In
                values:
                - linux
      hostNetwork: true
      priorityClassName: system-node-critical
      tolerations:
      - operator: Exists
        effect: NoSchedule
      serviceAccountName: flannel
      initContainers:
      - name: install-cni-plugin
       #image: flannelcni/flannel-cni-plugin:v1.1.0 for ppc64le and mips64le (dockerhub limitations may apply)
        image: docker.io/rancher/mirrored-flannelcni-flannel-cni-plugin:v1.1.0
        command:
        - cp
        args:
        - -f
        - /flannel
        - /opt/cni/bin/flannel
        volumeMounts:
        - name: cni-plugin
          mountPath: /opt/cni/bin
      - name: install-cni
       #image: flannelcni/flannel:v0.20.2 for ppc64le and mips64le (dockerhub limitations may apply)
        image: docker.io/rancher/mirrored-flannelcni-flannel:v0.20.2
        command:
        - cp
        args:
        - -f
        - /etc/kube-flannel/cni-conf.json
        - /etc/cni/net.d/10-flannel.conflist
        volumeMounts:
        - name: cni
          mountPath: /etc/cni/net.d
        - name: flannel-cfg
          mountPath: /etc/kube-flannel/
      containers:
      - name: kube-flannel
       #image: flannelcni/flannel:v0.20.2 for ppc64le and mips64le (dockerhub limitations may apply)
        image: docker.io/rancher/mirrored-flannelcni-flannel:v0.20.2
        command:
        - /opt/bin/flanneld
        args:
        - --ip-masq
        - --kube-subnet-mgr
        resources:
          requests:
            cpu: "100m"
            memory: "50Mi"
          limits:
            cpu: "100m"
            memory: "50Mi"
        securityContext:
          privileged: false
          capabilities:
            add: ["NET_ADMIN", "NET_RAW"]
        env:
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: POD_NAMESPACE
          valueFrom:
            fieldRef:
              fieldPath: metadata.namespace
        - name: EVENT_QUEUE_DEPTH
          value: "5000"
        volumeMounts:
        - name: run
          mountPath: /run/flannel
        - name: flannel-cfg
          mountPath: /etc/kube-flannel/
        - name: xtables-lock
          mountPath: /run/xtables.lock
      volumes:
      - name: run
        hostPath:
          path: /run/flannel
      - name: cni-plugin
        hostPath:
          path: /opt/cni/bin
      - name: cni
        hostPath:
          path: /etc/cni/net.d
      - name: flannel-cfg
        configMap:
          name: kube-flannel-cfg
      - name: xtables-lock
        hostPath:
          path: /run/xtables.lock
          type: FileOrCreate
"#;
/// docs/kubernetes.md, whose switching procedure the lab follows.
const DOCS: &str = include_str!("../../../docs/kubernetes.md");
/// An existing flannel cluster's net-conf.json (other than weft.yaml's).
const THEIR_NET_CONF: &str =
    r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}"#;

/// The YAML documents of a manifest, as JSON values.
fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|document| -> Value { serde::Deserialize::deserialize(document).unwrap() })
        .collect()
}

/// Every field `expected` (the file) sets that `actual` (the server's copy)
/// lacks or holds with another value, by path. Fields the server adds
/// (defaults, status, metadata) are not differences.
fn differences(path: &str, expected: &Value, actual: &Value, found: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(expected), Value::Object(actual)) => {
            for (key, value) in expected {
                let at = format!("{path}.{key}");
                match actual.get(key) {
                    Some(held) => differences(&at, value, held, found),
                    None => found.push(format!("{at}: not on the server")),
                }
            }
        }
        (Value::Array(expected), Value::Array(actual)) if expected.len() == actual.len() => {
            for (index, (value, held)) in expected.iter().zip(actual).enumerate() {
                differences(&format!("{path}[{index}]"), value, held, found);
            }
        }
        _ if expected == actual => {}
        _ => found.push(format!(
            "{path}: the file says {expected}, the server holds {actual}"
        )),
    }
}

/// The server's copy of the object `document` describes.
fn stored(api: &KubeState, document: &Value) -> Value {
    let kind = document["kind"].as_str().unwrap().to_lowercase();
    let name = document["metadata"]["name"].as_str().unwrap();
    let mut args = vec!["get", kind.as_str(), name, "-o", "json"];
    if let Some(namespace) = document["metadata"]["namespace"].as_str() {
        args.extend(["-n", namespace]);
    }
    let out = api
        .admin(&args)
        .unwrap_or_else(|error| panic!("{kind} {name} is not on the server: {error:#}"));
    serde_json::from_str(&out).unwrap()
}

/// What the server holds of every object in `text` differently from the
/// file, object by object.
fn server_differences(api: &KubeState, text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for document in documents(text) {
        let object = format!("{} {}", document["kind"], document["metadata"]["name"]);
        differences(&object, &document, &stored(api, &document), &mut found);
    }
    found
}

/// `kubectl auth can-i` with the agents' ServiceAccount token (it exits 1
/// and says "no" when the answer is no).
fn agent_can(api: &KubeState, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    match api.as_agent(&all) {
        Ok(out) => out.trim() == "yes",
        Err(error) if format!("{error:#}").contains("exit status: 1") => false,
        Err(error) => panic!("kubectl auth can-i {args:?}: {error:#}"),
    }
}

/// The agents' rights under kube-flannel.yml's ClusterRole: these, and not
/// a verb more.
const AGENT_RIGHTS: [(&[&str], bool); 9] = [
    (&["get", "pods", "-n", kube::AGENT_NAMESPACE], true),
    (&["get", "nodes"], true),
    (&["list", "nodes"], true),
    (&["watch", "nodes"], true),
    (&["patch", "nodes", "--subresource=status"], true),
    (&["patch", "nodes"], false),
    (&["update", "nodes"], false),
    (&["list", "pods", "-n", kube::AGENT_NAMESPACE], false),
    (&["get", "secrets", "-n", kube::AGENT_NAMESPACE], false),
];

#[test]
fn weft_yaml_is_created_on_a_real_api_server_as_written_with_kube_flannels_rights() {
    const TEST: &str =
        "weft_yaml_is_created_on_a_real_api_server_as_written_with_kube_flannels_rights";
    let Some(_guard) = privileged_test(TEST) else {
        return;
    };
    let Some(kubernetes) = reference_kubernetes(TEST) else {
        return;
    };
    // The API server and two registered Nodes; no agent runs (the manifest
    // is what is tested, not the agent).
    let mut spec = LabSpec::new("kd-manifest", 2, 0);
    spec.dataplane = Dataplane::Floor;
    spec.subnet_manager = SubnetManager::Kube;
    spec.kubernetes_bin = Some(kubernetes);
    let lab = Lab::up(&spec).unwrap();
    let api = lab.kube().unwrap();

    // A cluster that runs flannel already has kube-flannel-cfg (its own
    // net-conf.json): switching to weft applies the DaemonSet alone, which
    // `--selector app=weft` picks out of the file, and the cluster's
    // ConfigMap stays as it was.
    let theirs = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "kube-flannel-cfg", "namespace": kube::AGENT_NAMESPACE},
        "data": {"net-conf.json": THEIR_NET_CONF},
    });
    api.admin_with_input(&["create", "-f", "-"], &theirs.to_string())
        .unwrap();
    let applied = api
        .admin_with_input(&["apply", "--selector", "app=weft", "-f", "-"], KUBE_MODE)
        .unwrap();
    assert_eq!(
        applied.lines().collect::<Vec<_>>(),
        ["daemonset.apps/weft created"],
        "kubectl apply --selector app=weft -f weft.yaml"
    );
    let config_map = stored(api, &theirs);
    assert_eq!(
        config_map["data"], theirs["data"],
        "the cluster's ConfigMap changed"
    );
    let mounted = stored(
        api,
        &documents(KUBE_MODE)
            .into_iter()
            .find(|d| d["kind"] == "DaemonSet")
            .unwrap(),
    );
    let volumes = mounted["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["configMap"]["name"] == "kube-flannel-cfg"),
        "weft's DaemonSet does not mount the cluster's kube-flannel-cfg: {volumes:?}"
    );

    // The lab bound its agents' ServiceAccount to kube-flannel.yml's
    // ClusterRole; take that away, so the rights below are the file's.
    api.admin(&[
        "delete",
        "clusterrolebinding/flannel",
        "clusterrole/flannel",
    ])
    .unwrap();
    assert!(!agent_can(api, &["list", "nodes"]), "RBAC is not enforced");

    let applied = api
        .admin_with_input(&["apply", "-f", "-"], KUBE_MODE)
        .unwrap();
    eprintln!("kubectl apply -f weft.yaml:\n{applied}");
    let found = server_differences(api, KUBE_MODE);
    assert!(
        found.is_empty(),
        "the server holds weft.yaml otherwise than written:\n{}",
        found.join("\n")
    );

    // kube-flannel.yml's rights, exactly, for the ServiceAccount the
    // DaemonSet's pods run as.
    let role = stored(
        api,
        &serde_json::json!({"kind": "ClusterRole", "metadata": {"name": "flannel"}}),
    );
    let kube_flannel = documents(kube::AGENT_RBAC)
        .into_iter()
        .find(|document| document["kind"] == "ClusterRole")
        .unwrap();
    assert_eq!(
        role["rules"], kube_flannel["rules"],
        "the server's ClusterRole flannel (weft.yaml's) and kube-flannel.yml's"
    );
    for (args, expected) in AGENT_RIGHTS {
        assert_eq!(
            agent_can(api, args),
            expected,
            "the agents' ServiceAccount: can-i {args:?}"
        );
    }

    let by_kind = |kind: &str| {
        documents(KUBE_MODE)
            .into_iter()
            .find(|document| document["kind"] == kind)
            .map(|document| stored(api, &document))
            .unwrap()
    };

    // The stored net-conf.json, read by the agent's own parser, holds every
    // Node's podCIDR.
    let config_map = by_kind("ConfigMap");
    let network = NetworkConfig::parse(config_map["data"]["net-conf.json"].as_str().unwrap())
        .unwrap_or_else(|error| panic!("kube-flannel-cfg's net-conf.json: {error:#}"));
    for node in lab.node_ids() {
        let object = api.node(lab.node(node).node_name()).unwrap();
        let pod_cidr: Ipv4Net = object["spec"]["podCIDR"].as_str().unwrap().parse().unwrap();
        let ipv4 = network.ipv4.as_ref().expect("net-conf.json has IPv4");
        assert!(
            ipv4.network.contains(&pod_cidr),
            "podCIDR {pod_cidr} is outside net-conf.json's Network {}",
            ipv4.network
        );
    }

    // Every argument of the stored agent container is a `weft agent` flag,
    // with a value the agent accepts.
    let daemon_set = by_kind("DaemonSet");
    let containers = daemon_set["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    let weft = containers.iter().find(|c| c["name"] == "weft").unwrap();
    let command_line: Vec<String> = std::iter::once("weft".to_owned())
        .chain(
            weft["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|arg| arg.as_str().unwrap().to_owned()),
        )
        .collect();
    let cli = Cli::try_parse_from(&command_line)
        .unwrap_or_else(|error| panic!("the stored DaemonSet's {command_line:?}: {error}"));
    let Command::Agent(agent) = cli.command else {
        panic!("the stored DaemonSet does not run `weft agent`: {command_line:?}");
    };
    assert!(agent.kube_subnet_mgr);

    // The cleanup Job, for one of the lab's Nodes.
    let node = lab
        .node(lab.node_ids().next().unwrap())
        .node_name()
        .to_owned();
    let cleanup = CLEANUP.replace(NODE_PLACEHOLDER, &node);
    api.admin_with_input(&["create", "-f", "-"], &cleanup)
        .unwrap();
    let found = server_differences(api, &cleanup);
    assert!(
        found.is_empty(),
        "the server holds weft-cleanup.yaml otherwise than written:\n{}",
        found.join("\n")
    );

    // Break it: a misspelled field. kubectl validates against the server's
    // schema and refuses it, naming it; slipped past that check, the server
    // stores the object without the field, and the comparison names it.
    let misspelled = KUBE_MODE
        .replace(
            "name: weft\n  namespace",
            "name: weft-misspelled\n  namespace",
        )
        .replace(
            "mountPropagation: HostToContainer",
            "mountPropagaton: HostToContainer",
        );
    let broken: Vec<Value> = documents(&misspelled)
        .into_iter()
        .filter(|document| document["kind"] == "DaemonSet")
        .collect();
    assert_eq!(broken[0]["metadata"]["name"], "weft-misspelled");
    let broken = serde_yaml_ng::to_string(&broken[0]).unwrap();
    let refused = api.admin_with_input(&["apply", "-f", "-"], &broken);
    let error = format!(
        "{:#}",
        refused.expect_err("kubectl applied a misspelled field")
    );
    assert!(error.contains("mountPropagaton"), "{error}");
    api.admin_with_input(&["apply", "--validate=false", "-f", "-"], &broken)
        .unwrap();
    let found = server_differences(api, &broken);
    assert!(
        found
            .iter()
            .any(|found| found.contains("mountPropagaton: not on the server")),
        "{found:?}"
    );
}

/// The label that picks a node's agent, and flannel's DaemonSet's rule for
/// it, as docs/kubernetes.md ("Switching from flannel to weft and back")
/// gives them.
const AGENT_LABEL: &str = "weft/node-agent";
const FLANNEL_PATCH: &str = r#"[{"op":"add",
     "path":"/spec/template/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchExpressions/-",
     "value":{"key":"weft/node-agent","operator":"In","values":["flanneld"]}}]"#;

/// kube-controller-manager with the DaemonSet controller (which decides
/// which node gets a DaemonSet's pod, from the pod template's node affinity
/// and the Node's labels) and the ServiceAccount token controller (pods
/// of a ServiceAccount without a token are refused in v1.20), in the
/// underlay. Its pid file is in the lab's run directory, where teardown
/// stops it.
fn start_daemonset_controller(lab: &Lab, api: &KubeState) {
    let dir = api.admin_kubeconfig.parent().unwrap();
    let program = api.bin_dir.join("kube-controller-manager");
    let mut command = weft_tests::netns::command(&api.ns, &program.display().to_string()).unwrap();
    command.arg(format!("--kubeconfig={}", api.admin_kubeconfig.display()));
    command.args([
        "--controllers=daemonset,serviceaccount-token",
        "--leader-elect=false",
        "--secure-port=0",
        "--port=0",
    ]);
    command.arg(format!(
        "--service-account-private-key-file={}",
        dir.join("sa.key").display()
    ));
    command.arg(format!("--root-ca-file={}", dir.join("ca.crt").display()));
    let pid_file = lab.state.run_dir.join("kube-controller-manager.pid");
    let log = dir.join("kube-controller-manager.log");
    weft_tests::process::spawn_daemon(command, &log, &pid_file).unwrap();
    weft_tests::process::wait_ready(
        "kube-controller-manager",
        &pid_file,
        &log,
        std::time::Duration::from_secs(60),
        || {
            api.admin(&[
                "get",
                "serviceaccount",
                kube::AGENT_SERVICE_ACCOUNT,
                "-n",
                kube::AGENT_NAMESPACE,
                "-o",
                "jsonpath={.secrets[0].name}",
            ])
            .is_ok_and(|name| !name.trim().is_empty())
        },
    )
    .unwrap();
}

/// Which DaemonSets have a pod for each node: the DaemonSet controller
/// binds each pod to its node with a `metadata.name` node affinity.
fn placement(api: &KubeState) -> std::collections::BTreeMap<String, Vec<String>> {
    let out = api
        .admin(&["get", "pods", "-n", kube::AGENT_NAMESPACE, "-o", "json"])
        .unwrap();
    let pods: Value = serde_json::from_str(&out).unwrap();
    let mut placement = std::collections::BTreeMap::<String, Vec<String>>::new();
    for pod in pods["items"].as_array().unwrap() {
        if !pod["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let owner = pod["metadata"]["ownerReferences"][0]["name"]
            .as_str()
            .unwrap()
            .to_owned();
        let node = pod["spec"]["affinity"]["nodeAffinity"]
            ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
            ["matchFields"][0]["values"][0]
            .as_str()
            .unwrap()
            .to_owned();
        placement.entry(node).or_default().push(owner);
    }
    for owners in placement.values_mut() {
        owners.sort();
    }
    placement
}

/// Waits (up to 30 s) until the DaemonSet controller has seen the current
/// spec of `daemon_set` and wants its pods on `nodes` nodes.
fn expect_desired(api: &KubeState, daemon_set: &str, nodes: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = api
            .admin(&[
                "get",
                "daemonset",
                daemon_set,
                "-n",
                kube::AGENT_NAMESPACE,
                "-o",
                "json",
            ])
            .unwrap();
        let object: Value = serde_json::from_str(&out).unwrap();
        let status = &object["status"];
        if status["observedGeneration"] == object["metadata"]["generation"]
            && status["desiredNumberScheduled"].as_u64() == Some(nodes)
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "DaemonSet {daemon_set}: status {status}, expected {nodes} nodes"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Waits (up to 30 s) until every node has exactly the DaemonSets'
/// pods `expected` gives it.
fn expect_placement(api: &KubeState, step: &str, expected: &[(&str, &str)]) {
    let expected: std::collections::BTreeMap<String, Vec<String>> = expected
        .iter()
        .map(|(node, owner)| ((*node).to_owned(), vec![(*owner).to_owned()]))
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = placement(api);
        if now == expected {
            eprintln!("{step}: {now:?}");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{step}: the DaemonSets' pods are {now:?}, expected {expected:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

#[test]
fn one_node_label_moves_each_node_between_flanneld_and_weft_as_the_docs_say() {
    const TEST: &str = "one_node_label_moves_each_node_between_flanneld_and_weft_as_the_docs_say";
    let Some(_guard) = privileged_test(TEST) else {
        return;
    };
    let Some(kubernetes) = reference_kubernetes(TEST) else {
        return;
    };
    // The procedure tested is the one the docs give.
    assert!(
        DOCS.contains(FLANNEL_PATCH),
        "docs/kubernetes.md's patch of kube-flannel-ds changed"
    );
    for command in [
        "kubectl label nodes --all weft/node-agent=flanneld",
        "kubectl apply -f deploy/kubernetes/weft.yaml --selector app=weft",
        "kubectl label node $NODE weft/node-agent=weft --overwrite",
        "kubectl label node $NODE weft/node-agent=flanneld --overwrite",
        "kubectl -n kube-flannel delete daemonset kube-flannel-ds",
        "kubectl label nodes --all weft/node-agent-",
    ] {
        assert!(
            DOCS.contains(command),
            "docs/kubernetes.md no longer says {command:?}"
        );
    }

    let mut spec = LabSpec::new("kd-switch", 3, 0);
    spec.dataplane = Dataplane::Floor;
    spec.subnet_manager = SubnetManager::Kube;
    spec.kubernetes_bin = Some(kubernetes);
    let lab = Lab::up(&spec).unwrap();
    let api = lab.kube().unwrap();
    start_daemonset_controller(&lab, api);
    let nodes: Vec<String> = lab
        .node_ids()
        .map(|node| lab.node(node).node_name().to_owned())
        .collect();
    let (n1, n2, n3) = (nodes[0].as_str(), nodes[1].as_str(), nodes[2].as_str());
    let label = |node: &str, value: &str| {
        api.admin(&[
            "label",
            "node",
            node,
            &format!("{AGENT_LABEL}={value}"),
            "--overwrite",
        ])
        .unwrap();
    };
    let (flannel, weft) = ("kube-flannel-ds", "weft");

    // A flannel cluster: kube-flannel.yml's DaemonSet on every node.
    api.admin_with_input(&["apply", "-f", "-"], KUBE_FLANNEL_DAEMONSET)
        .unwrap();
    expect_placement(
        api,
        "flannel",
        &[(n1, flannel), (n2, flannel), (n3, flannel)],
    );

    // Every node pinned to flanneld, flannel's DaemonSet restricted to
    // such nodes, weft's DaemonSet created: still flanneld everywhere.
    api.admin(&[
        "label",
        "nodes",
        "--all",
        &format!("{AGENT_LABEL}=flanneld"),
    ])
    .unwrap();
    api.admin(&[
        "-n",
        kube::AGENT_NAMESPACE,
        "patch",
        "daemonset",
        flannel,
        "--type=json",
        "-p",
        FLANNEL_PATCH,
    ])
    .unwrap();
    api.admin_with_input(&["apply", "--selector", "app=weft", "-f", "-"], KUBE_MODE)
        .unwrap();
    expect_desired(api, flannel, 3);
    expect_desired(api, weft, 0);
    expect_placement(
        api,
        "weft's DaemonSet created",
        &[(n1, flannel), (n2, flannel), (n3, flannel)],
    );

    // One node to weft, and back: that node alone changes, and never runs
    // both.
    label(n2, "weft");
    expect_desired(api, weft, 1);
    expect_desired(api, flannel, 2);
    expect_placement(
        api,
        "n2 to weft",
        &[(n1, flannel), (n2, weft), (n3, flannel)],
    );
    label(n2, "flanneld");
    expect_desired(api, weft, 0);
    expect_desired(api, flannel, 3);
    expect_placement(
        api,
        "n2 back",
        &[(n1, flannel), (n2, flannel), (n3, flannel)],
    );

    // Every node to weft, then flannel's DaemonSet and the labels removed.
    for node in &nodes {
        label(node, "weft");
    }
    expect_placement(api, "all on weft", &[(n1, weft), (n2, weft), (n3, weft)]);
    api.admin(&["-n", kube::AGENT_NAMESPACE, "delete", "daemonset", flannel])
        .unwrap();
    api.admin(&["label", "nodes", "--all", &format!("{AGENT_LABEL}-")])
        .unwrap();
    expect_desired(api, weft, 3);
    expect_placement(
        api,
        "flannel removed",
        &[(n1, weft), (n2, weft), (n3, weft)],
    );

    // A node that joins afterwards, unlabelled, gets weft.
    api.register_node(&kube::NodeRegistration {
        name: "kd-switch-new",
        internal_ip: "192.168.77.99",
        pod_cidr: "10.244.99.0/24",
    })
    .unwrap();
    expect_placement(
        api,
        "a new node",
        &[(n1, weft), (n2, weft), (n3, weft), ("kd-switch-new", weft)],
    );
}

/// The node image: `$WEFT_IMAGE` (`cargo xtask test` sets it), else the one
/// archive in target/image (`cargo xtask image`).
fn image() -> std::path::PathBuf {
    if let Some(image) = std::env::var_os("WEFT_IMAGE") {
        return image.into();
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/image");
    let archives: Vec<_> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.to_string_lossy().ends_with(".oci.tar"))
        .collect();
    match archives.as_slice() {
        [archive] => archive.clone(),
        _ => panic!(
            "no single .oci.tar in {} ({archives:?}) and WEFT_IMAGE unset: run `cargo xtask image` \
             (`cargo xtask test` builds it and sets WEFT_IMAGE)",
            dir.display()
        ),
    }
}

/// Every capability runc knows, by the name ctr takes.
const ALL_CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// A container of the private containerd, killed and removed when dropped
/// (also when the test fails).
struct Container<'a> {
    containerd: &'a Containerd,
    id: String,
}

impl Container<'_> {
    /// The pid of its process, as the host sees it.
    fn pid(&self) -> u32 {
        let out = self.containerd.ctr(&["task", "ls"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|line| {
                let mut fields = line.split_whitespace();
                (fields.next() == Some(self.id.as_str())).then(|| fields.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("container {} has no running task", self.id))
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let id = self.id.as_str();
        let _ = self
            .containerd
            .ctr(&["task", "kill", "-s", "SIGKILL", id])
            .output();
        for _ in 0..50 {
            let out = self.containerd.ctr(&["task", "rm", "-f", id]).output();
            if out.is_ok_and(|out| out.status.success()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.containerd.ctr(&["container", "rm", id]).output();
    }
}

/// `GET http://address:port/readyz` from inside `ns`, as kubelet probes a
/// host-network pod: whether it answers 200.
fn ready_at(ns: &str, address: &str, port: u16) -> bool {
    weft_tests::netns::in_netns(ns, || {
        use std::io::{Read as _, Write as _};
        let Ok(mut stream) = std::net::TcpStream::connect((address, port)) else {
            return Ok(false);
        };
        stream.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        stream.write_all(b"GET /readyz HTTP/1.0\r\n\r\n")?;
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        Ok(response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"))
    })
    .unwrap_or(false)
}

/// The capability bits of a `/proc/<pid>/status` line (`CapEff:` ...).
fn capability_mask(status: &str, field: &str) -> u64 {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in the process status"));
    u64::from_str_radix(line.trim(), 16).unwrap()
}

#[test]
fn weft_yamls_agent_container_runs_unprivileged_in_containerd_and_serves_its_node() {
    const TEST: &str =
        "weft_yamls_agent_container_runs_unprivileged_in_containerd_and_serves_its_node";
    let Some(_guard) = privileged_test(TEST) else {
        return;
    };
    let Some(kubernetes) = reference_kubernetes(TEST) else {
        return;
    };
    let archive = image();

    // The agent container of weft.yaml's DaemonSet, and its ConfigMap.
    let documents = documents(KUBE_MODE);
    let daemon_set = documents.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let config_map = documents.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let pod = &daemon_set["spec"]["template"]["spec"];
    let container = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "weft")
        .unwrap();
    let strings = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .into_iter()
            .flatten()
            .map(|item| item.as_str().unwrap().to_owned())
            .collect()
    };

    // Two weft nodes in kube mode; node 1's agent then moves into the
    // container, as on a node where the DaemonSet's pod replaces it.
    let mut spec = LabSpec::new("kd-ctr", 2, 1);
    spec.subnet_manager = SubnetManager::Kube;
    spec.kubernetes_bin = Some(kubernetes);
    let lab = Lab::up(&spec).unwrap();
    let api = lab.kube().unwrap();
    let first = lab.node_ids().next().unwrap();
    let node = lab.node(first).clone();
    let subnet_env = std::fs::read_to_string(&node.subnet_file).unwrap();
    lab.stop_agent(first, nix::sys::signal::Signal::SIGTERM)
        .unwrap();

    // What kubelet gives the pod: the ConfigMap's files, the
    // ServiceAccount's token and CA, the downward API's values, the
    // in-cluster address of the API server (here the server's own: the
    // lab runs no kube-proxy).
    let dir = lab.state.run_dir.join("kd-ctr-pod");
    let config_dir = dir.join("kube-flannel-cfg");
    let account_dir = dir.join("serviceaccount");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::create_dir_all(&account_dir).unwrap();
    for (name, text) in config_map["data"].as_object().unwrap() {
        std::fs::write(config_dir.join(name), text.as_str().unwrap()).unwrap();
    }
    let agent_config: Value =
        serde_json::from_str(&std::fs::read_to_string(&api.agent_kubeconfig).unwrap()).unwrap();
    let token = agent_config["users"][0]["user"]["token"].as_str().unwrap();
    std::fs::write(account_dir.join("token"), token).unwrap();
    std::fs::copy(
        api.admin_kubeconfig.with_file_name("ca.crt"),
        account_dir.join("ca.crt"),
    )
    .unwrap();
    std::fs::write(account_dir.join("namespace"), kube::AGENT_NAMESPACE).unwrap();
    let (host, port) = api
        .server
        .strip_prefix("https://")
        .and_then(|address| address.rsplit_once(':'))
        .unwrap();
    let mut env = vec![
        format!("KUBERNETES_SERVICE_HOST={host}"),
        format!("KUBERNETES_SERVICE_PORT={port}"),
        // The lab's pin directory for the node, so its probes and teardown
        // find the pins (weft.yaml leaves the default, /sys/fs/bpf/weft).
        format!("WEFT_BPF_PIN_DIR={}", node.pin_dir.display()),
    ];
    for var in container["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap();
        let value = match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("spec.nodeName") => node.node_name().to_owned(),
            Some("metadata.name") => "weft-kdctr".to_owned(),
            Some("metadata.namespace") => kube::AGENT_NAMESPACE.to_owned(),
            Some("status.hostIP") => node.ip.clone(),
            Some(other) => panic!("a downward API field the test does not know: {other}"),
            None => var["value"].as_str().unwrap().to_owned(),
        };
        env.push(format!("{name}={value}"));
    }
    // The DaemonSet's volumes, with the node's paths the lab uses.
    let volumes = pod["volumes"].as_array().unwrap();
    let mut mounts = vec![format!(
        "type=bind,src={},dst=/var/run/secrets/kubernetes.io/serviceaccount,options=rbind:ro",
        account_dir.display()
    )];
    for mount in container["volumeMounts"].as_array().unwrap() {
        let volume = volumes.iter().find(|v| v["name"] == mount["name"]).unwrap();
        let target = mount["mountPath"].as_str().unwrap().trim_end_matches('/');
        let source = match (volume["hostPath"]["path"].as_str(), target) {
            (Some("/run/flannel"), _) => node.subnet_file.parent().unwrap().to_owned(),
            (Some(path), _) => std::path::PathBuf::from(path),
            (None, _) if !volume["configMap"].is_null() => config_dir.clone(),
            _ => panic!("a volume the test does not know: {volume}"),
        };
        let mut options = vec!["rbind"];
        options.push(if mount["readOnly"] == true {
            "ro"
        } else {
            "rw"
        });
        match mount["mountPropagation"].as_str() {
            Some("HostToContainer") => options.push("rslave"),
            Some(other) => panic!("a propagation the test does not map: {other}"),
            None => options.push("rprivate"),
        }
        mounts.push(format!(
            "type=bind,src={},dst={target},options={}",
            source.display(),
            options.join(":")
        ));
    }
    // Capabilities: the DaemonSet's added set, every other one dropped.
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false);
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    let added: Vec<String> = strings(&security["capabilities"]["add"])
        .into_iter()
        .map(|cap| format!("CAP_{cap}"))
        .collect();

    let containerd = Containerd::start(&dir.join("containerd")).unwrap();
    let imported = containerd
        .ctr(&["image", "import"])
        .arg(&archive)
        .output()
        .unwrap();
    assert!(imported.status.success(), "{imported:?}");
    let image_name = container["image"].as_str().unwrap();
    let id = format!("kd-ctr-{}", std::process::id());
    let mut run = containerd.ctr(&["run", "--detach"]);
    run.arg(format!("--with-ns=network:/run/netns/{}", node.ns));
    let log = dir.join("agent.log");
    run.arg(format!("--log-uri=file://{}", log.display()));
    for cap in ALL_CAPABILITIES
        .iter()
        .filter(|cap| !added.iter().any(|a| a == *cap))
    {
        run.arg(format!("--cap-drop={cap}"));
    }
    for cap in &added {
        run.arg(format!("--cap-add={cap}"));
    }
    for mount in &mounts {
        run.arg(format!("--mount={mount}"));
    }
    for var in &env {
        run.arg(format!("--env={var}"));
    }
    run.args([image_name, id.as_str()])
        .args(strings(&container["command"]))
        .args(strings(&container["args"]));
    let started = run.output().unwrap();
    let agent = Container {
        containerd: &containerd,
        id: id.clone(),
    };
    assert!(started.status.success(), "ctr run: {started:?}");

    // Ready, as kubelet's readiness probe asks: the metrics port on the
    // node's address.
    let port = container["ports"][0]["containerPort"].as_u64().unwrap() as u16;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while !ready_at(&node.ns, &node.ip, port) {
        assert!(
            std::time::Instant::now() < deadline,
            "the containerized agent is not ready on {}:{port}; its log:\n{}",
            node.ip,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }

    // Exactly the DaemonSet's capabilities, on a read-only /sys.
    let pid = agent.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let expected: u64 = [12, 21, 38, 39].iter().map(|bit| 1u64 << bit).sum();
    assert_eq!(added.len(), 4, "{added:?}");
    assert_eq!(capability_mask(&status, "CapEff:"), expected, "{status}");
    assert_eq!(capability_mask(&status, "CapBnd:"), expected, "{status}");
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let sys = mountinfo
        .lines()
        .find(|line| line.split_whitespace().nth(4) == Some("/sys"))
        .expect("/sys in the container");
    assert!(
        sys.split_whitespace()
            .nth(5)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "/sys is writable in the container: {sys}"
    );

    // Its Node, as flanneld would have left it; subnet.env unchanged.
    let object = api.node(node.node_name()).unwrap();
    let annotations = &object["metadata"]["annotations"];
    assert_eq!(
        annotations["flannel.alpha.coreos.com/public-ip"].as_str(),
        Some(node.ip.as_str())
    );
    assert_eq!(
        annotations["flannel.alpha.coreos.com/backend-data"].as_str(),
        Some(
            format!(
                r#"{{"VNI":1,"VtepMAC":"{}"}}"#,
                flannel::vtep_mac(&node).unwrap()
            )
            .as_str()
        )
    );
    // The same subnet and MTU; the DaemonSet runs --ip-masq, the lab's
    // agents do not.
    assert_eq!(
        std::fs::read_to_string(&node.subnet_file).unwrap(),
        subnet_env.replace("FLANNEL_IPMASQ=false", "FLANNEL_IPMASQ=true")
    );

    // Pods on both nodes reach each other, the fast path carrying it on the
    // containerized agent's node.
    lab.warm_up().unwrap();
    let before = lab.counters(first).unwrap();
    lab.assert_all_pairs_ping(20);
    let after = lab.counters(first).unwrap();
    let encap = weft_common::Hook::TcPodEgress.counter(weft_common::Reason::Encap);
    assert!(
        counter_delta(&before, &after, encap).0 >= 10,
        "the fast path did not encapsulate on {}",
        node.ns
    );
    assert!(
        counters_delta(&before, &after, &DECAP_COUNTERS).0 >= 10,
        "the fast path did not deliver on {}",
        node.ns
    );
    drop(agent);
}
