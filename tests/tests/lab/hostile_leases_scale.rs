//! Trust only what was verified (issue 13), at scale: on the lab, with the
//! real etcd, a listing of 20,000 leases (far over etcd-client's 4 MiB
//! default) is taken whole, watched and programmed.

use std::time::Duration;

use serde_json::Value;
use weft_tests::{
    Lab, LabSpec, NodeId, inspect,
    lab::wait_for,
    leases::{assert_underlay_route_intact, key, log_of},
    netns, privileged,
};

/// How many of the 20,000 leases the lab writes.
const MANY: u32 = 20_000;

/// Lease `i` of [`MANY`]: 10.1.0.0/24 upwards in a 10.0.0.0/8 network
/// (the nodes' own leases are among the first 100 from 10.0.1.0), PublicIPs
/// from 172.16.0.1 on an underlay that does not exist, each value padded to
/// about 450 bytes so the listing is about 10 MB.
fn many_lease(i: u32) -> (String, String) {
    let subnet = std::net::Ipv4Addr::from(u32::from_be_bytes([10, 1, 0, 0]) + (i << 8));
    let public_ip = std::net::Ipv4Addr::from(u32::from_be_bytes([172, 16, 0, 1]) + i);
    let [_, _, c, d] = public_ip.octets();
    let i_bytes = i.to_be_bytes();
    let value = format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:01:{:02x}:{:02x}:{c:02x}:{d:02x}"}},"Padding":"{}"}}"#,
        i_bytes[2],
        i_bytes[3],
        "p".repeat(300)
    );
    (key(&format!("{subnet}-24")), value)
}

/// Routes through flannel.1 in `ns`.
fn vxlan_routes(ns: &str) -> usize {
    inspect::routes(ns)
        .unwrap()
        .iter()
        .filter(|route| route["dev"] == "flannel.1")
        .count()
}

/// How long a node may take to program all of them.
const PROGRAMMED_WITHIN: Duration = Duration::from_secs(180);

#[test]
fn twenty_thousand_leases_are_listed_watched_and_programmed() {
    let _guard = privileged!("twenty_thousand_leases_are_listed_watched_and_programmed");
    let mut spec = LabSpec::new("t-hl-many", 2, 1);
    spec.network_config = Some(r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#.to_owned());
    let mut lab = Lab::up(&spec).unwrap();
    // Node 1 takes them in one listing when it starts again; node 2 follows
    // them as watch events.
    lab.stop_agent(NodeId::new(1), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let leases: Vec<(String, String)> = (0..MANY).map(many_lease).collect();
    lab.etcd().put_many(&leases).unwrap();
    // Ready once the whole listing is programmed: as long as the routes
    // may take, below.
    lab.start_agent_within(NodeId::new(1), PROGRAMMED_WITHIN)
        .unwrap();
    for node in &lab.state.nodes {
        wait_for(
            &format!("{} to route every lease", node.ns),
            PROGRAMMED_WITHIN,
            || Ok(vxlan_routes(&node.ns) == MANY as usize + 1),
        )
        .unwrap_or_else(|error| panic!("{error:#}\n{}", log_of(node)));
        let log = log_of(node);
        assert!(
            !log.contains(": rejected: ") && !log.contains("cannot list"),
            "{}: {log}",
            node.ns
        );
        // PEERS holds 16,384: it fills, says so once, and the rest stay on
        // the kernel path (every pod still reaches every pod below).
        wait_for(
            &format!("{} to fill PEERS", node.ns),
            Duration::from_secs(30),
            || Ok(log_of(node).contains("PEERS is full (16384 entries)")),
        )
        .unwrap();
        assert_eq!(
            log_of(node).matches("PEERS is full").count(),
            1,
            "{}",
            node.ns
        );
        let weft = lab.state.weft_bin.display().to_string();
        let pin_dir = node.pin_dir.display().to_string();
        let peers: Vec<Value> = serde_json::from_str(
            &netns::run_host(&[&weft, "maps", "peers", "--json", "--bpf-pin-dir", &pin_dir])
                .unwrap(),
        )
        .unwrap();
        assert_eq!(peers.len(), 16_384, "{}", node.ns);
        assert!(
            log_of(node).contains("strict VTEP check suspended"),
            "{}",
            node.ns
        );
        assert_underlay_route_intact(node);
    }
    lab.assert_all_pairs_ping(2);
}
