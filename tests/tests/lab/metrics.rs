//! `/metrics` of a running agent on the lab: Prometheus text that a parser
//! reads line for line, `weft_` names, build info, the agent's view (ready,
//! etcd, peers, map fill) and fast-path packet counters that rise with real
//! pod-to-pod pings and agree with `weft maps stats`.
//!
//! Checked by hand that these tests can fail: with every scrape reading the
//! maps itself, the load test counts 51 readings of 51; with the per-address
//! limit or the connection lifetime taken out, the connection test fails.

use std::{
    io::{Read as _, Write as _},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prometheus_parse::{Sample, Scrape, Value};
use weft_agent::http::METRICS_PATH;
use weft_common::{MAX_ENDPOINTS, MAX_PEERS};
use weft_tests::{
    Lab, LabSpec, NodeId,
    lab::{FLOW_SETUP_PACKETS, HEALTHZ_PORT},
    netns, privileged,
};

/// `GET /metrics` from the agent in `ns`, parsed.
fn scrape(ns: &str) -> Scrape {
    let response = netns::in_netns(ns, || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", HEALTHZ_PORT))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(format!("GET {METRICS_PATH} HTTP/1.0\r\n\r\n").as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    })
    .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    let scrape = Scrape::parse(body.lines().map(|line| Ok(line.to_owned()))).unwrap();
    // Every sample line became a sample: nothing the parser skipped.
    let sample_lines = body
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .count();
    assert_eq!(
        scrape.samples.len(),
        sample_lines,
        "unparsed lines in:\n{body}"
    );
    assert_eq!(
        body.lines().last(),
        Some("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    scrape
}

fn value(sample: &Sample) -> f64 {
    match sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        _ => panic!("{} is not a plain sample", sample.metric),
    }
}

/// The one sample `name` with exactly `labels`.
fn get(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| {
            s.metric == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .collect();
    match found.as_slice() {
        [sample] => value(sample),
        _ => panic!("{} samples {name}{labels:?}", found.len()),
    }
}

#[test]
fn metrics_name_the_agent_state_and_count_fast_path_packets() {
    let _guard = privileged!("metrics_name_the_agent_state_and_count_fast_path_packets");
    let lab = Lab::up(&LabSpec::new("t-metrics", 2, 1)).unwrap();
    lab.warm_up().unwrap();
    let node = lab.node(NodeId::new(1));
    let before = scrape(&node.ns);

    for sample in &before.samples {
        assert!(sample.metric.starts_with("weft_"), "{}", sample.metric);
    }
    let info = before
        .samples
        .iter()
        .find(|s| s.metric == "weft_build_info")
        .expect("weft_build_info");
    assert_eq!(info.labels.get("version"), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(get(&before, "weft_ready", &[]), 1.0);
    assert_eq!(get(&before, "weft_etcd_connected", &[]), 1.0);
    assert_eq!(get(&before, "weft_fastpath_active", &[]), 1.0);
    // One other node, on VXLAN.
    assert_eq!(get(&before, "weft_peers", &[("mode", "vxlan")]), 1.0);
    assert_eq!(get(&before, "weft_peers", &[("mode", "host-gw")]), 0.0);
    // The other node's lease (our own is the agent's, never judged).
    assert!(get(&before, "weft_leases_seen_total", &[]) >= 1.0);
    assert!(get(&before, "weft_leases_accepted_total", &[]) >= 1.0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last_sync = get(&before, "weft_last_sync_timestamp_seconds", &[]);
    assert!(now - last_sync < 120.0, "last sync {last_sync}, now {now}");
    // The pinned maps, read at scrape time: one pod here, one peer subnet.
    let map = |name: &str, map: &str| get(&before, name, &[("map", map)]);
    assert_eq!(map("weft_map_capacity", "PEERS"), f64::from(MAX_PEERS));
    assert_eq!(
        map("weft_map_capacity", "ENDPOINTS"),
        f64::from(MAX_ENDPOINTS)
    );
    assert_eq!(map("weft_map_entries", "ENDPOINTS"), 1.0);
    assert_eq!(map("weft_map_entries", "PEERS"), 1.0);
    // Kernel-path fallbacks are labelled by reason: warm-up pings of new
    // flows went through netfilter first.
    assert!(
        before
            .samples
            .iter()
            .filter(|s| s.metric == "weft_kernel_path_fallbacks_total")
            .any(|s| s.labels.get("reason") == Some("no_verdict") && value(s) > 0.0),
        "no kernel-path fallback with reason no_verdict"
    );

    const PINGS: u64 = 20;
    let (from, to) = (&node.pods[0], &lab.node(NodeId::new(2)).pods[0]);
    let out = lab.ping(from, to.ip(), PINGS as u32).unwrap();
    assert!(out.contains(&format!("{PINGS} received")), "{out}");
    // A scrape within a second of the last one shares its reading.
    let after = fresh_scrape(&node.ns);
    let encap = [("hook", "tc_pod_egress"), ("reason", "encap")];
    let packets = |scrape: &Scrape| get(scrape, "weft_fastpath_packets_total", &encap);
    let rise = packets(&after) - packets(&before);
    assert!(
        rise >= (PINGS - FLOW_SETUP_PACKETS) as f64,
        "weft_fastpath_packets_total{{hook=tc_pod_egress,reason=encap}} rose by {rise} for {PINGS} pings"
    );
    let bytes = get(&after, "weft_fastpath_bytes_total", &encap)
        - get(&before, "weft_fastpath_bytes_total", &encap);
    assert!(
        bytes >= rise * 84.0,
        "{bytes} bytes for {rise} ICMP echo packets"
    );
    // The same STATS slot `weft maps stats` reads, summed over CPUs alike.
    let (stats_packets, _) = lab.counters(NodeId::new(1)).unwrap()
        [&weft_common::Hook::TcPodEgress.counter(weft_common::Reason::Encap)];
    assert_eq!(packets(&after), stats_packets as f64);
    // The receiving side counted its decapsulations too.
    let receiver = scrape(&lab.node(NodeId::new(2)).ns);
    let delivered: f64 = receiver
        .samples
        .iter()
        .filter(|s| s.metric == "weft_fastpath_packets_total")
        .filter(|s| s.labels.get("reason").is_some_and(|r| r == "decap"))
        .map(value)
        .sum();
    assert!(
        delivered >= (PINGS - FLOW_SETUP_PACKETS) as f64,
        "decap {delivered}"
    );
}

/// Synthetic verdicts in FLOWS for the scrape-load test: the load.
const FILLED_FLOWS: u32 = 60_000;
/// Scrapers at once.
const SCRAPERS: usize = 50;

/// `weft_metrics_scrapes_total` by `served` in `scrape`.
fn scrapes_served(scrape: &Scrape) -> [f64; 3] {
    ["computed", "recent", "in_flight"]
        .map(|served| get(scrape, "weft_metrics_scrapes_total", &[("served", served)]))
}

/// A scrape that renders anew: the last rendering is older than the
/// agent's sharing window (`single_flight::RECENT`) and nothing else scrapes.
fn fresh_scrape(ns: &str) -> Scrape {
    weft_tests::scrapes::wait_until_stale();
    scrape(ns)
}

fn slowest(answers: &[anyhow::Result<weft_tests::scrapes::Response>]) -> Option<Duration> {
    answers.iter().flatten().map(|response| response.took).max()
}

#[test]
fn metrics_scrapes_under_load_share_one_bounded_reading() {
    let _guard = privileged!("metrics_scrapes_under_load_share_one_bounded_reading");
    let lab = Lab::up(&LabSpec::new("t-met-scrape", 1, 1)).unwrap();
    let node = lab.node(NodeId::new(1));
    weft_tests::scrapes::fill_flows(&node.pin_dir, FILLED_FLOWS).unwrap();
    let walked = weft_tests::scrapes::flows_walked(&node.pin_dir).unwrap();
    assert!(walked >= u64::from(FILLED_FLOWS), "FLOWS holds {walked}");

    // The batched count agrees with a walk key by key.
    let before = fresh_scrape(&node.ns);
    assert_eq!(
        get(&before, "weft_map_entries", &[("map", "FLOWS")]),
        walked as f64
    );
    let served_before = scrapes_served(&before);

    // The storm finds no recent reading: its scrapes that share one share
    // a reading made during the storm.
    weft_tests::scrapes::wait_until_stale();
    let storm = weft_tests::scrapes::storm(&node.ns, HEALTHZ_PORT, SCRAPERS, 1).unwrap();
    assert_eq!(storm.scrapes.len(), SCRAPERS);
    for answer in &storm.scrapes {
        let response = answer.as_ref().expect("a scrape had no answer");
        assert!(response.status.contains(" 200 "), "{}", response.status);
        let body = &response.body;
        let parsed = Scrape::parse(body.lines().map(|line| Ok(line.to_owned()))).unwrap();
        let sample_lines = body
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .count();
        assert_eq!(
            parsed.samples.len(),
            sample_lines,
            "unparsed lines in:\n{body}"
        );
        assert_eq!(body.lines().last(), Some("# EOF"), "a cut exposition");
        assert_eq!(
            get(&parsed, "weft_map_entries", &[("map", "FLOWS")]),
            walked as f64
        );
    }
    // /healthz kept answering while the scrapes ran.
    assert!(!storm.healthz.is_empty(), "/healthz was never asked");
    for answer in &storm.healthz {
        let response = answer.as_ref().expect("/healthz had no answer");
        assert!(response.status.contains(" 200 "), "{}", response.status);
    }

    // Every scrape is counted by how it was answered; most shared another
    // one's reading of the maps instead of reading them again.
    let after = fresh_scrape(&node.ns);
    let served_after = scrapes_served(&after);
    let [computed, recent, in_flight] =
        [0, 1, 2].map(|index| served_after[index] - served_before[index]);
    eprintln!(
        "{SCRAPERS} scrapes of {walked} flows: {computed} computed (1 before them), {recent} recent, \
         {in_flight} in flight; slowest {:?}; {} /healthz meanwhile, slowest {:?}",
        slowest(&storm.scrapes),
        storm.healthz.len(),
        slowest(&storm.healthz)
    );
    assert_eq!(
        computed + recent + in_flight,
        (SCRAPERS + 1) as f64,
        "the storm's scrapes and the one before it, counted: {served_after:?} - {served_before:?}"
    );
    assert!(
        recent + in_flight >= (SCRAPERS / 2) as f64,
        "{} of {SCRAPERS} concurrent scrapes read the maps themselves",
        computed - 1.0
    );
}

/// Opens a connection from `ns` to `ip`:`HEALTHZ_PORT` and sends nothing.
fn idle_connection(ns: &str, ip: &str) -> std::net::TcpStream {
    let address = format!("{ip}:{HEALTHZ_PORT}");
    netns::in_netns(ns, || Ok(std::net::TcpStream::connect(&address)?)).unwrap()
}

/// What the endpoint answers `GET path` on `stream` (nothing if it closed
/// the connection unanswered).
fn ask(mut stream: std::net::TcpStream, path: &str, wait: Duration) -> String {
    stream.set_read_timeout(Some(wait)).unwrap();
    let _ = stream.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes());
    let mut response = String::new();
    match stream.read_to_string(&mut response) {
        Ok(_) => response,
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => response,
        Err(error) => panic!("no answer and no close within {wait:?}: {error}"),
    }
}

#[test]
fn the_endpoint_bounds_the_connections_a_pod_can_hold() {
    let _guard = privileged!("the_endpoint_bounds_the_connections_a_pod_can_hold");
    use weft_agent::http::listener::{LIFETIME, PER_SOURCE};
    let lab = Lab::up(&LabSpec::new("t-met-conns", 1, 1)).unwrap();
    let node = lab.node(NodeId::new(1));
    let pod = &node.pods[0].ns;
    let refusals =
        |scrape: &Scrape, cause: &str| get(scrape, "weft_http_refusals_total", &[("cause", cause)]);
    let before = fresh_scrape(&node.ns);

    // A pod holds its share of connections open, saying nothing...
    let held: Vec<std::net::TcpStream> = (0..PER_SOURCE)
        .map(|_| idle_connection(pod, &node.ip))
        .collect();
    // ... and its next one is closed unanswered, while the node's own
    // probes are answered.
    let refused = ask(idle_connection(pod, &node.ip), "/healthz", LIFETIME);
    assert!(
        !refused.contains("HTTP/"),
        "answered over the limit: {refused}"
    );
    assert!(weft_tests::lab::http_ok(&node.ns, HEALTHZ_PORT, "/healthz").unwrap());
    let during = fresh_scrape(&node.ns);
    assert_eq!(
        refusals(&during, "per_source_limit") - refusals(&before, "per_source_limit"),
        1.0
    );

    // The agent closes the idle connections at the end of their lifetime
    // (each read ends with the close, not with the read timeout)...
    for mut stream in held {
        let wait = LIFETIME + Duration::from_secs(10);
        stream.set_read_timeout(Some(wait)).unwrap();
        let mut rest = Vec::new();
        match stream.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "{rest:?}"),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(error) => panic!("an idle connection still open after {wait:?}: {error}"),
        }
    }
    let after = fresh_scrape(&node.ns);
    assert_eq!(
        refusals(&after, "lifetime_over") - refusals(&before, "lifetime_over"),
        PER_SOURCE as f64
    );
    // ... and the pod is answered again.
    let answer = ask(idle_connection(pod, &node.ip), "/healthz", LIFETIME);
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
}
