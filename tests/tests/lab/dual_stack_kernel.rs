//! The dual-stack kernel path (issue #23), the agent's own code driven in
//! two namespaces joined by a veth: node A programmed by weft's kernel
//! writer (`flannel-v6.1`, IPv6 neighbour, fdb and routes, the overlay
//! guard's IPv6 set), node B by hand as flanneld programs it. Checked the
//! way a user would: `ip`/`bridge` listings, pings between the nodes'
//! flannel-v6 addresses, a DF ping one byte over the overlay MTU refused
//! with "message too long", forged VXLAN over IPv6 from a non-peer address
//! counted and never delivered, and a peer's IPv6 half removed (and stale
//! entries reconciled away) without touching its IPv4 half.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr, UdpSocket},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use ipnet::{IpNet, Ipv6Net};
use weft_agent::{
    config::{Ipv6Network, NetworkConfig},
    dataplane::kernel::KernelDataplane,
    desired::{self, Desired, Inputs, NodeFacts},
    endpoints,
    lease::{
        MacAddr,
        validate::{AcceptedPeer, AcceptedPeerV4, AcceptedPeerV6, PeerBackend},
    },
    net::{self, Uplink},
    overlay_guard::{self, GuardSpec, Members, Refusal},
};
use weft_tests::{
    inspect, netns,
    packets::{eth, vxlan},
    privileged,
};

const A: &str = "k6-kwa";
const B: &str = "k6-kwb";
const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const A_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const A_V6: &str = "fd00:77::1";
const B_V6: &str = "fd00:77::2";
/// On B's uplink too, but named by no lease.
const INTRUDER_V6: &str = "fd00:77::99";
const B_V6_MAC: MacAddr = MacAddr([0x1e, 1, 192, 168, 77, 2]);
const C_V6_MAC: MacAddr = MacAddr([0x1e, 1, 192, 168, 78, 3]);

fn ip6(text: &str) -> Ipv6Addr {
    text.parse().unwrap()
}

/// The two namespaces, deleted when the test ends, also on failure.
struct Nodes;

impl Nodes {
    fn new() -> Result<Self> {
        for ns in [A, B] {
            let _ = netns::delete(ns);
        }
        let nodes = Nodes;
        netns::add(A)?;
        netns::add(B)?;
        netns::run_host(&[
            "ip", "link", "add", "eth0", "netns", A, "type", "veth", "peer", "eth0", "netns", B,
        ])?;
        for (ns, v4, v6) in [
            (A, "192.168.77.1/24", "fd00:77::1/64"),
            (B, "192.168.77.2/24", "fd00:77::2/64"),
        ] {
            netns::run(ns, &["ip", "addr", "add", v4, "dev", "eth0"])?;
            netns::run(ns, &["ip", "addr", "add", v6, "dev", "eth0", "nodad"])?;
            netns::run(ns, &["ip", "link", "set", "eth0", "up"])?;
        }
        netns::run(
            B,
            &[
                "ip",
                "addr",
                "add",
                "fd00:77::99/64",
                "dev",
                "eth0",
                "nodad",
            ],
        )?;
        Ok(nodes)
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for ns in [A, B] {
            if let Err(error) = netns::delete(ns) {
                eprintln!("cannot delete {ns}: {error:#}");
            }
        }
    }
}

fn network() -> NetworkConfig {
    dual_stack(CONFIG)
}

fn dual_stack(json: &str) -> NetworkConfig {
    let mut config = NetworkConfig::parse(json).unwrap();
    config.ipv6 = Some(Ipv6Network {
        network: "fd00:10:244::/56".parse().unwrap(),
        subnet_len: 64,
        subnet_min: ip6("fd00:10:244:1::"),
        subnet_max: ip6("fd00:10:244:ff::"),
    });
    config
}

/// B (on-link) and C (192.168.78.3 / fd00:78::3, not on-link: VXLAN
/// through a router that does not exist here), B with or without its
/// IPv6 half.
fn peers(b_has_v6: bool) -> BTreeMap<IpNet, AcceptedPeer> {
    let v4 = |subnet: &str, public_ip: Ipv4Addr, vtep_mac: [u8; 6]| {
        Some(AcceptedPeerV4 {
            subnet: subnet.parse().unwrap(),
            public_ip,
            backend: PeerBackend::Vxlan {
                vtep_mac: MacAddr(vtep_mac),
            },
        })
    };
    BTreeMap::from([
        (
            "10.244.2.0/24".parse().unwrap(),
            AcceptedPeer {
                v4: v4(
                    "10.244.2.0/24",
                    Ipv4Addr::new(192, 168, 77, 2),
                    [0x0e, 1, 192, 168, 77, 2],
                ),
                v6: b_has_v6.then(|| AcceptedPeerV6 {
                    subnet: "fd00:10:244:2::/64".parse().unwrap(),
                    public_ip: ip6(B_V6),
                    backend: PeerBackend::Vxlan { vtep_mac: B_V6_MAC },
                }),
            },
        ),
        (
            "10.244.3.0/24".parse().unwrap(),
            AcceptedPeer {
                v4: v4(
                    "10.244.3.0/24",
                    Ipv4Addr::new(192, 168, 78, 3),
                    [0x0e, 1, 192, 168, 78, 3],
                ),
                v6: Some(AcceptedPeerV6 {
                    subnet: "fd00:10:244:3::/64".parse().unwrap(),
                    public_ip: ip6("fd00:78::3"),
                    backend: PeerBackend::Vxlan { vtep_mac: C_V6_MAC },
                }),
            },
        ),
    ])
}

/// Node A as the agent is: its devices, and what `desired::compute`
/// makes of `peers` against the namespace's live routes.
struct NodeA {
    kernel: KernelDataplane,
    handle: rtnetlink::Handle,
    facts: NodeFacts,
}

impl NodeA {
    async fn start() -> Result<Self> {
        Self::start_with(network()).await
    }

    async fn start_with(config: NetworkConfig) -> Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        let uplink = net::link_by_name(&handle, "eth0")
            .await?
            .context("no eth0")?;
        let mut kernel = KernelDataplane::new(
            handle.clone(),
            config.clone(),
            uplink.header.index,
            Some(A_V4),
        );
        let vxlan = kernel.ensure_vxlan_device(1500).await?;
        let vxlan_v6 = kernel.ensure_vxlan_v6_device(1500, ip6(A_V6)).await?;
        kernel.set_vxlan_address(&"10.244.1.0/24".parse()?).await?;
        kernel
            .set_vxlan_v6_address(&"fd00:10:244:1::/64".parse()?)
            .await?;
        let facts = NodeFacts {
            network: config,
            public_ip: Some(A_V4),
            uplink_index: uplink.header.index,
            uplink_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            uplink_mtu: 1500,
            vtep_mac: vxlan.map(|device| device.mac),
            public_ipv6: Some(ip6(A_V6)),
            vtep_v6_mac: vxlan_v6.map(|device| device.mac),
            vtep_v6_index: vxlan_v6.map(|device| device.index),
            strict_vteps: true,
            bulk_tcp_via_gro: false,
            uplink_xdp: false,
            verdict_probes: false,
            own_tc_programs: Default::default(),
            accept_mark: 0,
            verdict_ttl_ns: 0,
        };
        Ok(Self {
            kernel,
            handle,
            facts,
        })
    }

    async fn desired(&self, peers: &BTreeMap<IpNet, AcceptedPeer>) -> Result<Desired> {
        let network = self.facts.network.ipv4.as_ref().unwrap().network;
        let network_v6: Ipv6Net = self.facts.network.ipv6.as_ref().unwrap().network;
        let index = self.facts.uplink_index;
        let mut view = endpoints::read_view(
            &self.handle,
            "cni0",
            index,
            &["flannel.1".to_owned()],
            Some(&network),
        )
        .await?;
        view.uplink_routes_v6 =
            endpoints::read_uplink_routes_v6(&self.handle, index, &network_v6).await?;
        view.uplink_neighbours_v6 =
            endpoints::read_uplink_neighbours_v6(&self.handle, index).await?;
        Ok(desired::compute(&Inputs {
            node: &self.facts,
            subnet: Some("10.244.1.0/24".parse()?),
            subnet_v6: Some("fd00:10:244:1::/64".parse()?),
            peers,
            view: &view,
            pods: &BTreeMap::new(),
            pods_v6: &BTreeMap::new(),
            ruleset_generation: 1,
            verdicts_suspended: false,
            listed: true,
            viewed: true,
        }))
    }

    async fn sync(&mut self, peers: &BTreeMap<IpNet, AcceptedPeer>) -> Result<Desired> {
        let desired = self.desired(peers).await?;
        let report = self.kernel.sync(&desired).await;
        if !report.failed.is_empty() {
            bail!("the kernel sync failed: {:?}", report.failed);
        }
        Ok(desired)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Node B programmed by hand as flanneld v0.20.2 programs a dual-stack
/// vxlan node whose one peer is A (`a_mac`: A's flannel-v6.1 MAC).
fn program_b_as_flanneld(a_mac: &str) -> Result<()> {
    let b_mac = B_V6_MAC.to_string();
    for command in [
        vec![
            "ip",
            "link",
            "add",
            "flannel-v6.1",
            "address",
            &b_mac,
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            B_V6,
            "dev",
            "eth0",
            "dstport",
            "8472",
            "nolearning",
        ],
        vec!["ip", "link", "set", "flannel-v6.1", "mtu", "1430", "up"],
        vec![
            "ip",
            "addr",
            "add",
            "fd00:10:244:2::/128",
            "dev",
            "flannel-v6.1",
            "nodad",
        ],
        vec![
            "ip",
            "-6",
            "neigh",
            "replace",
            "fd00:10:244:1::",
            "lladdr",
            a_mac,
            "dev",
            "flannel-v6.1",
            "nud",
            "permanent",
        ],
        vec![
            "bridge",
            "fdb",
            "replace",
            a_mac,
            "dev",
            "flannel-v6.1",
            "dst",
            A_V6,
            "self",
            "permanent",
        ],
        vec![
            "ip",
            "-6",
            "route",
            "replace",
            "fd00:10:244:1::/64",
            "via",
            "fd00:10:244:1::",
            "dev",
            "flannel-v6.1",
            "onlink",
        ],
    ] {
        netns::run(B, &command)?;
    }
    Ok(())
}

/// `ping` from A's flannel-v6 address to B's, DF, `size` bytes of payload:
/// Ok, or Err with what ping printed.
fn ping_b_from_a(size: usize) -> Result<String, String> {
    let size = size.to_string();
    let output = netns::command(A, "ping")
        .unwrap()
        .args([
            "-6",
            "-c",
            "1",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            &size,
            "-I",
            "fd00:10:244:1::",
            "fd00:10:244:2::",
        ])
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(printed)
    } else {
        Err(printed)
    }
}

fn v6_routes(ns: &str) -> Vec<serde_json::Value> {
    let out = netns::run(ns, &["ip", "-j", "-6", "route", "show"]).unwrap();
    serde_json::from_str(&out).unwrap()
}

fn v6_route_to(ns: &str, dst: &str) -> Option<serde_json::Value> {
    v6_routes(ns).into_iter().find(|route| route["dst"] == dst)
}

fn has_neighbour(ns: &str, ip: &str) -> bool {
    inspect::neighbours(ns, "flannel-v6.1")
        .unwrap()
        .iter()
        .any(|entry| entry["dst"] == ip)
}

fn fdb_destinations(ns: &str) -> Vec<String> {
    inspect::fdb(ns, "flannel-v6.1")
        .unwrap()
        .iter()
        .filter_map(|entry| entry["dst"].as_str().map(str::to_owned))
        .collect()
}

/// A VXLAN datagram (VNI 1) to A's VXLAN port from `source` on B's uplink,
/// carrying a frame for A's flannel-v6.1 MAC.
fn send_vxlan_to_a(source: &str, a_mac: MacAddr) {
    let inner = eth(a_mac.0, B_V6_MAC.0, 0x86dd, &[0x60; 48]);
    let datagram = vxlan(1, &inner);
    let source = source.to_owned();
    netns::in_netns(B, move || {
        let socket = UdpSocket::bind((ip6(&source), 0))?;
        socket.send_to(&datagram, (ip6(A_V6), 8472))?;
        Ok(())
    })
    .unwrap();
}

fn not_a_peer_refusals() -> u64 {
    netns::in_netns(A, || {
        Ok(overlay_guard::refusals()?
            .into_iter()
            .find(|(refusal, _)| *refusal == Refusal::NotAPeer)
            .map(|(_, packets)| packets)
            .unwrap())
    })
    .unwrap()
}

fn flannel_v6_received(ns: &str) -> u64 {
    inspect::packet_counts(ns, "flannel-v6.1").unwrap().0
}

/// Waits until `check` holds (a fresh IPv6 address is tentative for about
/// a second while DAD runs).
fn eventually(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let mut last = String::new();
    for _ in 0..20 {
        match check() {
            Ok(()) => return,
            Err(error) => last = error,
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{what}: {last}");
}

#[test]
fn dual_stack_vxlan_kernel_path_programs_guards_and_removes_ipv6_peers() {
    let _guard = privileged!("dual_stack_vxlan_kernel_path_programs_guards_and_removes_ipv6_peers");
    let _nodes = Nodes::new().unwrap();
    let rt = runtime();
    netns::in_netns(A, || {
        rt.block_on(async {
            let mut a = NodeA::start().await?;
            let desired = a.sync(&peers(true)).await?;
            let a_mac = a.facts.vtep_v6_mac.context("no flannel-v6 MAC")?;

            // flannel-v6.1 as flanneld's newVXLANDevice makes it, with
            // the MTU that fits an IPv6 outer header.
            let link = inspect::link(A, "flannel-v6.1")?.context("no flannel-v6.1")?;
            let info = &link["linkinfo"]["info_data"];
            assert_eq!(link["mtu"], 1430, "{link}");
            assert_eq!(
                (
                    info["id"].as_u64(),
                    info["local6"].as_str(),
                    info["port"].as_u64()
                ),
                (Some(1), Some(A_V6), Some(8472)),
                "{link}"
            );
            assert_eq!(info["learning"], false, "{link}");
            let addresses = netns::run(A, &["ip", "-6", "addr", "show", "dev", "flannel-v6.1"])?;
            assert!(addresses.contains("fd00:10:244:1::/128"), "{addresses}");
            let accept_ra =
                std::fs::read_to_string("/proc/sys/net/ipv6/conf/flannel-v6.1/accept_ra")?;
            assert_eq!(accept_ra.trim(), "0");

            // Neighbour, fdb and onlink route per IPv6 half, as
            // vxlan_network.go writes them.
            for (subnet, gateway, public) in [
                ("fd00:10:244:2::/64", "fd00:10:244:2::", B_V6),
                ("fd00:10:244:3::/64", "fd00:10:244:3::", "fd00:78::3"),
            ] {
                let route =
                    v6_route_to(A, subnet).with_context(|| format!("no route to {subnet}"))?;
                assert_eq!(
                    (route["gateway"].as_str(), route["dev"].as_str()),
                    (Some(gateway), Some("flannel-v6.1")),
                    "{route}"
                );
                assert!(route["flags"].to_string().contains("onlink"), "{route}");
                assert!(has_neighbour(A, gateway), "no neighbour {gateway}");
                assert!(
                    fdb_destinations(A).iter().any(|dst| dst == public),
                    "no fdb to {public}"
                );
            }
            assert_eq!(
                desired.members_v6,
                [ip6(B_V6), ip6("fd00:78::3")].into_iter().collect()
            );

            // Real packets: B (flanneld-shaped) and A (weft) talk over
            // VXLAN on the IPv6 underlay; a DF ping the size of the overlay
            // MTU passes, one byte more is refused at the source.
            program_b_as_flanneld(&a_mac.to_string())?;
            eventually("a full-size IPv6 ping across the overlay", || {
                ping_b_from_a(1430 - 48).map(drop)
            });
            let too_big = ping_b_from_a(1430 - 48 + 1).expect_err("one byte over the MTU passed");
            assert!(
                too_big.to_lowercase().contains("message too long"),
                "{too_big}"
            );

            // The overlay guard's IPv6 set: B's PublicIPv6 is heard, the
            // same frame from another address on B's uplink is counted and
            // never reaches flannel-v6.1.
            let spec = GuardSpec {
                bridge: "cni0".into(),
                vxlan_device: Some("flannel.1".into()),
                vxlan_v6_device: Some("flannel-v6.1".into()),
                port: 8472,
            };
            let members = Members {
                v4: desired.members.clone(),
                v6: desired.members_v6.clone(),
            };
            overlay_guard::install(&spec, &members)?;
            let received = flannel_v6_received(A);
            send_vxlan_to_a(B_V6, a_mac);
            eventually("a peer's VXLAN over IPv6 is delivered", || {
                (flannel_v6_received(A) > received)
                    .then_some(())
                    .ok_or_else(|| "flannel-v6.1 received nothing from B".to_owned())
            });
            let (refused, received) = (not_a_peer_refusals(), flannel_v6_received(A));
            send_vxlan_to_a(INTRUDER_V6, a_mac);
            // The peer's frame above arrived within milliseconds.
            std::thread::sleep(Duration::from_millis(500));
            assert_eq!(
                flannel_v6_received(A),
                received,
                "a frame from {INTRUDER_V6}, which no lease names, reached flannel-v6.1"
            );
            assert_eq!(
                not_a_peer_refusals(),
                refused + 1,
                "vxlan_not_a_peer did not count the frame from {INTRUDER_V6}"
            );
            // Peers still talk through the guard.
            ping_b_from_a(56).map_err(anyhow::Error::msg)?;

            // B loses its IPv6 half: its IPv6 entries go, its IPv4 ones and
            // C's IPv6 ones stay.
            a.sync(&peers(false)).await?;
            assert!(v6_route_to(A, "fd00:10:244:2::/64").is_none());
            assert!(!has_neighbour(A, "fd00:10:244:2::"));
            assert!(!fdb_destinations(A).iter().any(|dst| dst == B_V6));
            assert!(v6_route_to(A, "fd00:10:244:3::/64").is_some());
            assert!(!inspect::routes_to(A, "10.244.2.0/24")?.is_empty());

            // Entries no lease explains (left while the agent was away) go
            // at the next full reconcile; an operator's route outside the
            // IPv6 pod network stays.
            let stale_mac = "1e:01:c0:a8:4d:09";
            for command in [
                vec![
                    "ip",
                    "-6",
                    "route",
                    "add",
                    "fd00:10:244:9::/64",
                    "via",
                    "fd00:10:244:9::",
                    "dev",
                    "flannel-v6.1",
                    "onlink",
                    "proto",
                    "boot",
                ],
                vec![
                    "ip",
                    "-6",
                    "neigh",
                    "add",
                    "fd00:10:244:9::",
                    "lladdr",
                    stale_mac,
                    "dev",
                    "flannel-v6.1",
                    "nud",
                    "permanent",
                ],
                vec![
                    "bridge",
                    "fdb",
                    "add",
                    stale_mac,
                    "dev",
                    "flannel-v6.1",
                    "dst",
                    "fd00:77::9",
                    "self",
                    "permanent",
                ],
                vec![
                    "ip",
                    "-6",
                    "route",
                    "add",
                    "fd00:99::/64",
                    "via",
                    "fd00:77::fe",
                    "dev",
                    "eth0",
                ],
            ] {
                netns::run(A, &command)?;
            }
            a.kernel.reread_next_sync();
            a.sync(&peers(false)).await?;
            assert!(v6_route_to(A, "fd00:10:244:9::/64").is_none());
            assert!(!has_neighbour(A, "fd00:10:244:9::"));
            assert!(!fdb_destinations(A).iter().any(|dst| dst == "fd00:77::9"));
            assert!(
                v6_route_to(A, "fd00:99::/64").is_some(),
                "the operator's route went"
            );
            assert!(v6_route_to(A, "fd00:10:244:3::/64").is_some());
            anyhow::Ok(())
        })
    })
    .unwrap();
}

#[test]
fn the_uplink_s_ipv6_address_is_its_first_global_one_or_a_clear_error() {
    let _guard = privileged!("the_uplink_s_ipv6_address_is_its_first_global_one_or_a_clear_error");
    let _nodes = Nodes::new().unwrap();
    let rt = runtime();
    netns::in_netns(A, || {
        rt.block_on(async {
            let (connection, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(connection);
            let uplink = |name: &str, index: u32| Uplink {
                name: name.to_owned(),
                index,
                mtu: 1500,
                mac: MacAddr([0; 6]),
                public_ip: Some(A_V4),
                ipv6: None,
                public_ipv6: None,
                is_veth: true,
            };
            let eth0 = net::link_by_name(&handle, "eth0").await?.context("eth0")?;
            let eth0 = uplink("eth0", eth0.header.index);
            // eth0 also has its link-local address: never the one taken.
            assert_eq!(
                net::uplink_ipv6(&handle, &eth0, None).await?,
                (ip6(A_V6), ip6(A_V6))
            );
            assert_eq!(
                net::uplink_ipv6(&handle, &eth0, Some(ip6("fd00:1::5"))).await?,
                (ip6(A_V6), ip6("fd00:1::5"))
            );
            let lo = net::link_by_name(&handle, "lo").await?.context("lo")?;
            let error = net::uplink_ipv6(&handle, &uplink("lo", lo.header.index), None)
                .await
                .expect_err("lo has only ::1");
            assert!(
                format!("{error:#}").contains("uplink lo has no global unicast IPv6 address"),
                "{error:#}"
            );
            anyhow::Ok(())
        })
    })
    .unwrap();
}

#[test]
fn dual_stack_host_gw_routes_ipv6_subnets_via_the_peers_public_ipv6() {
    let _guard = privileged!("dual_stack_host_gw_routes_ipv6_subnets_via_the_peers_public_ipv6");
    let _nodes = Nodes::new().unwrap();
    // B answers from an address in its IPv6 subnet, routing A's back the
    // way host-gw does.
    for command in [
        vec!["ip", "addr", "add", "fd00:10:244:2::1/128", "dev", "lo"],
        vec![
            "ip",
            "-6",
            "route",
            "add",
            "fd00:10:244:1::/64",
            "via",
            A_V6,
            "dev",
            "eth0",
        ],
    ] {
        netns::run(B, &command).unwrap();
    }
    netns::run(
        A,
        &["ip", "addr", "add", "fd00:10:244:1::1/128", "dev", "lo"],
    )
    .unwrap();
    let rt = runtime();
    netns::in_netns(A, || {
        rt.block_on(async {
            let mut a = NodeA::start_with(dual_stack(
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#,
            ))
            .await?;
            assert!(
                inspect::link(A, "flannel-v6.1")?.is_none(),
                "host-gw has no flannel-v6"
            );
            let mut peers = peers(true);
            for peer in peers.values_mut() {
                peer.v4.as_mut().unwrap().backend = PeerBackend::HostGw;
                peer.v6.as_mut().unwrap().backend = PeerBackend::HostGw;
            }
            let desired = a.desired(&peers).await?;
            assert!(
                desired
                    .unroutable_v6
                    .contains_key(&"fd00:10:244:3::/64".parse()?),
                "C's PublicIPv6 is not on-link: {:?}",
                desired.unroutable_v6
            );
            a.sync(&peers).await?;
            let route = v6_route_to(A, "fd00:10:244:2::/64").context("no route to B's subnet")?;
            assert_eq!(
                (route["gateway"].as_str(), route["dev"].as_str()),
                (Some(B_V6), Some("eth0")),
                "{route}"
            );
            assert!(v6_route_to(A, "fd00:10:244:3::/64").is_none());
            eventually("a ping over the host-gw IPv6 route", || {
                netns::run(
                    A,
                    &[
                        "ping",
                        "-6",
                        "-c",
                        "1",
                        "-W",
                        "1",
                        "-I",
                        "fd00:10:244:1::1",
                        "fd00:10:244:2::1",
                    ],
                )
                .map(drop)
                .map_err(|error| format!("{error:#}"))
            });
            // B loses its IPv6 half: the route goes, its IPv4 route stays.
            peers.values_mut().for_each(|peer| peer.v6 = None);
            a.sync(&peers).await?;
            assert!(v6_route_to(A, "fd00:10:244:2::/64").is_none());
            assert!(!inspect::routes_to(A, "10.244.2.0/24")?.is_empty());
            anyhow::Ok(())
        })
    })
    .unwrap();
}
