//! Verdict probes over IPv6 (lib/probe.rs), on the dual-stack fixture
//! node: the TCP timestamp's low bits stand in for IPv4's identification;
//! the sender records what `tc_verdict` then recognises (the probe, taken
//! or dropped; its original, where it passes a `tc_verdict` hook first:
//! host-gw out of the uplink, the hand-over to `flannel-v6`); XDP leaves
//! a due probe to `tc_uplink`.

use std::net::Ipv6Addr;

use weft_common::{
    FLOW_CONFIRMED, FlowKey6,
    Hook::{TcPodEgress, TcUplink, TcVerdict, XdpUplink},
    PROBE_ORIGINAL_AHEAD, PROBE_OUTSTANDING, Reason,
};
use weft_tests::{
    packets::{ETH_P_IPV6, eth, ipv6},
    privileged,
    programs::*,
};

const TCP_ACK: u8 = 0x10;
const SEQ: u32 = 0x0102_0304;
const TSVAL: u32 = 0xa1b2_c3d4;

/// An ACK carrying sequence number `SEQ` and, with `tsval`, the options
/// Linux leads every segment of a timestamped connection with (NOP, NOP,
/// timestamp); ports 0, the fixture's flows.
fn segment(tsval: Option<u32>) -> Vec<u8> {
    let mut segment = vec![0u8; 20];
    segment[4..8].copy_from_slice(&SEQ.to_be_bytes());
    segment[12] = 5 << 4;
    segment[13] = TCP_ACK;
    if let Some(tsval) = tsval {
        segment[12] = 8 << 4;
        segment.extend_from_slice(&[1, 1, 8, 10]);
        segment.extend_from_slice(&tsval.to_be_bytes());
        segment.extend_from_slice(&[0, 0, 0, 9]);
    }
    segment
}

/// The local pod's segment to `dst`, as it sends it (to the gateway).
fn from_pod(dst: Ipv6Addr, tsval: Option<u32>) -> Vec<u8> {
    eth(
        GATEWAY_MAC,
        POD_MAC,
        ETH_P_IPV6,
        &ipv6(LOCAL_POD6, dst, IPPROTO_TCP, &segment(tsval), 64),
    )
}

/// The host-gw peer's pod's segment to the local pod, on the uplink.
fn from_host_gw_peer(tsval: Option<u32>) -> Vec<u8> {
    eth(
        UPLINK_MAC,
        HOSTGW_NODE_MAC,
        ETH_P_IPV6,
        &ipv6(HOSTGW_POD6, LOCAL_POD6, IPPROTO_TCP, &segment(tsval), 64),
    )
}

/// That segment as `tc_verdict` sees it on the pod veth's egress, after
/// the kernel path routed it.
fn delivered_from_host_gw_peer(tsval: Option<u32>) -> Vec<u8> {
    eth(
        POD_MAC,
        GATEWAY_MAC,
        ETH_P_IPV6,
        &ipv6(HOSTGW_POD6, LOCAL_POD6, IPPROTO_TCP, &segment(tsval), 63),
    )
}

fn key(src: Ipv6Addr, dst: Ipv6Addr) -> FlowKey6 {
    flow6(src, dst, IPPROTO_TCP, [0, 0], [0, 0])
}

fn dual_stack_with_probe_ttl() -> Programs {
    let mut programs = Programs::load_dual_stack(true);
    programs.update_config(|config| config.verdict_ttl_ns = PROBE_TTL_NS);
    programs
}

/// A pod's IPv6 segment past half its verdict's TTL: forwarded as ever,
/// one probe sent, identified by its sequence number and TSval's low 16
/// bits (zero without a timestamp); where the original leaves through a
/// `tc_verdict` hook (host-gw: the uplink; VXLAN: `flannel-v6`) it is
/// recorded as ahead of its probe. At the uplink's `tc_verdict` the
/// original passes, a repeat of the segment with another timestamp is
/// not taken for the probe, and the probe renews the verdict and is
/// dropped.
#[test]
fn a_pods_ipv6_probe_is_told_apart_by_its_tcp_timestamp_and_its_original_passes_tc_verdict() {
    let _guard = privileged!(
        "a_pods_ipv6_probe_is_told_apart_by_its_tcp_timestamp_and_its_original_passes_tc_verdict"
    );
    in_probe_netns("rp-probe6-pod", || {
        let mut programs = dual_stack_with_probe_ttl();
        let host_gw = key(LOCAL_POD6, HOSTGW_POD6);
        programs.age_verdict6(host_gw, PROBE_TTL_NS * 6 / 10);
        let frame = from_pod(HOSTGW_POD6, Some(TSVAL));
        let original = programs.assert_probe_sent(TcPodEgress, &frame, Reason::HostGwIpv6);
        let mut routed = frame.clone();
        routed[0..6].copy_from_slice(&HOSTGW_NODE_MAC);
        routed[6..12].copy_from_slice(&UPLINK_MAC);
        routed[14 + 7] = 63;
        assert_eq!(original, routed, "forwarded as without a probe");
        let recorded = programs.verdict6(&host_gw).unwrap();
        assert_eq!(
            (recorded.probe_state, recorded.probe_seq, recorded.probe_id),
            (PROBE_ORIGINAL_AHEAD, SEQ.to_be_bytes(), [0xc3, 0xd4])
        );

        // The original at the uplink's egress, unmarked: passes.
        let before = programs.counters();
        assert_eq!(programs.tc_verdict(&original, 0).0, TCX_NEXT);
        assert_only(
            &before,
            &programs.counters(),
            &[TcVerdict.counter(Reason::ProbeOriginal)],
        );
        // A repeat of the segment (same sequence number, a new timestamp)
        // that netfilter passed: learned, handed on, not the probe.
        let mut repeat = original.clone();
        repeat[14 + 40 + 24..14 + 40 + 28].copy_from_slice(&(TSVAL + 1).to_be_bytes());
        let before = programs.counters();
        assert_eq!(programs.tc_verdict(&repeat, ACCEPT_MARK).0, TCX_NEXT);
        assert_only(
            &before,
            &programs.counters(),
            &[TcVerdict.counter(Reason::Learned)],
        );
        assert_eq!(
            programs.verdict6(&host_gw).unwrap().probe_state,
            PROBE_OUTSTANDING
        );
        // The probe, marked (the verdict aged as when it was sent): renews
        // the verdict, dropped.
        programs.put_verdict6(
            host_gw,
            weft_common::FlowVerdict {
                probe_state: PROBE_OUTSTANDING,
                ..recorded
            },
        );
        let aged = programs.verdict6(&host_gw).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        programs.assert_probe_taken(&original);
        let renewed = programs.verdict6(&host_gw).unwrap();
        assert!(renewed.seen_ns > aged.seen_ns, "{renewed:?} after {aged:?}");
        assert_eq!((renewed.state, renewed.probe_state), (FLOW_CONFIRMED, 0));

        // Without a timestamp: identified by the sequence number alone.
        // Into a local pod (`bpf_redirect_peer`, no egress on the way):
        // the probe is the first copy tc_verdict sees.
        let local = key(LOCAL_POD6, OTHER_LOCAL_POD6);
        programs.age_verdict6(local, PROBE_TTL_NS * 6 / 10);
        let (verdict, _) = programs.tc(&from_pod(OTHER_LOCAL_POD6, None));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let recorded = programs.verdict6(&local).unwrap();
        assert_eq!(
            (recorded.probe_state, recorded.probe_seq, recorded.probe_id),
            (PROBE_OUTSTANDING, SEQ.to_be_bytes(), [0, 0])
        );

        // To a VXLAN peer: handed to flannel-v6, whose egress runs
        // tc_verdict, ahead of the probe.
        let vxlan = key(LOCAL_POD6, REMOTE_POD6);
        programs.age_verdict6(vxlan, PROBE_TTL_NS * 6 / 10);
        programs.assert_probe_sent(
            TcPodEgress,
            &from_pod(REMOTE_POD6, Some(TSVAL)),
            Reason::EncapIpv6,
        );
        assert_eq!(
            programs.verdict6(&vxlan).unwrap().probe_state,
            PROBE_ORIGINAL_AHEAD
        );
    });
}

/// On the uplink: XDP leaves an IPv6 segment due a probe to `tc_uplink`,
/// which delivers it as it would have and sends the probe; the probe,
/// netfilter having passed it unmarked, is dropped at `tc_verdict` and
/// renews nothing.
#[test]
fn on_the_uplink_an_ipv6_probe_is_sent_by_tc_and_an_unjudged_one_is_dropped() {
    let _guard =
        privileged!("on_the_uplink_an_ipv6_probe_is_sent_by_tc_and_an_unjudged_one_is_dropped");
    in_probe_netns("rp-probe6-uplink", || {
        let mut programs = dual_stack_with_probe_ttl();
        let flow = key(HOSTGW_POD6, LOCAL_POD6);
        let frame = from_host_gw_peer(Some(TSVAL));
        programs.age_verdict6(flow, PROBE_TTL_NS / 4);
        let (verdict, delivered_young) = programs.uplink_tc(&frame);
        assert_eq!(verdict, TC_ACT_REDIRECT);

        programs.age_verdict6(flow, PROBE_TTL_NS * 6 / 10);
        programs.assert_xdp_passes(&[(
            "host-gw IPv6 TCP due a probe",
            frame.clone(),
            XdpUplink.counter(Reason::ProbeDue),
        )]);
        let out = programs.assert_probe_sent(TcUplink, &frame, Reason::HostGwIpv6);
        assert_eq!(out, delivered_young);
        let aged = programs.verdict6(&flow).unwrap();
        assert_eq!(aged.probe_state, PROBE_OUTSTANDING);

        let probe = delivered_from_host_gw_peer(Some(TSVAL));
        let before = programs.counters();
        assert_eq!(programs.tc_verdict(&probe, 0).0, TC_ACT_SHOT);
        assert_only(
            &before,
            &programs.counters(),
            &[TcVerdict.counter(Reason::ProbeUnjudged)],
        );
        let after = programs.verdict6(&flow).unwrap();
        assert_eq!((after.seen_ns, after.probe_state), (aged.seen_ns, 0));
        // Taken once: the same packet again is handed on.
        assert_eq!(programs.tc_verdict(&probe, 0).0, TCX_NEXT);
    });
}
