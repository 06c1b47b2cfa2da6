//! Whether a configuration's traffic took the path it claims: judges the
//! counters `path_counters` read around a run (`measure`), never reads any.

use weft_tests::{Backend, Dataplane};

use crate::{Configuration, Endpoints, measure::Run, path_counters::VXLAN_DEVICE};

/// The path check: the fast path must have carried the TCP run on eBPF
/// configurations (and the kernel path must be near idle), and must not
/// exist on the others; on kernel paths (weft's kernel mode and stock
/// flanneld) `flannel.1` must have carried a VXLAN transfer and plain
/// forwarding a host-gw one; node to node (`underlay`), the nodes' underlay
/// links must have carried it with nothing forwarded and no overlay.
pub(crate) fn check_path(config: &Configuration, runs: &[Run]) -> Option<String> {
    let Configuration {
        name,
        backend,
        dataplane,
        endpoints,
    } = *config;
    if endpoints == Endpoints::Nodes {
        return runs.iter().find_map(|run| check_underlay(name, run));
    }
    for run in runs {
        let kernel = &run.kernel_path;
        match dataplane {
            Dataplane::Ebpf => {
                // Bytes, not packets: after GRO one packet is many frames.
                if run.fastpath_bytes < run.tcp_bytes * 9 / 5 {
                    return Some(format!(
                        "{name}: the fast path carried {} bytes of a {} byte transfer \
                         (sent and delivered: expected twice that)",
                        run.fastpath_bytes, run.tcp_bytes
                    ));
                }
                if run.netfilter_refusals > run.tcp_packets / 100 {
                    return Some(format!(
                        "{name}: the fast path handed {} packets of ~{} to netfilter",
                        run.netfilter_refusals, run.tcp_packets
                    ));
                }
                if kernel.packets() > run.tcp_packets / 20 {
                    return Some(format!(
                        "{name}: the kernel path carried {} packets of ~{}",
                        kernel.packets(),
                        run.tcp_packets
                    ));
                }
            }
            Dataplane::Kernel | Dataplane::Floor | Dataplane::Flanneld => {
                if run.fastpath_packets != 0 {
                    return Some(format!(
                        "{name}: eBPF counters rose on a {} node",
                        dataplane.flag()
                    ));
                }
                // The kernel counts GRO-merged packets, so packet counts only
                // prove a wrong path when there are none at all; bytes through
                // flannel.1 are exact (sent by one node, received by the other).
                let vxlan = backend == Backend::Vxlan && dataplane != Dataplane::Floor;
                if vxlan && kernel.vxlan_bytes < run.tcp_bytes * 9 / 5 {
                    return Some(format!(
                        "{name}: {VXLAN_DEVICE} carried {} bytes of a {} byte transfer \
                         (sent and received: expected twice that)",
                        kernel.vxlan_bytes, run.tcp_bytes
                    ));
                }
                if !vxlan && kernel.vxlan_packets != 0 {
                    return Some(format!(
                        "{name}: {VXLAN_DEVICE} carried {} packets on a {backend:?} path",
                        kernel.vxlan_packets
                    ));
                }
                if kernel.forwarding_nodes < 2 {
                    return Some(format!(
                        "{name}: IP forwarding rose on {} node(s); the flow crosses two",
                        kernel.forwarding_nodes
                    ));
                }
            }
        }
    }
    None
}

/// Node to node: both nodes' `eth0` carried the transfer (sent by one,
/// received by the other), nothing was routed through a node, no overlay
/// device or fast path saw a packet.
fn check_underlay(name: &str, run: &Run) -> Option<String> {
    let kernel = &run.kernel_path;
    if run.fastpath_packets != 0 || kernel.vxlan_packets != 0 {
        return Some(format!(
            "{name}: an overlay carried packets ({} fast path, {} {VXLAN_DEVICE})",
            run.fastpath_packets, kernel.vxlan_packets
        ));
    }
    if kernel.forwarded != 0 {
        return Some(format!(
            "{name}: the nodes forwarded {} packets; node to node needs none",
            kernel.forwarded
        ));
    }
    if kernel.uplink_bytes < run.tcp_bytes * 9 / 5 {
        return Some(format!(
            "{name}: the nodes' underlay links carried {} bytes of a {} byte transfer \
             (sent and received: expected twice that)",
            kernel.uplink_bytes, run.tcp_bytes
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path_counters::KernelPath;

    /// A 1 GB TCP run whose kernel path carried what `kernel` says.
    fn run(kernel: KernelPath) -> Run {
        Run {
            tcp_bytes: 1_000_000_000,
            tcp_packets: 690_000,
            kernel_path: kernel,
            ..Run::default()
        }
    }

    const VXLAN_CARRIED_IT: KernelPath = KernelPath {
        vxlan_packets: 40_000,
        vxlan_bytes: 2_050_000_000,
        forwarded: 40_000,
        forwarding_nodes: 2,
        uplink_bytes: 2_100_000_000,
    };

    fn config(name: &'static str, backend: Backend, dataplane: Dataplane) -> Configuration {
        Configuration {
            name,
            backend,
            dataplane,
            endpoints: Endpoints::Pods,
        }
    }

    #[test]
    fn stock_flanneld_vxlan_is_valid_when_flannel_1_carried_the_transfer() {
        let check = |kernel| {
            check_path(
                &config("flanneld-vxlan", Backend::Vxlan, Dataplane::Flanneld),
                &[run(kernel)],
            )
        };
        assert_eq!(check(VXLAN_CARRIED_IT), None);
        let bypassed = KernelPath {
            vxlan_packets: 10,
            vxlan_bytes: 1_000,
            ..VXLAN_CARRIED_IT
        };
        let why = check(bypassed).expect("flannel.1 idle must be invalid");
        assert!(why.contains("flannel.1 carried 1000 bytes"), "{why}");
        let one_node = KernelPath {
            forwarding_nodes: 1,
            ..VXLAN_CARRIED_IT
        };
        assert!(
            check(one_node)
                .unwrap()
                .contains("IP forwarding rose on 1 node")
        );
    }

    #[test]
    fn host_gw_paths_are_invalid_when_flannel_1_carried_packets() {
        let forwarded = KernelPath {
            forwarded: 40_000,
            forwarding_nodes: 2,
            ..KernelPath::default()
        };
        for dataplane in [Dataplane::Flanneld, Dataplane::Kernel, Dataplane::Floor] {
            let check =
                |kernel| check_path(&config("x", Backend::HostGw, dataplane), &[run(kernel)]);
            assert_eq!(check(forwarded), None, "{dataplane:?}");
            assert!(check(VXLAN_CARRIED_IT).is_some(), "{dataplane:?}");
        }
    }

    #[test]
    fn underlay_is_valid_only_when_the_nodes_links_carried_it_unrouted() {
        let underlay = crate::configuration("underlay").unwrap();
        let check = |kernel| check_path(underlay, &[run(kernel)]);
        let node_to_node = KernelPath {
            uplink_bytes: 2_050_000_000,
            ..KernelPath::default()
        };
        assert_eq!(check(node_to_node), None);
        let routed = KernelPath {
            forwarded: 40_000,
            forwarding_nodes: 2,
            ..node_to_node
        };
        assert!(check(routed).unwrap().contains("forwarded 40000 packets"));
        assert!(
            check(VXLAN_CARRIED_IT)
                .unwrap()
                .contains("an overlay carried")
        );
        let elsewhere = KernelPath {
            uplink_bytes: 1_000,
            ..KernelPath::default()
        };
        assert!(
            check(elsewhere)
                .unwrap()
                .contains("underlay links carried 1000 bytes")
        );
    }
}
