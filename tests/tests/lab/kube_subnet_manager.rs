//! The kube subnet manager against the lab's real kube-apiserver (TLS, RBAC,
//! a ServiceAccount token with exactly kube-flannel.yml's rights): stock
//! flanneld v0.20.2 in `--kube-subnet-mgr` mode, the reference whose Nodes
//! and subnet.env every other test compares with; a weft cluster in kube
//! mode (VXLAN and host-gw); weft and stock flanneld in one cluster; a node
//! moved from flanneld to weft and back; a Node deleted.

use std::{
    collections::BTreeMap,
    io::Read as _,
    path::PathBuf,
    process::{Child, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use weft_common::{CounterId, Hook::TcPodEgress, Reason};
use weft_tests::{
    Backend, Dataplane, Lab, LabSpec, NodeId, SubnetManager, flannel, inspect, kube,
    lab::{
        DECAP_COUNTERS, FLOW_SETUP_PACKETS, HEALTHZ_PORT, HOST_GW_DELIVERY_COUNTERS, counter_delta,
        counters_delta, wait_for,
    },
    netns, privileged,
    privileged::{reference_flanneld, reference_kubernetes},
    process, scrapes,
};

#[test]
fn stock_flanneld_in_kube_mode_annotates_its_node_and_pods_reach_each_other() {
    const TEST: &str = "stock_flanneld_in_kube_mode_annotates_its_node_and_pods_reach_each_other";
    let _guard = privileged!(TEST);
    let Some(flanneld) = reference_flanneld(TEST) else {
        return;
    };
    let Some(kubernetes) = reference_kubernetes(TEST) else {
        return;
    };
    let mut spec = LabSpec::new("t-kb-flannel", 2, 1);
    spec.dataplane = Dataplane::Flanneld;
    spec.subnet_manager = SubnetManager::Kube;
    spec.flanneld_bin = Some(flanneld);
    spec.kubernetes_bin = Some(kubernetes);
    let lab = Lab::up(&spec).unwrap();
    let api = lab.kube().unwrap();

    for node in lab.node_ids() {
        // The lab's expectation of what flanneld writes, checked against
        // flanneld itself: the other tests hold weft to the same helper.
        lab.check_published_as_flanneld(node).unwrap();
        let state = lab.node(node);
        let object = api.node(state.node_name()).unwrap();
        let annotations = &object["metadata"]["annotations"];
        let annotation = |key: &str| {
            annotations[format!("flannel.alpha.coreos.com/{key}")]
                .as_str()
                .unwrap_or_else(|| panic!("{}: no annotation {key}: {annotations}", state.ns))
                .to_owned()
        };
        assert_eq!(annotation("backend-type"), "vxlan");
        assert_eq!(
            annotation("backend-data"),
            format!(
                r#"{{"VNI":1,"VtepMAC":"{}"}}"#,
                flannel::vtep_mac(state).unwrap()
            )
        );
        assert_eq!(annotation("public-ip"), state.ip);
        assert_eq!(annotation("kube-subnet-manager"), "true");
        let conditions = object["status"]["conditions"].as_array().cloned();
        let unavailable = conditions
            .unwrap_or_default()
            .into_iter()
            .find(|condition| condition["type"] == "NetworkUnavailable")
            .unwrap_or_else(|| panic!("{}: no NetworkUnavailable condition: {object}", state.ns));
        assert_eq!(unavailable["status"], "False", "{unavailable}");
        assert_eq!(unavailable["reason"], "FlannelIsUp", "{unavailable}");

        // subnet.env from the Node's podCIDR, as flanneld writes it.
        let pod_cidr = Lab::pod_cidr(node);
        assert_eq!(object["spec"]["podCIDR"], pod_cidr.as_str());
        let env = std::fs::read_to_string(&state.subnet_file).unwrap();
        assert_eq!(
            env,
            format!(
                "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={}/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
                pod_cidr.replace(".0/24", ".1")
            )
        );
    }

    lab.warm_up().unwrap();
    lab.assert_all_pairs_ping(5);

    // The agents hold flanneld's rights and no more; the API server keeps
    // its objects under its own etcd prefix and flannel's etcd prefix stays
    // empty (no agent used etcd).
    assert_eq!(
        api.as_agent(&["auth", "can-i", "patch", "nodes", "--subresource=status"])
            .unwrap()
            .trim(),
        "yes"
    );
    let refused = api.as_agent(&["get", "secrets", "--all-namespaces"]);
    assert!(
        refused
            .as_ref()
            .is_err_and(|error| format!("{error:#}").contains("forbidden")),
        "the agents' token reads secrets: {refused:?}"
    );
    let refused = api.as_agent(&[
        "label",
        "node",
        lab.node(lab.node_ids().next().unwrap()).node_name(),
        "x=y",
    ]);
    assert!(
        refused
            .as_ref()
            .is_err_and(|error| format!("{error:#}").contains("forbidden")),
        "the agents' token updates nodes: {refused:?}"
    );
    let etcd = lab.etcd();
    let nodes = etcd
        .get_prefix(&format!("{}/minions/", kube::ETCD_PREFIX))
        .unwrap();
    assert_eq!(
        nodes.len(),
        2,
        "Node objects in etcd: {:?}",
        nodes.iter().map(|(key, _)| key).collect::<Vec<_>>()
    );
    assert_eq!(etcd.get_prefix("/coreos.com/network/").unwrap(), []);

    // Teardown stops the API server too.
    let pid_file = lab.state.run_dir.join("kube-apiserver.pid");
    let apiserver = process::running_pid(&pid_file).expect("kube-apiserver runs");
    let program = api.bin_dir.join("kube-apiserver").display().to_string();
    let run_dir = lab.state.run_dir.clone();
    drop(lab);
    assert!(
        !process::is_running(apiserver, &program),
        "kube-apiserver (pid {apiserver}) survived teardown"
    );
    assert!(!run_dir.exists(), "{} survived teardown", run_dir.display());
}

// kube-tests-a: weft in kube mode, alone, mixed with stock flanneld, swapped
// with it, and with a Node deleted.

/// A kube-mode lab of `nodes` nodes with `pods` pods each, weft's eBPF
/// dataplane on every node unless the test says otherwise.
fn kube_spec(name: &str, nodes: usize, pods: usize, kubernetes: PathBuf) -> LabSpec {
    let mut spec = LabSpec::new(name, nodes, pods);
    spec.subnet_manager = SubnetManager::Kube;
    spec.kubernetes_bin = Some(kubernetes);
    spec
}

#[test]
fn weft_in_kube_mode_publishes_what_flanneld_does_and_its_fast_path_carries_every_pair() {
    const TEST: &str =
        "weft_in_kube_mode_publishes_what_flanneld_does_and_its_fast_path_carries_every_pair";
    let _guard = privileged!(TEST);
    let Some(kubernetes) = reference_kubernetes(TEST) else {
        return;
    };
    let lab = Lab::up(&kube_spec("ka-cluster", 3, 2, kubernetes)).unwrap();
    publishes_as_flanneld_and_programs_every_peer(&lab);
    lab.warm_up().unwrap();
    lab.assert_all_pairs_ping(5);
    fast_path_carries_every_node_pair(&lab);
}

#[test]
fn weft_in_kube_mode_with_host_gw_publishes_null_backend_data_and_routes_directly() {
    const TEST: &str =
        "weft_in_kube_mode_with_host_gw_publishes_null_backend_data_and_routes_directly";
    let _guard = privileged!(TEST);
    let Some(kubernetes) = reference_kubernetes(TEST) else {
        return;
    };
    let mut spec = kube_spec("ka-hostgw", 2, 1, kubernetes);
    spec.backend = Backend::HostGw;
    let lab = Lab::up(&spec).unwrap();
    publishes_as_flanneld_and_programs_every_peer(&lab);
    lab.warm_up().unwrap();
    lab.assert_all_pairs_ping(5);
    fast_path_carries_every_node_pair(&lab);
}

/// Every Node carries flanneld's annotations, condition and subnet.env,
/// and every node has every other as a peer, in the kernel and in its maps.
fn publishes_as_flanneld_and_programs_every_peer(lab: &Lab) {
    for node in lab.node_ids() {
        lab.check_published_as_flanneld(node)
            .unwrap_or_else(|error| panic!("{error:#}"));
        for peer in lab.node_ids().filter(|peer| *peer != node) {
            assert_peer_programmed(lab, node, peer);
        }
    }
}

/// `node` holds exactly what flanneld programs for `peer` (one route,
/// and for VXLAN one permanent neighbour and FDB entry to its VTEP MAC)
/// and, where weft's eBPF dataplane runs, the peer in PEERS (and VTEPS).
fn assert_peer_programmed(lab: &Lab, node: NodeId, peer: NodeId) {
    let traces = lab.peer_traces(node, peer).unwrap();
    let (ns, peer_ip) = (&lab.node(node).ns, lab.node(peer).ip.as_str());
    let what = format!("{ns}: peer {peer}: {traces:#?}");
    assert_eq!(traces.routes.len(), 1, "{what}");
    let route = &traces.routes[0];
    let on_link = route["flags"]
        .as_array()
        .is_some_and(|flags| flags.iter().any(|flag| flag == "onlink"));
    let ebpf = lab.node(node).dataplane == Dataplane::Ebpf;
    match lab.state.backend {
        Backend::Vxlan => {
            let mac = flannel::vtep_mac(lab.node(peer)).unwrap();
            let pod_cidr: ipnet::Ipv4Net = lab.node(peer).subnet.parse().unwrap();
            let vtep_address = pod_cidr.network().to_string();
            assert!(
                route["dev"] == "flannel.1" && route["gateway"] == vtep_address.as_str() && on_link,
                "{what}"
            );
            assert!(
                traces.neighbours.len() == 1
                    && traces.neighbours[0]["lladdr"] == mac.as_str()
                    && traces.neighbours[0]["state"][0] == "PERMANENT",
                "{what}"
            );
            assert!(
                traces.fdb.len() == 1
                    && traces.fdb[0]["mac"] == mac.as_str()
                    && traces.fdb[0]["state"] == "permanent",
                "{what}"
            );
            if ebpf {
                assert!(
                    traces.peers.len() == 1
                        && traces.peers[0]["mode"] == "vxlan"
                        && traces.peers[0]["public_ip"] == peer_ip
                        && traces.peers[0]["vni"] == 1
                        && traces.peers[0]["vtep_mac"] == mac.as_str(),
                    "{what}"
                );
                assert_eq!(traces.vteps.len(), 1, "{what}");
            }
        }
        Backend::HostGw => {
            assert!(
                route["dev"] == "eth0" && route["gateway"] == peer_ip,
                "{what}"
            );
            if ebpf {
                assert!(
                    traces.peers.len() == 1
                        && traces.peers[0]["mode"] == "host-gw"
                        && traces.peers[0]["public_ip"] == peer_ip,
                    "{what}"
                );
            }
        }
    }
}

/// The counters of what the fast path sends to a peer and delivers from
/// one, for the lab's backend.
fn fast_path_counters(backend: Backend) -> (CounterId, &'static [CounterId]) {
    match backend {
        Backend::Vxlan => (TcPodEgress.counter(Reason::Encap), &DECAP_COUNTERS),
        Backend::HostGw => (
            TcPodEgress.counter(Reason::HostGw),
            &HOST_GW_DELIVERY_COUNTERS,
        ),
    }
}

/// 20 pings between pods of every ordered pair of nodes: all answered, all
/// but the flow's set-up sent and delivered by the eBPF programs, and the
/// kernel's path (flannel.1, or the routing table with host-gw) idle on
/// both nodes but for that set-up.
fn fast_path_carries_every_node_pair(lab: &Lab) {
    const PINGS: u32 = 20;
    let (egress, delivery) = fast_path_counters(lab.state.backend);
    for from in lab.node_ids() {
        for to in lab.node_ids().filter(|to| *to != from) {
            let (source, target) = (
                lab.node(from).pods[0].clone(),
                lab.node(to).pods.last().unwrap().clone(),
            );
            let before = [lab.counters(from).unwrap(), lab.counters(to).unwrap()];
            let kernel_before = [kernel_path_packets(lab, from), kernel_path_packets(lab, to)];
            let out = lab.ping(&source, target.ip(), PINGS).unwrap();
            assert!(out.contains(&format!("{PINGS} received")), "{out}");
            let after = [lab.counters(from).unwrap(), lab.counters(to).unwrap()];
            let kernel_after = [kernel_path_packets(lab, from), kernel_path_packets(lab, to)];
            let (sent, _) = counter_delta(&before[0], &after[0], egress);
            let (delivered, _) = counters_delta(&before[1], &after[1], delivery);
            assert!(
                sent >= u64::from(PINGS) - FLOW_SETUP_PACKETS
                    && delivered >= u64::from(PINGS) - FLOW_SETUP_PACKETS,
                "{from} -> {to}: of {PINGS} pings, {from} sent {sent} by {egress}, \
                 {to} delivered {delivered} by {delivery:?}"
            );
            for (node, (was, is)) in [from, to]
                .into_iter()
                .zip(kernel_before.into_iter().zip(kernel_after))
            {
                assert!(
                    is - was <= 2 * FLOW_SETUP_PACKETS,
                    "{from} -> {to}: the kernel's path on {node} carried {} of the {} packets",
                    is - was,
                    2 * PINGS
                );
            }
        }
    }
}

/// Packets the kernel's own path carried on `node` so far: what flannel.1
/// sent and received (VXLAN), or what the routing table forwarded (host-gw).
fn kernel_path_packets(lab: &Lab, node: NodeId) -> u64 {
    let ns = &lab.node(node).ns;
    match lab.state.backend {
        Backend::Vxlan => {
            let (rx, tx) = inspect::packet_counts(ns, "flannel.1").unwrap();
            rx + tx
        }
        Backend::HostGw => inspect::forwarded_datagrams(ns).unwrap(),
    }
}

/// 100 MiB each way between a stock flanneld node and a weft node.
const TRANSFER: u64 = 100 * 1024 * 1024;

#[test]
fn stock_flanneld_and_weft_in_kube_mode_reach_each_other_and_publish_alike() {
    const TEST: &str = "stock_flanneld_and_weft_in_kube_mode_reach_each_other_and_publish_alike";
    let _guard = privileged!(TEST);
    let Some(flanneld) = reference_flanneld(TEST) else {
        return;
    };
    let Some(kubernetes) = reference_kubernetes(TEST) else {
        return;
    };
    let (stock, weft) = (NodeId::new(1), NodeId::new(2));
    let mut spec = kube_spec("ka-mixed", 2, 1, kubernetes);
    spec.node_dataplanes = vec![Dataplane::Flanneld, Dataplane::Ebpf];
    spec.flanneld_bin = Some(flanneld);
    let lab = Lab::up(&spec).unwrap();
    let api = lab.kube().unwrap();

    // Both publish what flanneld publishes, and the two Nodes are the same
    // object but for each node's own VTEP MAC and address: no key more or
    // less, the same JSON layout, the same condition.
    publishes_as_flanneld_and_programs_every_peer(&lab);
    let published = |node: NodeId| {
        let state = lab.node(node);
        let object = api.node(state.node_name()).unwrap();
        let mac = flannel::vtep_mac(state).unwrap();
        let annotations: BTreeMap<String, String> = object["metadata"]["annotations"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(key, value)| {
                let value = value.as_str().unwrap();
                let value = value.replace(&mac, "<VtepMAC>");
                let value = if value == state.ip {
                    "<PublicIP>".to_owned()
                } else {
                    value
                };
                (key.clone(), value)
            })
            .collect();
        let mut condition = kube::condition(&object, "NetworkUnavailable").unwrap();
        for stamp in ["lastHeartbeatTime", "lastTransitionTime"] {
            assert!(condition[stamp].is_string(), "{}: {condition}", state.ns);
            condition[stamp] = "<time>".into();
        }
        (annotations, condition)
    };
    assert_eq!(published(weft), published(stock));

    lab.warm_up().unwrap();
    lab.assert_all_pairs_ping(10);
    let (flanneld_pod, weft_pod) = (
        lab.node(stock).pods[0].clone(),
        lab.node(weft).pods[0].clone(),
    );
    lab.assert_bulk_both_ways_with_flanneld(weft, &weft_pod, &flanneld_pod, TRANSFER);
}

#[test]
fn a_kube_mode_node_moves_from_flanneld_to_weft_and_back_keeping_cidr_vtep_and_subnet_env() {
    const TEST: &str =
        "a_kube_mode_node_moves_from_flanneld_to_weft_and_back_keeping_cidr_vtep_and_subnet_env";
    let _guard = privileged!(TEST);
    let Some(flanneld) = reference_flanneld(TEST) else {
        return;
    };
    let Some(kubernetes) = reference_kubernetes(TEST) else {
        return;
    };
    let (moving, staying) = (NodeId::new(1), NodeId::new(2));
    let mut spec = kube_spec("ka-migrate", 2, 1, kubernetes);
    spec.dataplane = Dataplane::Flanneld;
    spec.flanneld_bin = Some(flanneld);
    let mut lab = Lab::up(&spec).unwrap();
    lab.warm_up().unwrap();
    let identity = Identity::of(&lab, moving);
    let (source, target) = (
        lab.node(staying).pods[0].clone(),
        lab.node(moving).pods[0].clone(),
    );

    // flanneld -> weft, pinged from the other node all along.
    let to_weft = swap_under_ping(&mut lab, moving, &source.ns, target.ip(), Dataplane::Ebpf);
    println!("flanneld -> weft: {to_weft}");
    assert_eq!(Identity::of(&lab, moving), identity);
    lab.check_published_as_flanneld(moving)
        .unwrap_or_else(|error| panic!("{error:#}"));
    // weft carries the node's traffic now.
    let before = lab.counters(moving).unwrap();
    lab.assert_all_pairs_ping(20);
    let after = lab.counters(moving).unwrap();
    let (encapsulated, _) = counter_delta(&before, &after, TcPodEgress.counter(Reason::Encap));
    let (decapsulated, _) = counters_delta(&before, &after, &DECAP_COUNTERS);
    assert!(
        encapsulated >= 20 - FLOW_SETUP_PACKETS && decapsulated >= 20 - FLOW_SETUP_PACKETS,
        "weft on {moving} encapsulated {encapsulated} and decapsulated {decapsulated} of 20 pings each way"
    );

    // weft -> flanneld.
    let to_flanneld = swap_under_ping(
        &mut lab,
        moving,
        &source.ns,
        target.ip(),
        Dataplane::Flanneld,
    );
    println!("weft -> flanneld: {to_flanneld}");
    assert_eq!(Identity::of(&lab, moving), identity);
    lab.check_published_as_flanneld(moving)
        .unwrap_or_else(|error| panic!("{error:#}"));
    lab.assert_all_pairs_ping(5);
    // Both swaps measured before either is judged.
    to_weft.assert_bounded_loss("flanneld -> weft");
    to_flanneld.assert_bounded_loss("weft -> flanneld");
}

/// Replaces `node`'s agent by `dataplane`'s while `from` pings `to` every
/// 10 ms, from [`PING_MARGIN`] before the swap to as long after it.
fn swap_under_ping(
    lab: &mut Lab,
    node: NodeId,
    from: &str,
    to: &str,
    dataplane: Dataplane,
) -> PingSummary {
    let ns = lab.node(node).ns.clone();
    let refused_before = guard_refusals(&ns);
    let pinger = Pinger::start(from, to);
    let started = Instant::now();
    lab.replace_agent(node, dataplane).unwrap();
    let mut summary = pinger.finish(started.elapsed());
    summary.guard_refused = guard_refusals(&ns) - refused_before;
    summary
}

/// VXLAN datagrams weft's overlay guard on `ns` has refused as not from a
/// peer (`vxlan_not_a_peer` in table `inet weft`; 0 while weft never ran
/// there): why a swap lost pings, if it did.
fn guard_refusals(ns: &str) -> u64 {
    let Ok(listing) = netns::run(
        ns,
        &["nft", "list", "counter", "inet", "weft", "vxlan_not_a_peer"],
    ) else {
        return 0;
    };
    listing
        .split_whitespace()
        .skip_while(|word| *word != "packets")
        .nth(1)
        .and_then(|packets| packets.parse().ok())
        .unwrap_or_else(|| panic!("{ns}: no packets in {listing}"))
}

/// What must survive a swap of agents: the Node's podCIDR and published
/// VTEP MAC, subnet.env byte for byte, flannel.1's MAC.
#[derive(Debug, PartialEq)]
struct Identity {
    pod_cidr: String,
    backend_data: String,
    subnet_env: String,
    flannel_1_mac: String,
}

impl Identity {
    fn of(lab: &Lab, node: NodeId) -> Self {
        let state = lab.node(node);
        let object = lab.kube().unwrap().node(state.node_name()).unwrap();
        Self {
            pod_cidr: object["spec"]["podCIDR"].as_str().unwrap().to_owned(),
            backend_data: kube::flannel_annotations(&object).unwrap()["backend-data"].clone(),
            subnet_env: std::fs::read_to_string(&state.subnet_file).unwrap(),
            flannel_1_mac: flannel::vtep_mac(state).unwrap(),
        }
    }
}

/// Pings every 10 ms while an agent is swapped.
const PING_INTERVAL: Duration = Duration::from_millis(10);
/// How long the pings run before and after the swap.
const PING_MARGIN: Duration = Duration::from_secs(2);
/// At most this many pings may be lost across a swap. Both agents program
/// the same kernel state, leave it in place when they stop and adopt it
/// when they start, so nothing needs to be lost; an outage lasting the swap
/// (0.3-0.5 s here, 30-50 pings) loses many times more.
const MAX_LOST: u64 = 3;

/// A `ping` running in a pod namespace until [`Pinger::finish`] stops it;
/// killed if the test fails first.
struct Pinger {
    child: Child,
}

impl Pinger {
    /// Starts pinging `to` from `ns` and lets it run for [`PING_MARGIN`].
    fn start(ns: &str, to: &str) -> Self {
        let mut ping = netns::command(ns, "ping").unwrap();
        // -W 1: a reply later than a second counts as lost.
        ping.args(["-q", "-n", "-i", "0.01", "-W", "1", to])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let pinger = Self {
            child: ping.spawn().unwrap(),
        };
        sleep(PING_MARGIN);
        pinger
    }

    /// Pings on for [`PING_MARGIN`] after a swap that took `swap`, then
    /// stops ping (SIGINT: it prints its summary) and reads the summary.
    fn finish(mut self, swap: Duration) -> PingSummary {
        // Replies may take up to -W; the margin covers it.
        sleep(PING_MARGIN);
        let pid = Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, Signal::SIGINT).unwrap();
        let status = self.child.wait().unwrap();
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        // The exit status goes with the output into any complaint.
        let out = format!("{out}(ping: {status})");
        let (sent, received) = weft_tests::lab::ping_counts(&out);
        PingSummary {
            sent,
            lost: sent - received,
            swap,
            guard_refused: 0,
        }
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        // Still running only if the test failed before finish().
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Debug)]
struct PingSummary {
    sent: u64,
    lost: u64,
    /// From the old agent's stop to the new one's readiness.
    swap: Duration,
    /// VXLAN datagrams weft's overlay guard refused meanwhile.
    guard_refused: u64,
}

impl std::fmt::Display for PingSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} pings lost; the swap took {:?} ({} pings); weft's overlay guard \
             refused {} VXLAN datagrams as not from a peer",
            self.lost,
            self.sent,
            self.swap,
            self.sent_during_swap(),
            self.guard_refused
        )
    }
}

impl PingSummary {
    fn sent_during_swap(&self) -> u64 {
        (self.swap.as_millis() / PING_INTERVAL.as_millis()) as u64
    }

    /// At most [`MAX_LOST`] pings lost, over a swap long enough that an
    /// outage lasting it would lose at least four times that.
    fn assert_bounded_loss(&self, what: &str) {
        assert!(
            self.sent_during_swap() >= 4 * MAX_LOST,
            "{what}: {self}: too short to tell an outage from a loss"
        );
        assert!(self.lost <= MAX_LOST, "{what}: {self}");
    }
}

#[test]
fn a_deleted_node_leaves_no_route_neighbour_fdb_or_map_entry_on_the_others() {
    const TEST: &str = "a_deleted_node_leaves_no_route_neighbour_fdb_or_map_entry_on_the_others";
    let _guard = privileged!(TEST);
    let Some(kubernetes) = reference_kubernetes(TEST) else {
        return;
    };
    let lab = Lab::up(&kube_spec("ka-delete", 3, 1, kubernetes)).unwrap();
    let api = lab.kube().unwrap();
    let (gone, staying) = (NodeId::new(3), [NodeId::new(1), NodeId::new(2)]);
    lab.warm_up().unwrap();
    for node in staying {
        assert_peer_programmed(&lab, node, gone);
    }

    // The node is retired as an admin does it: its agent stopped, then
    // `kubectl delete node`.
    lab.stop_agent(gone, Signal::SIGTERM).unwrap();
    let name = lab.node(gone).node_name().to_owned();
    api.delete_node(&name).unwrap();
    assert!(!api.node_names().unwrap().contains(&name));
    // A generous bound (the machine may be shared and slow); the time it
    // took is logged for a human to compare.
    let started = Instant::now();
    for node in staying {
        wait_for(
            &format!("{} to drop every trace of {gone}", lab.node(node).ns),
            Duration::from_secs(20),
            || Ok(lab.peer_traces(node, gone)?.is_empty()),
        )
        .unwrap_or_else(|error| panic!("{error:#}: {:#?}", lab.peer_traces(node, gone).unwrap()));
    }
    eprintln!(
        "the other nodes dropped the deleted Node's routes, neighbour, FDB and map entries in {:?}",
        started.elapsed()
    );

    // The others keep each other, and say so.
    for node in staying {
        let peer = staying.into_iter().find(|peer| *peer != node).unwrap();
        assert_peer_programmed(&lab, node, peer);
        let metrics = netns::in_netns(&lab.node(node).ns, || {
            scrapes::get(HEALTHZ_PORT, "/metrics")
        })
        .unwrap();
        let peers = scrapes::sample(&metrics.body, r#"weft_peers{mode="vxlan"}"#);
        assert_eq!(peers, Some(1.0), "{}: weft_peers", lab.node(node).ns);
    }
    let (first, second) = (
        lab.node(staying[0]).pods[0].clone(),
        lab.node(staying[1]).pods[0].clone(),
    );
    for (from, to) in [(&first, &second), (&second, &first)] {
        let out = lab.ping(from, to.ip(), 10).unwrap();
        assert!(out.contains("10 received"), "{out}");
    }
}
