//! The agent on the lab: it loads and attaches the programs on every node,
//! counts real pod-to-pod traffic in STATS, exposes the pinned maps to
//! bpftool with field names, and leaves nothing attached after SIGTERM.

use std::{collections::BTreeMap, time::Duration};
use weft_common::{
    COUNTERS, CounterId,
    Hook::{TcPodEgress, XdpUplink},
    Reason,
};

use nix::sys::signal::Signal;
use serde_json::Value;
use weft_common::program_names::{TC_POD_EGRESS, TC_UPLINK, TC_VERDICT, XDP_UPLINK};
use weft_tests::{Lab, LabSpec, NodeId, lab, netns, privileged};

/// `weft maps stats --json` for a pin dir: counter -> packets.
fn packets(lab: &Lab, node: NodeId) -> BTreeMap<CounterId, u64> {
    let weft = lab.state.weft_bin.display().to_string();
    let pin_dir = lab.node(node).pin_dir.display().to_string();
    let out =
        netns::run_host(&[&weft, "maps", "stats", "--json", "--bpf-pin-dir", &pin_dir]).unwrap();
    let counters: Value = serde_json::from_str(&out).unwrap();
    counters
        .as_array()
        .unwrap()
        .iter()
        .map(|counter| {
            let name = counter["name"].as_str().unwrap();
            let id = COUNTERS
                .iter()
                .find_map(|(id, known)| (*known == name).then_some(*id))
                .unwrap_or_else(|| panic!("weft maps stats lists an unknown counter {name}"));
            // The reason x hook dimensions, as the programs count them.
            assert_eq!(counter["hook"], id.hook.name(), "{counter}");
            assert_eq!(counter["reason"], id.reason.name(), "{counter}");
            (id, counter["packets"].as_u64().unwrap())
        })
        .collect()
}

fn loaded_weft_programs() -> Vec<String> {
    let out = netns::run_host(&["bpftool", "prog", "show", "--json"]).unwrap();
    let programs: Value = serde_json::from_str(&out).unwrap();
    programs
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|program| program["name"].as_str())
        .filter(|name| [XDP_UPLINK, TC_POD_EGRESS, TC_UPLINK, TC_VERDICT].contains(name))
        .map(str::to_owned)
        .collect()
}

#[test]
fn agents_count_pod_traffic_expose_btf_maps_and_detach_on_sigterm() {
    let _guard = privileged!("agents_count_pod_traffic_expose_btf_maps_and_detach_on_sigterm");
    assert!(
        loaded_weft_programs().is_empty(),
        "weft programs loaded before the test: {:?}",
        loaded_weft_programs()
    );
    // XDP forced onto the lab's veth uplinks, so every attachment is covered.
    let mut spec = LabSpec::new("t-agent", 2, 2);
    spec.agent_args.push(lab::XDP_NATIVE.to_owned());
    let lab = Lab::up(&spec).unwrap();

    // Attached where the contract says: XDP and TC on each uplink, TC on
    // each pod veth.
    for node in &lab.state.nodes {
        assert!(
            lab::xdp_attached(&node.ns, "eth0").unwrap(),
            "no XDP on {} eth0",
            node.ns
        );
        assert!(
            lab::tc_attached(&node.ns, "eth0", TC_UPLINK).unwrap(),
            "no TC on {} eth0",
            node.ns
        );
        for pod in &node.pods {
            assert!(lab::tc_attached(&node.ns, &pod.network.host_veth, TC_POD_EGRESS).unwrap());
        }
    }

    // Each agent is ready once its own lease is programmed; the other's
    // lease reaches it a moment later (the full suite once pinged within
    // that moment and lost 48 of 50 echoes). Counted only from then on.
    lab.wait_all_pairs_reach(Duration::from_secs(20)).unwrap();

    // Real traffic: n1-p1 -> n2-p2 and back; every request leaves a pod on
    // n1 and arrives on n2's uplink, every reply the other way round.
    const COUNT: u64 = 50;
    let before = [packets(&lab, NodeId::new(1)), packets(&lab, NodeId::new(2))];
    let counted = lab.all_counters();
    let from = &lab.node(NodeId::new(1)).pods[0];
    let to = &lab.node(NodeId::new(2)).pods[1];
    let out = lab.ping(from, to.ip(), COUNT as u32).unwrap();
    if !out.contains(&format!("{COUNT} received")) {
        // Which path the lost echoes took, and where they were dropped.
        lab.print_counted_since(&counted);
        panic!("{out}");
    }
    let after = [packets(&lab, NodeId::new(1)), packets(&lab, NodeId::new(2))];
    for (node, counter) in [
        (0, TcPodEgress.counter(Reason::Seen)),
        (0, XdpUplink.counter(Reason::Seen)),
        (1, TcPodEgress.counter(Reason::Seen)),
        (1, XdpUplink.counter(Reason::Seen)),
    ] {
        let delta = after[node][&counter] - before[node][&counter];
        assert!(
            delta >= COUNT,
            "node {} {counter} rose by {delta}, expected at least {COUNT}",
            node + 1
        );
    }
    // Seen is not carried: each node encapsulated its pod's packets and
    // delivered the other's, all but the flow's set-up.
    for node in [0, 1] {
        for counter in [
            TcPodEgress.counter(Reason::Encap),
            XdpUplink.counter(Reason::Decap),
        ] {
            let delta = after[node][&counter] - before[node][&counter];
            assert!(
                delta >= COUNT - lab::FLOW_SETUP_PACKETS,
                "node {} {counter} rose by {delta} of {COUNT}",
                node + 1
            );
        }
    }

    // bpftool reads the pinned map with BTF field names.
    let stats_pin = lab
        .node(NodeId::new(1))
        .pin_dir
        .join("STATS")
        .display()
        .to_string();
    let dump: Value = serde_json::from_str(
        &netns::run_host(&["bpftool", "map", "dump", "pinned", &stats_pin, "--json"]).unwrap(),
    )
    .unwrap();
    let slot = &dump[0]["formatted"]["values"][0]["value"];
    let slot = if slot.is_null() {
        &dump[0]["values"][0]["value"]
    } else {
        slot
    };
    assert!(
        slot["packets"].is_u64() && slot["bytes"].is_u64(),
        "no named fields in bpftool's dump: {dump}"
    );

    // SIGTERM: every attachment goes, the programs are unloaded, the maps stay.
    for node in lab.node_ids() {
        lab.stop_agent(node, Signal::SIGTERM).unwrap();
    }
    for node in &lab.state.nodes {
        assert!(
            !lab::xdp_attached(&node.ns, "eth0").unwrap(),
            "XDP still on {} eth0",
            node.ns
        );
        assert!(
            !lab::tc_attached(&node.ns, "eth0", TC_UPLINK).unwrap(),
            "TC still on {} eth0",
            node.ns
        );
        for pod in &node.pods {
            assert!(!lab::tc_attached(&node.ns, &pod.network.host_veth, TC_POD_EGRESS).unwrap());
        }
        assert!(
            node.pin_dir.join("STATS").exists(),
            "STATS pin went with the agent"
        );
        let log = std::fs::read_to_string(node.agent_log.as_ref().unwrap()).unwrap();
        assert!(log.contains("SIGTERM: detaching"), "{log}");
    }
    assert!(
        loaded_weft_programs().is_empty(),
        "programs still loaded: {:?}",
        loaded_weft_programs()
    );
    // Pods keep working without the agent: the kernel path carries them.
    assert!(lab.ping(from, to.ip(), 3).unwrap().contains("3 received"));
}

/// `bpftool map ...` on the host (pinned maps live in its bpffs).
fn bpftool_map(args: &[&str]) -> String {
    let mut all = vec!["bpftool", "map"];
    all.extend_from_slice(args);
    netns::run_host(&all).unwrap()
}

#[test]
fn agent_state_stays_its_own_one_agent_per_pin_dir_repaired_maps_replaced_layouts() {
    let _guard = privileged!(
        "agent_state_stays_its_own_one_agent_per_pin_dir_repaired_maps_replaced_layouts"
    );
    let mut lab = Lab::up(&LabSpec::new("t-agent-state", 2, 1)).unwrap();
    lab.warm_up().unwrap();
    let pin_dir = lab.node(NodeId::new(1)).pin_dir.clone();
    let map = |name: &str| pin_dir.join(name).display().to_string();

    // A second agent on the same pin dir says who holds it, and leaves.
    let first = lab.agent_pid(NodeId::new(1)).unwrap();
    let weft = lab.state.weft_bin.display().to_string();
    let mut second = netns::command(&lab.node(NodeId::new(1)).ns, &weft).unwrap();
    second
        .args(["agent", "--iface", "eth0", "--dataplane", "ebpf"])
        .args(["--subnet-file", "/nonexistent/subnet.env", "--bpf-pin-dir"])
        .arg(&pin_dir);
    let output = second.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("process {first}")) && stderr.contains("one agent per pin dir"),
        "{stderr}"
    );

    // A PEERS entry deleted behind the agent's back comes back.
    let peer_subnet: ipnet::Ipv4Net = lab.node(NodeId::new(2)).subnet.parse().unwrap();
    let [a, b, c, d] = peer_subnet.network().octets();
    let prefix = peer_subnet.prefix_len().to_string();
    let key = [
        prefix.as_str(),
        "0",
        "0",
        "0",
        &a.to_string(),
        &b.to_string(),
        &c.to_string(),
        &d.to_string(),
    ];
    let mut delete = vec!["delete", "pinned"];
    let peers = map("PEERS");
    delete.push(&peers);
    delete.push("key");
    delete.extend_from_slice(&key);
    bpftool_map(&delete);
    let listed = |lab: &Lab| {
        let peers = lab.maps_json(NodeId::new(1), "peers")?;
        anyhow::Ok(peers.to_string().contains(&format!("\"{peer_subnet}\"")))
    };
    assert!(!listed(&lab).unwrap(), "bpftool did not delete the entry");
    lab::wait_for(
        "the agent to restore the deleted PEERS entry",
        Duration::from_secs(15),
        || listed(&lab),
    )
    .unwrap();

    // Pinned maps of another layout (a CONFIG 40 bytes wide, a VTEPS whose
    // value is the one byte it was before it carried the peer's subnet, as
    // older builds made them) are replaced on start, and the fast path
    // works.
    lab.stop_agent(NodeId::new(1), Signal::SIGTERM).unwrap();
    let config = map("CONFIG");
    std::fs::remove_file(&config).unwrap();
    bpftool_map(&[
        "create", &config, "type", "array", "key", "4", "value", "40", "entries", "1", "name",
        "CONFIG",
    ]);
    let vteps = map("VTEPS");
    std::fs::remove_file(&vteps).unwrap();
    bpftool_map(&[
        "create", &vteps, "type", "hash", "key", "4", "value", "1", "entries", "16384", "name",
        "VTEPS",
    ]);
    let peer_ip = lab.node(NodeId::new(2)).ip.clone();
    let octets: Vec<String> = peer_ip.split('.').map(str::to_owned).collect();
    let mut old_entry = vec!["update", "pinned", &vteps, "key"];
    old_entry.extend(octets.iter().map(String::as_str));
    old_entry.extend(["value", "1"]);
    bpftool_map(&old_entry);
    lab.start_agent(NodeId::new(1)).unwrap();
    let log =
        std::fs::read_to_string(lab.node(NodeId::new(1)).agent_log.as_ref().unwrap()).unwrap();
    for name in ["CONFIG", "VTEPS"] {
        assert!(
            log.lines()
                .any(|line| line.contains("pinned map has another layout") && line.contains(name)),
            "no word of the replaced {name} in the log:\n{log}"
        );
    }
    // The new VTEPS carries the peer's subnet, as `weft maps vteps` shows.
    let rows = lab.maps_json(NodeId::new(1), "vteps").unwrap();
    assert_eq!(
        rows,
        serde_json::json!([{
            "source": peer_ip,
            "subnet": lab.node(NodeId::new(2)).subnet,
            "subnets": 1,
        }]),
        "VTEPS after the replacement"
    );
    lab.warm_up().unwrap();
    let before = packets(&lab, NodeId::new(1));
    let (from, to) = (
        lab.node(NodeId::new(1)).pods[0].clone(),
        lab.node(NodeId::new(2)).pods[0].clone(),
    );
    assert!(
        lab.ping(&from, to.ip(), 10)
            .unwrap()
            .contains("10 received")
    );
    let after = packets(&lab, NodeId::new(1));
    assert!(
        after[&TcPodEgress.counter(Reason::Encap)] > before[&TcPodEgress.counter(Reason::Encap)],
        "the fast path did not carry traffic after the layout change"
    );
}

#[test]
fn status_names_the_nodes_interfaces_only_from_the_nodes_namespace() {
    let _guard = privileged!("status_names_the_nodes_interfaces_only_from_the_nodes_namespace");
    let lab = Lab::up(&LabSpec::new("t-lp-status", 1, 1)).unwrap();
    let node = NodeId::FIRST;
    let ns = lab.node(node).ns.clone();
    let veth = lab.node(node).pods[0].network.host_veth.clone();
    let json = |ns: Option<&str>| -> Value {
        serde_json::from_str(&lab.weft_status(node, ns, true).unwrap()).unwrap()
    };
    // In the node's namespace: its uplink, attachments and pod veths.
    let inside = json(Some(&ns));
    assert_eq!(inside["placement"], "this_namespace", "{inside}");
    assert_eq!(inside["uplink"], lab::UPLINK, "{inside}");
    assert_eq!(inside["uplink_tc_attached"], true, "{inside}");
    assert_eq!(inside["pod_veths"][0]["name"], veth.as_str(), "{inside}");
    assert_eq!(
        inside["endpoints"][0]["interface"],
        veth.as_str(),
        "{inside}"
    );
    // From the host's: the same maps, but no interface of the host's is
    // passed off as the node's, and the reader is told where to run.
    let outside = json(None);
    assert_eq!(outside["placement"], "other_namespace", "{outside}");
    assert_eq!(outside["subnet"], inside["subnet"], "{outside}");
    assert_eq!(outside["peers"], inside["peers"], "{outside}");
    for field in ["uplink", "uplink_tc_attached", "xdp_attached"] {
        assert!(outside[field].is_null(), "{field} from the host: {outside}");
    }
    assert!(outside["endpoints"][0]["interface"].is_null(), "{outside}");
    assert_eq!(outside["pod_veths"], serde_json::json!([]), "{outside}");
    let text = lab.weft_status(node, None, false).unwrap();
    assert!(
        text.contains("run inside the node's network namespace")
            && !text.contains("NOT attached")
            && !text.contains(&format!("TC {TC_UPLINK}")),
        "{text}"
    );
    // The agent stopped: nothing uses the maps, so nothing is attached,
    // and no interface is named from anywhere.
    lab.stop_agent(node, Signal::SIGTERM).unwrap();
    for ns in [Some(ns.as_str()), None] {
        let stopped = json(ns);
        assert_eq!(stopped["placement"], "not_loaded", "{stopped}");
        assert_eq!(stopped["uplink_tc_attached"], false, "{stopped}");
        assert!(stopped["uplink"].is_null(), "{stopped}");
    }
}
