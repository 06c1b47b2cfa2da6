//! A fast smoke test of the benchmark harness: underlay (node to node, the
//! physical limit), ebpf-vxlan (and stock flanneld's flanneld-vxlan where
//! the reference flanneld exists), tiny
//! durations, no timing assertions; results.json must parse with every field
//! present and positive, the path checks must pass, and the chart, the table
//! and the goals must be written.

// Each integration test is its own crate and sees every dependency of the
// package; the lint is for the library.
#![allow(unused_crate_dependencies)]

use weft_bench as bench;
use weft_tests::{lab::default_weft_bin, privileged::reference_flanneld, privileged_test};

#[test]
fn the_bench_harness_writes_complete_results_for_ebpf_vxlan_and_stock_flanneld() {
    let Some(_guard) = privileged_test(
        "the_bench_harness_writes_complete_results_for_ebpf_vxlan_and_stock_flanneld",
    ) else {
        return;
    };
    let flanneld = reference_flanneld(
        "the_bench_harness_writes_complete_results_for_ebpf_vxlan_and_stock_flanneld (flanneld-vxlan part)",
    );
    let out = std::env::temp_dir().join(format!("weft-bench-smoke-{}", std::process::id()));
    let mut options = bench::BenchOptions::new(true, out.clone(), default_weft_bin());
    // Apart from the labs of a bench run on the same machine (`b-...`).
    options.lab_prefix = "bs".to_owned();
    options.only = vec!["underlay".to_owned(), "ebpf-vxlan".to_owned()];
    if flanneld.is_some() {
        options.only.push("flanneld-vxlan".to_owned());
    }
    options.flanneld_bin = flanneld.clone();
    options.seconds = 0.5;
    options.pings = 50;
    options.extras = false;
    let (results, details) = bench::run(&options, &mut |step| eprintln!("{step}")).unwrap();
    let expected: &[&str] = if flanneld.is_some() {
        &["underlay", "flanneld-vxlan", "ebpf-vxlan"]
    } else {
        &["underlay", "ebpf-vxlan"]
    };
    assert_eq!(
        results
            .iter()
            .map(|result| result.name.as_str())
            .collect::<Vec<_>>(),
        expected
    );
    for result in &results {
        assert!(
            result.invalid.is_none(),
            "{}: {:?}",
            result.name,
            result.invalid
        );
    }

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let configurations = json.as_array().unwrap();
    assert_eq!(configurations.len(), expected.len());
    for (result, name) in configurations.iter().zip(expected) {
        assert_eq!(result["name"], *name);
        let mut fields = vec![
            "icmp_rtt_us_p50",
            "icmp_rtt_us_p99",
            "tcp_rr_same_cpu_us_p50",
            "tcp_rr_same_cpu_us_p99",
            "udp_rr_same_cpu_us_p50",
            "udp_rr_same_cpu_us_p99",
            "tcp_rr_cross_cpu_us_p50",
            "tcp_rr_cross_cpu_us_p99",
            "udp_rr_cross_cpu_us_p50",
            "udp_rr_cross_cpu_us_p99",
            "tcp_rr_tps",
            "udp_pps",
            "tcp_gbps",
            "cpu_s_per_gb",
        ];
        match *name {
            "ebpf-vxlan" => {
                assert_eq!(result["path"], "weft eBPF");
                fields.push("fastpath_packets");
            }
            "underlay" => {
                assert_eq!(result["path"], "node to node");
                assert_eq!(result["fastpath_packets"], 0, "{result}");
            }
            _ => {
                assert_eq!(result["path"], "stock flannel");
                assert_eq!(result["fastpath_packets"], 0, "{result}");
            }
        }
        for field in fields {
            let value = result[field]
                .as_f64()
                .unwrap_or_else(|| panic!("{field} missing or not a number: {result}"));
            assert!(value > 0.0, "{name} {field} = {value}");
        }
        for count in [
            "tcp_retransmits",
            "sender_sack_reorder",
            "sender_ts_reorder",
            "sender_dsack_recv",
            "receiver_dsack_old_sent",
            "receiver_ofo_queue",
            "sender_dsack_segments",
            "drops_into_uplink",
            "drops_out_of_uplink",
            "drops_pod_veths",
            "drops_cpu_backlog",
            "drops_receiver_socket",
        ] {
            assert!(result[count].is_u64(), "{count}: {result}");
        }
    }
    let svg = std::fs::read_to_string(out.join("results.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("ebpf-vxlan"));
    let table = std::fs::read_to_string(out.join("table.txt")).unwrap();
    assert!(table.contains("TCP retransmissions (per run)"), "{table}");
    assert!(table.contains("sender SACK reorder events"), "{table}");
    assert!(table.contains("drops into a node's uplink"), "{table}");
    assert!(
        table.contains("(node to node)") && table.contains("xU"),
        "{table}"
    );
    // underlay ran: the goal against it is judged.
    let against_underlay = details
        .goals
        .iter()
        .find(|goal| goal.goal.contains("1.15x underlay"))
        .expect("the goal against underlay");
    assert!(against_underlay.met.is_some(), "{against_underlay:?}");
    // With flanneld-vxlan next to it, the goal against stock flannel is judged.
    let against_stock = details
        .goals
        .iter()
        .find(|goal| goal.goal.contains("0.70x flanneld-vxlan"))
        .expect("the goal against stock flannel");
    assert_eq!(
        against_stock.met.is_some(),
        flanneld.is_some(),
        "{against_stock:?}"
    );
    if flanneld.is_some() {
        assert!(
            table.contains("(stock flannel)") && table.contains("xS"),
            "{table}"
        );
    }
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn the_conntrack_marking_measurement_marks_real_entries() {
    let Some(_guard) = privileged_test("the_conntrack_marking_measurement_marks_real_entries")
    else {
        return;
    };
    // Every flow must come back confirmed (the measurement fails
    // otherwise); the rate is reported, never asserted.
    let marking = bench::ct_marking(50, 2).unwrap();
    assert_eq!((marking.connections, marking.rounds), (50, 2));
    assert!(marking.flows_per_s > 0.0 && marking.us_per_flow > 0.0);
}

#[test]
fn the_program_cost_times_every_step_of_every_path() {
    let Some(_guard) = privileged_test("the_program_cost_times_every_step_of_every_path") else {
        return;
    };
    // The measurement itself checks each step's exit counter and return
    // value (it fails otherwise); the figures are reported, never asserted
    // beyond being there.
    let cost = bench::program_cost(bench::CostEffort {
        rounds: 3,
        repeat: 1000,
        calls: 100,
    })
    .unwrap();
    let paths: Vec<&str> = cost.paths.iter().map(|path| path.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "xdp_uplink decap",
            "xdp_uplink bulk TCP to GRO",
            "tc_uplink decap",
            "tc_pod_egress encap"
        ]
    );
    for path in &cost.paths {
        let first = &path.steps[0];
        assert!(first.exit.ends_with("pass_not_ipv4"), "{}", path.path);
        for step in &path.steps {
            assert!(
                step.ns > 0.0
                    && step.one_per_call_ns > 0.0
                    && step.ns_min <= step.ns
                    && step.ns <= step.ns_max,
                "{}: {step:?}",
                path.path
            );
        }
        let last = path.steps.last().unwrap();
        assert!((path.over_pass_ns - (last.ns - first.ns)).abs() < 1e-9);
    }
    let xdp = &cost.paths[0];
    assert_eq!(cost.xdp_decap_over_pass_ns, xdp.over_pass_ns);
    assert_eq!(xdp.steps.last().unwrap().exit, "xdp_decap");
    assert!(!xdp.steps.last().unwrap().repeated);
    let table = bench::program_cost_table(&cost);
    assert!(
        table.contains("xdp_pass_verdict_pending") && table.contains("tc_encap"),
        "{table}"
    );
}
