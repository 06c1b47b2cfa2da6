//! A real Prometheus scraping the lab's agents sees what an operator must
//! see: the fast path carrying the test's traffic, and a rejected lease.

use std::time::Duration;

use weft_common::{CounterId, Hook, Reason};
use weft_tests::{
    Lab, LabSpec, NodeId,
    lab::{self, FLOW_SETUP_PACKETS, wait_for},
    netns, privileged,
};

#[test]
fn prometheus_sees_fast_path_packets_that_match_the_traffic_and_a_rejected_lease() {
    const TEST: &str =
        "prometheus_sees_fast_path_packets_that_match_the_traffic_and_a_rejected_lease";
    let _guard = privileged!(TEST);
    let mut spec = LabSpec::new("t-prom", 2, 1);
    spec.prometheus = true;
    let lab = Lab::up(&spec).unwrap();
    lab.warm_up().unwrap();
    let (sender, receiver) = (NodeId::new(1), NodeId::new(2));
    let sender_ns = lab.node(sender).ns.clone();
    let encap = format!(
        "weft_fastpath_packets_total{{node=\"{sender_ns}\",hook=\"tc_pod_egress\",reason=\"encap\"}}"
    );
    let before = scraped(
        &lab,
        &encap,
        sender,
        Hook::TcPodEgress.counter(Reason::Encap),
    );
    let decap = format!(
        "sum(weft_fastpath_packets_total{{node=\"{}\",reason=\"decap\"}})",
        lab.node(receiver).ns
    );
    let decap_before_pings = query_sum(&lab, &decap);

    const PINGS: u64 = 50;
    let (from, to) = (&lab.node(sender).pods[0], &lab.node(receiver).pods[0]);
    let out = lab.ping(from, to.ip(), PINGS as u32).unwrap();
    assert!(out.contains(&format!("{PINGS} received")), "{out}");

    // Prometheus's figure is the agent's own STATS figure, once scraped.
    let after = scraped(
        &lab,
        &encap,
        sender,
        Hook::TcPodEgress.counter(Reason::Encap),
    );
    assert!(
        after - before >= (PINGS - FLOW_SETUP_PACKETS) as f64,
        "Prometheus saw {encap} rise by {} for {PINGS} pings",
        after - before
    );
    // The receiver's decapsulations, once its next scrape is in.
    let mut delivered = 0.0;
    wait_for(
        "the receiver's decapsulations in Prometheus",
        Duration::from_secs(15),
        || {
            delivered = query_sum(&lab, &decap) - decap_before_pings;
            Ok(delivered >= (PINGS - FLOW_SETUP_PACKETS) as f64)
        },
    )
    .unwrap_or_else(|error| panic!("{error:#}: Prometheus saw {delivered} decapsulated packets"));

    // `weft maps stats --watch` on the sender while pods ping: per-second
    // rates, with the encapsulations among what moved.
    let pinger = {
        let (from, to) = (from.ns.clone(), to.ip().to_owned());
        std::thread::spawn(move || {
            netns::run(&from, &["ping", "-q", "-n", "-i", "0.01", "-c", "150", &to])
        })
    };
    let pin_dir = lab.node(sender).pin_dir.display().to_string();
    let weft = lab.state.weft_bin.display().to_string();
    let watched = netns::run_host(&[
        &weft,
        "maps",
        "stats",
        "--watch",
        "0.3",
        "--count",
        "3",
        "--bpf-pin-dir",
        &pin_dir,
    ])
    .unwrap();
    pinger.join().unwrap().unwrap();
    let blocks: Vec<&str> = watched
        .split("weft maps stats --watch")
        .filter(|block| !block.trim().is_empty())
        .collect();
    assert_eq!(
        blocks.len(),
        3,
        "three refreshes, one block each:\n{watched}"
    );
    let encap_rate = |block: &str| -> f64 {
        block
            .lines()
            .find(|line| line.starts_with("tc_encap "))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|rate| rate.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(
        blocks.iter().any(|block| encap_rate(block) >= 20.0),
        "no refresh showed tc_encap at the ping's ~100 packets/s:\n{watched}"
    );

    // A lease whose subnet lies outside the network: every agent rejects it,
    // and says so to Prometheus by rule.
    lab.etcd()
        .put(
            &format!("{}/subnets/10.99.1.0-24", lab::ETCD_PREFIX),
            r#"{"PublicIP":"192.168.77.99","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:99"}}"#,
        )
        .unwrap();
    let rejected = "sum by (node) (weft_leases_rejected_total{rule=\"subnet_outside_network\"})";
    wait_for(
        "both agents' rejection in Prometheus",
        Duration::from_secs(15),
        || {
            let samples = lab.query_prometheus(rejected)?;
            Ok(samples.len() == 2 && samples.iter().all(|sample| sample.value >= 1.0))
        },
    )
    .unwrap();
}

/// Waits until Prometheus's last scrape of `promql` equals `counter` as
/// `weft maps stats` reads it on `node` (nothing else moves it meanwhile),
/// and returns that value.
fn scraped(lab: &Lab, promql: &str, node: NodeId, counter: CounterId) -> f64 {
    let mut last = (0.0, 0);
    wait_for(
        &format!("Prometheus to scrape {promql}"),
        Duration::from_secs(15),
        || {
            let stats = lab.counters(node)?.get(&counter).map_or(0, |c| c.0);
            let scraped = query_sum(lab, promql);
            last = (scraped, stats);
            Ok(scraped == stats as f64)
        },
    )
    .unwrap_or_else(|error| panic!("{error:#}; last: Prometheus {}, STATS {}", last.0, last.1));
    last.0
}

fn query_sum(lab: &Lab, promql: &str) -> f64 {
    lab.query_prometheus(promql)
        .unwrap()
        .iter()
        .map(|sample| sample.value)
        .sum()
}
