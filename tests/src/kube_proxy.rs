//! Rules shaped like the ones kube-proxy installs on every node, in its
//! iptables mode (KUBE-SERVICES -> KUBE-SVC-* with `statistic` random ->
//! KUBE-SEP-* DNAT, NodePorts marked for masquerade, KUBE-FORWARD dropping
//! conntrack INVALID) and in its nftables mode (a verdict map of service
//! addresses, `numgen random` over endpoints, `dnat to`). They are what the
//! fast path must leave to netfilter.

use anyhow::Result;

use crate::netns;

/// A Service: a virtual address and port, and the pods behind it.
pub struct Service {
    pub cluster_ip: String,
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// A node port on every node address, if any.
    pub node_port: Option<u16>,
    /// (pod address, port) of each endpoint.
    pub endpoints: Vec<(String, u16)>,
}

/// kube-proxy's mark for traffic to masquerade.
const MASQ_MARK: &str = "0x4000";

/// The `iptables-restore --noflush` input for `services`.
pub fn iptables_rules(services: &[Service]) -> String {
    let mut chains = vec![
        "KUBE-SERVICES".to_owned(),
        "KUBE-NODEPORTS".to_owned(),
        "KUBE-MARK-MASQ".to_owned(),
        "KUBE-POSTROUTING".to_owned(),
    ];
    let mut rules = vec![
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
            .to_owned(),
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".to_owned(),
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"
            .to_owned(),
        format!("-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}"),
        format!("-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"),
        format!("-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}"),
        "-A KUBE-POSTROUTING -j MASQUERADE --random-fully".to_owned(),
    ];
    for (index, service) in services.iter().enumerate() {
        let svc = format!("KUBE-SVC-WEFT{index}");
        chains.push(svc.clone());
        let proto = service.protocol;
        rules.push(format!(
            "-A KUBE-SERVICES -d {}/32 -p {proto} -m {proto} --dport {} -j {svc}",
            service.cluster_ip, service.port
        ));
        if let Some(node_port) = service.node_port {
            let ext = format!("KUBE-EXT-WEFT{index}");
            chains.push(ext.clone());
            rules.push(format!(
                "-A KUBE-NODEPORTS -p {proto} -m {proto} --dport {node_port} -j {ext}"
            ));
            rules.push(format!("-A {ext} -j KUBE-MARK-MASQ"));
            rules.push(format!("-A {ext} -j {svc}"));
        }
        let count = service.endpoints.len();
        for (endpoint, (ip, port)) in service.endpoints.iter().enumerate() {
            let sep = format!("KUBE-SEP-WEFT{index}X{endpoint}");
            chains.push(sep.clone());
            // kube-proxy's equal split: 1/n, then 1/(n-1), ..., then the rest.
            let remaining = count - endpoint;
            if remaining > 1 {
                rules.push(format!(
                    "-A {svc} -m statistic --mode random --probability {:.11} -j {sep}",
                    1.0 / remaining as f64
                ));
            } else {
                rules.push(format!("-A {svc} -j {sep}"));
            }
            rules.push(format!(
                "-A {sep} -p {proto} -m {proto} -j DNAT --to-destination {ip}:{port}"
            ));
        }
    }
    rules.push("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS".to_owned());
    let mut text = String::from("*nat\n");
    for chain in &chains {
        text.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for rule in &rules {
        text.push_str(rule);
        text.push('\n');
    }
    text.push_str("COMMIT\n*filter\n:KUBE-FORWARD - [0:0]\n");
    text.push_str(
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n",
    );
    text.push_str("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n");
    text.push_str(&format!(
        "-A KUBE-FORWARD -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT\n"
    ));
    text.push_str("-A KUBE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\nCOMMIT\n");
    text
}

/// The `nft -f` input (table `ip kube-proxy`) for `services`.
pub fn nftables_rules(services: &[Service]) -> String {
    let mut elements = Vec::new();
    let mut chains = String::new();
    for (index, service) in services.iter().enumerate() {
        elements.push(format!(
            "{} . {} . {} : goto svc-{index}",
            service.cluster_ip, service.protocol, service.port
        ));
        let arms: Vec<String> = (0..service.endpoints.len())
            .map(|endpoint| format!("{endpoint} : goto sep-{index}-{endpoint}"))
            .collect();
        chains.push_str(&format!(
            "\tchain svc-{index} {{\n\t\tnumgen random mod {} vmap {{ {} }}\n\t}}\n",
            service.endpoints.len(),
            arms.join(", ")
        ));
        for (endpoint, (ip, port)) in service.endpoints.iter().enumerate() {
            chains.push_str(&format!(
                "\tchain sep-{index}-{endpoint} {{\n\t\tmeta l4proto {} dnat to {ip}:{port}\n\t}}\n",
                service.protocol
            ));
        }
    }
    format!(
        "table ip kube-proxy {{
\tmap service-ips {{
\t\ttype ipv4_addr . inet_proto . inet_service : verdict
\t\telements = {{ {} }}
\t}}
\tchain nat-prerouting {{
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tip daddr . meta l4proto . th dport vmap @service-ips
\t}}
\tchain filter-forward {{
\t\ttype filter hook forward priority filter; policy accept;
\t\tct state invalid drop
\t}}
{chains}}}
",
        elements.join(", ")
    )
}

/// Installs `services` in kube-proxy's iptables mode in node namespace `ns`.
pub fn install_iptables(ns: &str, services: &[Service]) -> Result<()> {
    netns::run_with_input(
        ns,
        &["iptables-restore", "--noflush"],
        &iptables_rules(services),
    )?;
    Ok(())
}

/// Installs `services` in kube-proxy's nftables mode in node namespace `ns`.
pub fn install_nftables(ns: &str, services: &[Service]) -> Result<()> {
    netns::run_with_input(ns, &["nft", "-f", "-"], &nftables_rules(services))?;
    Ok(())
}
