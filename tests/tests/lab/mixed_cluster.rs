//! Stock flanneld and weft in one cluster, and a node moved from flanneld to
//! weft and back the way docs/operating.md ("Replacing flanneld on a node")
//! says, with the reference flanneld built from flannel's source.

use std::{
    thread,
    time::{Duration, Instant},
};

use weft_common::{CounterId, Hook, Reason};
use weft_tests::{
    Dataplane, Lab, LabSpec, NodeId, inspect,
    lab::{self, DECAP_COUNTERS, counter_delta, counters_delta},
    netns, privileged,
    privileged::reference_flanneld,
};

const TRANSFER: u64 = 200 * 1024 * 1024;
const ENCAP: CounterId = Hook::TcPodEgress.counter(Reason::Encap);

#[test]
fn a_flanneld_node_and_weft_nodes_reach_each_other_and_weft_carries_its_side() {
    const TEST: &str = "a_flanneld_node_and_weft_nodes_reach_each_other_and_weft_carries_its_side";
    let _guard = privileged!(TEST);
    let Some(flanneld) = reference_flanneld(TEST) else {
        return;
    };
    let (stock, weft, other_weft) = (NodeId::new(1), NodeId::new(2), NodeId::new(3));
    let mut spec = LabSpec::new("t-mixed", 3, 2);
    spec.node_dataplanes = vec![Dataplane::Flanneld, Dataplane::Ebpf, Dataplane::Ebpf];
    spec.flanneld_bin = Some(flanneld);
    let lab = Lab::up(&spec).unwrap();
    assert!(
        std::fs::read_to_string(lab.node(stock).agent_log.as_ref().unwrap())
            .unwrap()
            .contains("watching for new subnet leases"),
        "node 1 does not run flanneld"
    );

    lab.warm_up().unwrap();
    lab.assert_all_pairs_ping(5);

    let flanneld_pod = lab.node(stock).pods[0].clone();
    let weft_pod = lab.node(weft).pods[0].clone();
    lab.assert_bulk_both_ways_with_flanneld(weft, &weft_pod, &flanneld_pod, TRANSFER);

    // flanneld sees weft's leases as its own kind: a route and a VTEP entry
    // for each weft node on its flannel.1.
    for node in [weft, other_weft] {
        let subnet = &lab.node(node).subnet;
        let routes = inspect::routes_to(&lab.node(stock).ns, subnet).unwrap();
        assert!(
            routes.iter().any(|route| route["dev"] == "flannel.1"),
            "flanneld has no flannel.1 route to {subnet}: {routes:?}"
        );
    }
}

#[test]
fn a_node_moves_from_flanneld_to_weft_and_back_keeping_its_subnet_vtep_and_pods() {
    const TEST: &str =
        "a_node_moves_from_flanneld_to_weft_and_back_keeping_its_subnet_vtep_and_pods";
    let _guard = privileged!(TEST);
    let Some(flanneld) = reference_flanneld(TEST) else {
        return;
    };
    let (moving, staying) = (NodeId::new(1), NodeId::new(2));
    let mut spec = LabSpec::new("t-migrate", 2, 1);
    spec.dataplane = Dataplane::Flanneld;
    spec.flanneld_bin = Some(flanneld);
    let mut lab = Lab::up(&spec).unwrap();
    lab.warm_up().unwrap();
    let identity = NodeIdentity::of(&lab, moving);
    let pods = pod_addresses(&lab, moving);
    let target = lab.node(moving).pods[0].clone();
    let source = lab.node(staying).pods[0].clone();

    // flanneld -> weft, with a ping running across the swap.
    let swap = ping_across(&source.ns, target.ip(), || {
        lab.replace_agent(moving, Dataplane::Ebpf).unwrap();
    });
    println!(
        "flanneld -> weft: {} of {} pings lost; neither agent ran for {:?} ({} pings)",
        swap.lost, swap.sent, swap.gap, swap.sent_in_gap
    );
    swap.assert_no_outage("flanneld -> weft");
    assert_eq!(NodeIdentity::of(&lab, moving), identity);
    assert_eq!(pod_addresses(&lab, moving), pods);
    // weft carries the node's traffic now.
    let before = lab.counters(moving).unwrap();
    lab.assert_all_pairs_ping(20);
    let after = lab.counters(moving).unwrap();
    assert!(counter_delta(&before, &after, ENCAP).0 >= 10);
    assert!(counters_delta(&before, &after, &DECAP_COUNTERS).0 >= 10);

    // weft -> flanneld: it finds its lease again.
    let back = ping_across(&source.ns, target.ip(), || {
        lab.replace_agent(moving, Dataplane::Flanneld).unwrap();
    });
    println!(
        "weft -> flanneld: {} of {} pings lost; neither agent ran for {:?} ({} pings)",
        back.lost, back.sent, back.gap, back.sent_in_gap
    );
    back.assert_no_outage("weft -> flanneld");
    assert_eq!(NodeIdentity::of(&lab, moving), identity);
    assert_eq!(pod_addresses(&lab, moving), pods);
    lab.assert_all_pairs_ping(5);
}

/// What must survive a swap: the lease's subnet and VTEP MAC in etcd, the
/// subnet in subnet.env, flannel.1's MAC.
#[derive(Debug, PartialEq)]
struct NodeIdentity {
    lease_key: String,
    vtep_mac: String,
    subnet_env_subnet: String,
    flannel_1_mac: String,
}

impl NodeIdentity {
    fn of(lab: &Lab, node: NodeId) -> Self {
        let state = lab.node(node);
        let leases = lab
            .etcd()
            .get_prefix(&format!("{}/subnets/", lab::ETCD_PREFIX))
            .unwrap();
        let (lease_key, value) = leases
            .into_iter()
            .find(|(_, value)| value.contains(&format!("\"PublicIP\":\"{}\"", state.ip)))
            .unwrap_or_else(|| panic!("no lease for {}", state.ip));
        let value: serde_json::Value = serde_json::from_str(&value).unwrap();
        let subnet_env = std::fs::read_to_string(&state.subnet_file).unwrap();
        let link = inspect::link(&state.ns, "flannel.1").unwrap().unwrap();
        Self {
            lease_key,
            vtep_mac: value["BackendData"]["VtepMAC"].as_str().unwrap().to_owned(),
            subnet_env_subnet: subnet_env
                .lines()
                .find(|line| line.starts_with("FLANNEL_SUBNET="))
                .unwrap()
                .to_owned(),
            flannel_1_mac: link["address"].as_str().unwrap().to_owned(),
        }
    }
}

fn pod_addresses(lab: &Lab, node: NodeId) -> Vec<Vec<String>> {
    lab.node(node)
        .pods
        .iter()
        .map(|pod| inspect::addresses(&pod.ns, "eth0").unwrap())
        .collect()
}

struct PingAcross {
    sent: u64,
    lost: u64,
    gap: Duration,
    sent_in_gap: u64,
}

const PING_INTERVAL: Duration = Duration::from_millis(10);

impl PingAcross {
    /// No outage across the swap: fewer than half the pings sent while
    /// neither agent ran are lost (an outage lasting the swap loses them
    /// all; the kernel path stays programmed, so in quiet runs none is
    /// lost), and the swap long enough for that bound to tell.
    fn assert_no_outage(&self, what: &str) {
        assert!(
            self.sent_in_gap >= 10,
            "{what}: the swap took {:?}, too short to tell an outage from a loss",
            self.gap
        );
        // The kernel path stays programmed and the overlay guard keeps the
        // peers the fdb sends to: nothing needs to be lost (0 measured),
        // a few allowed for a loaded machine.
        assert!(
            self.lost <= 3,
            "{what}: {} of {} pings lost ({} sent while neither agent ran)",
            self.lost,
            self.sent,
            self.sent_in_gap
        );
    }
}

/// Pings `to` from `from` every 10 ms from 2 s before `swap` until 2 s after
/// it; `gap` is how long `swap` took (one agent stopped until the other was
/// ready), and `sent_in_gap` the pings sent meanwhile.
fn ping_across(from: &str, to: &str, swap: impl FnOnce()) -> PingAcross {
    let margin = Duration::from_secs(2);
    let (ns, to) = (from.to_owned(), to.to_owned());
    let pinger = thread::spawn(move || {
        // -w: a fixed run whatever is lost (ping then exits non-zero, so its
        // summary is read whatever the status); long enough for the swap.
        let mut ping = netns::command(&ns, "ping").unwrap();
        ping.args(["-q", "-n", "-i", "0.01", "-W", "1", "-w", "15", &to]);
        let output = ping.output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    });
    thread::sleep(margin);
    let started = Instant::now();
    swap();
    let gap = started.elapsed();
    let out = pinger.join().unwrap();
    let (sent, received) = weft_tests::lab::ping_counts(&out);
    PingAcross {
        sent,
        lost: sent - received,
        gap,
        sent_in_gap: (gap.as_millis() / PING_INTERVAL.as_millis()) as u64 + 1,
    }
}
