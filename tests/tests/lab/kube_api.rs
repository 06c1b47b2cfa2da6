//! weft's Kubernetes API client (`weft_agent::kubernetes`) against the
//! lab's real kube-apiserver v1.20.2, with the agents' ServiceAccount token
//! (exactly kube-flannel.yml's rights), beside stock flanneld v0.20.2 in
//! `--kube-subnet-mgr` mode: what weft writes on a Node is compared with
//! what flanneld wrote on its own, as the API server holds both; and the
//! Node follower sees every change, and a full listing again after the
//! API server restarts.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;
use tokio::sync::mpsc;
use weft_agent::kubernetes::{
    AnnotationKeys, Announcement, Client, KubeOptions, NodeEvent, NodeFollower, NodeRecord, client,
    publish, set_network_available,
};
use weft_tests::{
    Dataplane, Lab, LabSpec, SubnetManager,
    kube::{KubeState, NodeRegistration},
    netns, privileged,
    privileged::{reference_flanneld, reference_kubernetes},
    process,
};

const PREFIX: &str = "flannel.alpha.coreos.com";
/// A Node no agent runs on, which weft's client announces as flanneld's
/// node 1 announced itself.
const TWIN: &str = "kc-twin";
const ADDED: &str = "kc-added";

#[test]
fn weft_writes_on_a_node_what_flanneld_writes_and_follows_every_node() {
    const TEST: &str = "weft_writes_on_a_node_what_flanneld_writes_and_follows_every_node";
    let _guard = privileged!(TEST);
    let Some(flanneld) = reference_flanneld(TEST) else {
        return;
    };
    let Some(kubernetes) = reference_kubernetes(TEST) else {
        return;
    };
    let mut spec = LabSpec::new("kc-api", 2, 0);
    spec.dataplane = Dataplane::Flanneld;
    spec.subnet_manager = SubnetManager::Kube;
    spec.flanneld_bin = Some(flanneld);
    spec.kubernetes_bin = Some(kubernetes);
    let lab = Lab::up(&spec).unwrap();
    let api = lab.kube().unwrap().clone();
    let mut nodes = lab.node_ids();
    let (first, second) = (nodes.next().unwrap(), nodes.next().unwrap());
    let flanneld_node = lab.node(first);
    let reference = api.node(flanneld_node.node_name()).unwrap();
    let theirs = flannel_annotations(&reference);
    assert_eq!(theirs.len(), 4, "flanneld's annotations: {theirs:?}");

    api.register_node(&NodeRegistration {
        name: TWIN,
        internal_ip: &flanneld_node.ip,
        pod_cidr: "10.244.200.0/24",
    })
    .unwrap();
    let ours = Announcement {
        backend_type: theirs[&key("backend-type")].clone(),
        backend_data: theirs[&key("backend-data")].clone(),
        public_ip: flanneld_node.ip.parse().unwrap(),
        public_ipv6: None,
        backend_v6_data: "null".into(),
    };
    let options = KubeOptions {
        api_url: None,
        kubeconfig: Some(api.agent_kubeconfig.clone()),
        annotation_prefix: PREFIX.to_owned(),
    };
    let names = [
        flanneld_node.node_name().to_owned(),
        lab.node(second).node_name().to_owned(),
    ];
    let run_dir = lab.state.run_dir.clone();

    // The client runs where an agent runs: in a node's network namespace.
    netns::in_netns(&flanneld_node.ns, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async {
                let client = client(&options).await?;
                let keys = AnnotationKeys::new(&options.annotation_prefix)?;
                announce_as_flanneld_does(&client, &keys, &api, &reference, &ours).await?;
                follow_every_node(client, &api, &run_dir, &names).await
            })
    })
    .unwrap();
}

fn key(name: &str) -> String {
    format!("{PREFIX}/{name}")
}

/// The flannel annotations of a Node object.
fn flannel_annotations(node: &Value) -> BTreeMap<String, String> {
    annotations(node)
        .into_iter()
        .filter(|(key, _)| key.starts_with(&format!("{PREFIX}/")))
        .collect()
}

fn annotations(node: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(node["metadata"]["annotations"].clone()).unwrap_or_default()
}

/// The `NetworkUnavailable` condition of a Node object.
fn network_unavailable(node: &Value) -> Result<Value> {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|condition| condition["type"] == "NetworkUnavailable")
        .cloned()
        .ok_or_else(|| anyhow!("no NetworkUnavailable condition: {node}"))
}

/// `kubectl` as the lab's admin, off the runtime's thread so the follower
/// keeps running meanwhile.
async fn admin(api: &KubeState, args: &[&str]) -> Result<String> {
    let api = api.clone();
    let args: Vec<String> = args.iter().map(|&arg| arg.to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        api.admin(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await?
}

async fn node(api: &KubeState, name: &str) -> Result<Value> {
    let out = admin(api, &["get", "node", name, "-o", "json"]).await?;
    Ok(serde_json::from_str(&out)?)
}

async fn announce_as_flanneld_does(
    client: &Client,
    keys: &AnnotationKeys,
    api: &KubeState,
    reference: &Value,
    ours: &Announcement,
) -> Result<()> {
    let kubelet_annotations = annotations(&node(api, TWIN).await?);

    // The annotations, byte for byte as flanneld's on its own Node; the
    // kubelet's left as they were.
    let peers_see = publish(client, keys, TWIN, ours).await?;
    assert_eq!(peers_see, ours.public_ip);
    let twin = node(api, TWIN).await?;
    assert_eq!(flannel_annotations(&twin), flannel_annotations(reference));
    let mut expected = kubelet_annotations.clone();
    expected.extend(flannel_annotations(reference));
    assert_eq!(annotations(&twin), expected);

    // Nothing differs: no patch (the object's version stays).
    let version = twin["metadata"]["resourceVersion"].clone();
    publish(client, keys, TWIN, ours).await?;
    assert_eq!(
        node(api, TWIN).await?["metadata"]["resourceVersion"],
        version
    );

    // The condition, as flanneld's on its own Node.
    set_network_available(client, TWIN).await?;
    let ours_condition = network_unavailable(&node(api, TWIN).await?)?;
    let theirs_condition = network_unavailable(reference)?;
    for field in ["type", "status", "reason", "message"] {
        assert_eq!(ours_condition[field], theirs_condition[field], "{field}");
    }
    let go_time = regex_lite_time();
    for field in ["lastHeartbeatTime", "lastTransitionTime"] {
        for condition in [&ours_condition, &theirs_condition] {
            let time = condition[field].as_str().unwrap_or_default();
            assert!(go_time(time), "{field}: {condition}");
        }
    }

    // The operator's public-ip-overwrite is what peers are told.
    admin(
        api,
        &[
            "annotate",
            "node",
            TWIN,
            &format!("{}=203.0.113.7", keys.public_ip_overwrite),
        ],
    )
    .await?;
    let peers_see = publish(client, keys, TWIN, ours).await?;
    assert_eq!(peers_see, Ipv4Addr::new(203, 0, 113, 7));
    assert_eq!(
        annotations(&node(api, TWIN).await?)[&keys.public_ip],
        "203.0.113.7"
    );
    // A hostile one is refused, naming the Node, the annotation and value.
    admin(
        api,
        &[
            "annotate",
            "--overwrite",
            "node",
            TWIN,
            &format!("{}=203.0.113.7;rm", keys.public_ip_overwrite),
        ],
    )
    .await?;
    let error = format!("{:#}", publish(client, keys, TWIN, ours).await.unwrap_err());
    assert_eq!(
        error,
        format!(
            "cannot announce this node on Node {TWIN}: the annotation {} is \"203.0.113.7;rm\", \
             not an IPv4 address",
            keys.public_ip_overwrite
        )
    );
    admin(
        api,
        &[
            "annotate",
            "node",
            TWIN,
            &format!("{}-", keys.public_ip_overwrite),
        ],
    )
    .await?;
    publish(client, keys, TWIN, ours).await?;
    assert_eq!(
        flannel_annotations(&node(api, TWIN).await?),
        flannel_annotations(reference)
    );

    // The API server's own words when it refuses.
    let error = format!(
        "{:#}",
        publish(client, keys, "kc-ghost", ours).await.unwrap_err()
    );
    assert_eq!(
        error,
        "cannot read Node kc-ghost: nodes \"kc-ghost\" not found (NotFound, HTTP 404)"
    );
    Ok(())
}

/// Go's `metav1.Time` in JSON: RFC 3339, whole seconds, UTC.
fn regex_lite_time() -> impl Fn(&str) -> bool {
    |time: &str| {
        let bytes = time.as_bytes();
        bytes.len() == 20
            && bytes.iter().enumerate().all(|(i, &byte)| match i {
                4 | 7 => byte == b'-',
                10 => byte == b'T',
                13 | 16 => byte == b':',
                19 => byte == b'Z',
                _ => byte.is_ascii_digit(),
            })
    }
}

async fn follow_every_node(
    client: Client,
    api: &KubeState,
    run_dir: &Path,
    flanneld_nodes: &[String],
) -> Result<()> {
    let (sender, mut events) = mpsc::unbounded_channel();
    let mut follower = NodeFollower::new(client);
    // As the agent loop will: `next()` in a select beside a timer that
    // fires every 50 ms, so it is cancelled again and again (mid-request,
    // mid-backoff); nothing may be lost or restarted by that.
    let follow = tokio::spawn(async move {
        loop {
            tokio::select! {
                batch = follower.next() => {
                    if sender.send(batch).is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    });
    let result = follow_steps(api, run_dir, flanneld_nodes, &mut events).await;
    follow.abort();
    result
}

async fn follow_steps(
    api: &KubeState,
    run_dir: &Path,
    flanneld_nodes: &[String],
    events: &mut mpsc::UnboundedReceiver<Vec<NodeEvent>>,
) -> Result<()> {
    let mut everyone: Vec<String> = flanneld_nodes.to_vec();
    everyone.push(TWIN.to_owned());
    everyone.sort();

    // The first listing: every Node, as the API server holds it.
    let listing = next_listing(events).await?;
    assert_eq!(names(&listing), everyone);
    let twin = listing.iter().find(|node| node.name == TWIN).unwrap();
    let object = node(api, TWIN).await?;
    assert_eq!(twin.uid, object["metadata"]["uid"].as_str().unwrap());
    assert_eq!(twin.pod_cidr.as_deref(), Some("10.244.200.0/24"));
    assert_eq!(twin.pod_cidrs, ["10.244.200.0/24"]);
    assert_eq!(twin.annotations, annotations(&object));
    let created: k8s_openapi::jiff::Timestamp = object["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .parse()?;
    assert_eq!(twin.created, created.as_second());

    // A Node added, annotated, deleted: one event each.
    admin_create_node(api, ADDED).await?;
    let added = next_change(events, ADDED).await?;
    assert!(matches!(added, NodeEvent::Applied(_)), "{added:?}");
    admin(api, &["annotate", "node", ADDED, "example.com/kc=1"]).await?;
    let NodeEvent::Applied(annotated) = next_change(events, ADDED).await? else {
        bail!("an annotated Node is not Applied");
    };
    assert_eq!(
        annotated
            .annotations
            .get("example.com/kc")
            .map(String::as_str),
        Some("1")
    );
    admin(api, &["delete", "node", ADDED]).await?;
    let deleted = next_change(events, ADDED).await?;
    assert!(matches!(deleted, NodeEvent::Deleted(_)), "{deleted:?}");

    // The API server restarts: the follower re-lists once it is back.
    let metrics = || weft_agent::metrics::global().render(false);
    assert!(has_line(&metrics(), "weft_kube_api_connected 1"));
    let relists_before = counter(&metrics(), "weft_node_watch_relists_total");
    {
        let api = api.clone();
        let run_dir = run_dir.to_owned();
        tokio::task::spawn_blocking(move || restart_apiserver(&api, &run_dir)).await??;
    }
    let listing = next_listing(events).await?;
    assert_eq!(names(&listing), everyone);
    let text = metrics();
    assert!(has_line(&text, "weft_kube_api_connected 1"), "{text}");
    assert_eq!(
        counter(&text, "weft_node_watch_relists_total"),
        relists_before + 1,
        "{text}"
    );
    assert!(
        counter(
            &text,
            "weft_kube_api_errors_total{operation=\"list_watch\"}"
        ) >= 1,
        "{text}"
    );
    // And it follows on from there.
    admin(api, &["annotate", "node", TWIN, "example.com/kc=2"]).await?;
    let NodeEvent::Applied(twin) = next_change(events, TWIN).await? else {
        bail!("an annotated Node is not Applied");
    };
    assert_eq!(
        twin.annotations.get("example.com/kc").map(String::as_str),
        Some("2")
    );
    Ok(())
}

async fn admin_create_node(api: &KubeState, name: &str) -> Result<()> {
    let api = api.clone();
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        api.register_node(&NodeRegistration {
            name: &name,
            internal_ip: "192.0.2.10",
            pod_cidr: "10.244.201.0/24",
        })
    })
    .await?
}

fn names(nodes: &[NodeRecord]) -> Vec<String> {
    let mut names: Vec<String> = nodes.iter().map(|node| node.name.clone()).collect();
    names.sort();
    names
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

const WAIT: Duration = Duration::from_secs(120);

async fn next_batch(
    events: &mut mpsc::UnboundedReceiver<Vec<NodeEvent>>,
    deadline: Instant,
) -> Result<Vec<NodeEvent>> {
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::timeout(left, events.recv())
        .await
        .map_err(|_| anyhow!("no Node event within {WAIT:?}"))?
        .ok_or_else(|| anyhow!("the follower stopped"))
}

/// The next full listing (changes before it are skipped).
async fn next_listing(
    events: &mut mpsc::UnboundedReceiver<Vec<NodeEvent>>,
) -> Result<Vec<NodeRecord>> {
    let deadline = Instant::now() + WAIT;
    loop {
        for event in next_batch(events, deadline).await? {
            if let NodeEvent::Listing(nodes) = event {
                return Ok(nodes);
            }
        }
    }
}

/// The next change to the Node `name` (other Nodes' changes are skipped; a
/// listing here is a failure: nothing should have broken the watch).
async fn next_change(
    events: &mut mpsc::UnboundedReceiver<Vec<NodeEvent>>,
    name: &str,
) -> Result<NodeEvent> {
    let deadline = Instant::now() + WAIT;
    loop {
        for event in next_batch(events, deadline).await? {
            match &event {
                NodeEvent::Listing(_) => bail!("an unexpected re-list while waiting for {name}"),
                NodeEvent::Applied(node) | NodeEvent::Deleted(node) if node.name == name => {
                    return Ok(event);
                }
                _ => {}
            }
        }
    }
}

/// Stops the lab's kube-apiserver, leaves it down a few seconds, and
/// starts it again with the same arguments (same certificates, tokens and
/// etcd data); the lab's teardown stops the new one.
fn restart_apiserver(api: &KubeState, run_dir: &Path) -> Result<()> {
    let pid_file = run_dir.join("kube-apiserver.pid");
    let pid = process::running_pid(&pid_file).context("kube-apiserver is not running")?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    let mut argv = cmdline
        .split(|byte| *byte == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned());
    let program = argv.next().context("kube-apiserver has no argv")?;
    let args: Vec<String> = argv.collect();
    process::stop(&pid_file, Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_secs(3));
    let mut command = netns::command(&api.ns, &program)?;
    command.args(&args);
    let log = run_dir.join("kube").join("kube-apiserver-restarted.log");
    process::spawn_daemon(command, &log, &pid_file)?;
    process::wait_ready(
        "kube-apiserver",
        &pid_file,
        &log,
        Duration::from_secs(90),
        || {
            api.admin(&["get", "--raw", "/readyz"])
                .is_ok_and(|out| out.trim() == "ok")
        },
    )
}
