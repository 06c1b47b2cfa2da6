//! A fast smoke test of the benchmark harness: one configuration, tiny
//! durations, no timing assertions; results.json must parse with every field
//! present and positive, and the chart must be written.

// Each integration test is its own crate and sees every dependency of the
// package; the lint is for the library.
#![allow(unused_crate_dependencies)]

use weft_bench as bench;
use weft_tests::{lab::default_weft_bin, privileged_test};

#[test]
fn the_bench_harness_writes_complete_results_for_one_configuration() {
    let Some(_guard) =
        privileged_test("the_bench_harness_writes_complete_results_for_one_configuration")
    else {
        return;
    };
    let out = std::env::temp_dir().join(format!("weft-bench-smoke-{}", std::process::id()));
    let mut options = bench::BenchOptions::new(true, out.clone(), default_weft_bin());
    options.only = vec!["ebpf-vxlan".to_owned()];
    options.seconds = 0.5;
    options.pings = 50;
    options.extras = false;
    let (results, _) = bench::run(&options, &mut |step| eprintln!("{step}")).unwrap();
    assert_eq!(results.len(), 1);
    assert!(results[0].invalid.is_none(), "{:?}", results[0].invalid);

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let configurations = json.as_array().unwrap();
    assert_eq!(configurations.len(), 1);
    let result = &configurations[0];
    assert_eq!(result["name"], "ebpf-vxlan");
    for field in [
        "icmp_rtt_us_p50",
        "icmp_rtt_us_p99",
        "tcp_rr_us_p50",
        "tcp_rr_us_p99",
        "udp_rr_us_p50",
        "udp_rr_us_p99",
        "tcp_rr_tps",
        "udp_pps",
        "tcp_gbps",
        "cpu_s_per_gb",
        "fastpath_packets",
    ] {
        let value = result[field]
            .as_f64()
            .unwrap_or_else(|| panic!("{field} missing or not a number: {result}"));
        assert!(value > 0.0, "{field} = {value}");
    }
    let svg = std::fs::read_to_string(out.join("results.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("ebpf-vxlan"));
    std::fs::remove_dir_all(out).unwrap();
}
