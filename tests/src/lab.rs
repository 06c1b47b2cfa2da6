//! The cluster lab, as docs/architecture.md (The lab) describes it:
//!
//! - underlay namespace `L-ul` with bridge `ul0` at 192.168.77.254/24 and the
//!   real etcd server (client URL http://192.168.77.254:2379);
//! - node namespaces `L-n1`, `L-n2`, ... whose `eth0` is a veth into `ul0`
//!   (192.168.77.N/24), behaving like a wire: TSO/GSO off, GRO on;
//! - pod namespaces `L-nN-pM` wired by the real CNI bridge + host-local
//!   plugins from the node's flannel-style `subnet.env`;
//! - one agent per node with its own pin dir `/sys/fs/bpf/L-nN`.
//!
//! The lab writes the network config to etcd; each node's agent leases a
//! subnet, programs its datapath and writes the `subnet.env` the node's pods
//! are then wired from.
//!
//! Everything a lab creates is named after it, so `down(name)` can remove it
//! all (also from another process, after a crash, or on Ctrl-C).

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{Mutex, Once},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use weft_agent::subnet_env;

use crate::{
    cni::{self, PodNetwork},
    etcd,
    host::BPFFS,
    netns, process,
};

pub const RUN_ROOT: &str = "/run/weft-lab";
pub const UNDERLAY_BRIDGE: &str = "ul0";
/// The second underlay segment's bridge (labs with `second_segment_from`),
/// at 192.168.78.254/24; the underlay namespace routes between the two.
pub const SECOND_BRIDGE: &str = "ul1";
pub const SECOND_GATEWAY: &str = "192.168.78.254";
pub const UNDERLAY_GATEWAY: &str = "192.168.77.254";
pub const UNDERLAY_PREFIX: u8 = 24;
pub const POD_NETWORK: &str = "10.244.0.0/16";
pub const UPLINK: &str = "eth0";
pub const ETCD_PREFIX: &str = "/coreos.com/network";
/// Where each node's agent serves /healthz and /readyz (inside the node
/// namespace, so every node can use the same port).
pub const HEALTHZ_PORT: u16 = 10256;
const MAX_NODES: usize = 200;
const MAX_NAME_LEN: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    Vxlan,
    HostGw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dataplane {
    /// `weft agent --dataplane ebpf`: the kernel path plus the eBPF programs.
    Ebpf,
    /// `weft agent --dataplane kernel`: exactly what flanneld programs.
    Kernel,
    /// No overlay and no agent: the lab writes each node's subnet.env (node N
    /// owns 10.244.N.0/24) and plain routes between nodes. The benchmark's
    /// floor.
    Floor,
}

impl Dataplane {
    pub fn flag(self) -> &'static str {
        match self {
            Dataplane::Ebpf => "ebpf",
            Dataplane::Floor => "floor",
            Dataplane::Kernel => "kernel",
        }
    }
}

impl Backend {
    /// The network config the lab writes to `<prefix>/config`.
    pub fn network_config(self) -> String {
        let backend = match self {
            Backend::Vxlan => "vxlan",
            Backend::HostGw => "host-gw",
        };
        format!(r#"{{"Network":"{POD_NETWORK}","Backend":{{"Type":"{backend}"}}}}"#)
    }
}

#[derive(Clone, Debug)]
pub struct LabSpec {
    pub name: String,
    pub nodes: usize,
    pub pods_per_node: usize,
    pub backend: Backend,
    /// Every node's dataplane, unless `node_dataplanes` says otherwise.
    pub dataplane: Dataplane,
    /// Per-node overrides (index 0 = node 1), for mixed labs.
    pub node_dataplanes: Vec<Dataplane>,
    /// The `weft` binary the nodes run.
    pub weft_bin: PathBuf,
    /// A `FLANNEL_SUBNET` to leave in every node's subnet.env before its
    /// agent first starts, as an earlier run would have.
    pub preset_subnet_env: Option<String>,
    /// Run the agents with `--ip-masq`.
    pub ip_masq: bool,
    /// More flags for every agent.
    pub agent_args: Vec<String>,
    /// A network config to write instead of the backend's default one.
    pub network_config: Option<String>,
    /// Nodes from this index (1-based) on sit on a second underlay segment,
    /// 192.168.78.0/24, one routed hop away from the first.
    pub second_segment_from: Option<usize>,
}

impl LabSpec {
    pub fn dataplane_of(&self, node: usize) -> Dataplane {
        self.node_dataplanes
            .get(node)
            .copied()
            .unwrap_or(self.dataplane)
    }

    pub fn new(name: &str, nodes: usize, pods_per_node: usize) -> Self {
        Self {
            name: name.to_owned(),
            nodes,
            pods_per_node,
            backend: Backend::Vxlan,
            dataplane: Dataplane::Ebpf,
            node_dataplanes: Vec::new(),
            weft_bin: default_weft_bin(),
            preset_subnet_env: None,
            ip_masq: false,
            agent_args: Vec::new(),
            network_config: None,
            second_segment_from: None,
        }
    }
}

/// `$WEFT_BIN`, else the workspace's debug build.
pub fn default_weft_bin() -> PathBuf {
    std::env::var_os("WEFT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/weft"))
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub backend: Backend,
    pub dataplane: Dataplane,
    pub weft_bin: PathBuf,
    pub run_dir: PathBuf,
    pub underlay_ns: String,
    pub etcd_endpoint: String,
    pub ip_masq: bool,
    pub agent_args: Vec<String>,
    pub second_segment_from: Option<usize>,
    pub nodes: Vec<NodeState>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeState {
    /// 1-based, as in the namespace name.
    pub index: usize,
    pub ns: String,
    pub ip: String,
    pub dataplane: Dataplane,
    /// The node's pod subnet, from the subnet.env its agent wrote.
    pub subnet: String,
    pub subnet_file: PathBuf,
    pub pin_dir: PathBuf,
    pub agent_log: Option<PathBuf>,
    pub pods: Vec<PodState>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodState {
    pub ns: String,
    pub network: PodNetwork,
}

impl PodState {
    pub fn ip(&self) -> &str {
        self.network.ip()
    }
}

impl NodeState {
    pub fn agent_pid_file(&self, run_dir: &Path) -> PathBuf {
        run_dir.join(format!("{}.agent.pid", self.ns))
    }
}

/// A running lab. Dropping it tears everything down unless [`Lab::keep`] was
/// called (the CLI's `lab up` leaves the lab for `lab down`).
pub struct Lab {
    pub state: LabState,
    keep: bool,
}

impl Lab {
    /// Brings a lab up; on any error everything created so far is removed.
    pub fn up(spec: &LabSpec) -> Result<Lab> {
        validate(spec)?;
        install_interrupt_teardown();
        let run_dir = run_dir(&spec.name);
        if run_dir.exists() || netns::list()?.contains(&format!("{}-ul", spec.name)) {
            bail!(
                "a lab named {} already exists; remove it with `cargo xtask lab down --name {}`",
                spec.name,
                spec.name
            );
        }
        register(&spec.name);
        let mut lab = Lab {
            state: LabState {
                name: spec.name.clone(),
                backend: spec.backend,
                dataplane: spec.dataplane,
                weft_bin: spec.weft_bin.clone(),
                run_dir: run_dir.clone(),
                underlay_ns: format!("{}-ul", spec.name),
                etcd_endpoint: format!("http://{UNDERLAY_GATEWAY}:{}", etcd::CLIENT_PORT),
                ip_masq: spec.ip_masq,
                agent_args: spec.agent_args.clone(),
                second_segment_from: spec.second_segment_from,
                nodes: Vec::new(),
            },
            keep: false,
        };
        // On error `lab` is dropped here, which tears down what exists.
        lab.build(spec)
            .with_context(|| format!("cannot bring lab {} up", spec.name))?;
        Ok(lab)
    }

    fn build(&mut self, spec: &LabSpec) -> Result<()> {
        fs::create_dir_all(&self.state.run_dir)?;
        self.save()?;
        self.build_underlay()?;
        self.start_etcd()?;
        let config = spec
            .network_config
            .clone()
            .unwrap_or_else(|| spec.backend.network_config());
        self.etcd().put(&format!("{ETCD_PREFIX}/config"), &config)?;
        for index in 1..=spec.nodes {
            let node = self.build_node(index, spec.dataplane_of(index - 1))?;
            self.state.nodes.push(node);
            self.save()?;
        }
        if let Some(subnet) = &spec.preset_subnet_env {
            for node in &self.state.nodes {
                let env = subnet_env::SubnetEnv {
                    network: POD_NETWORK.parse()?,
                    subnet: subnet.parse()?,
                    mtu: 1450,
                    ipmasq: false,
                };
                subnet_env::write_atomic(&node.subnet_file, &env)?;
            }
        }
        if spec.dataplane == Dataplane::Floor {
            ensure!(
                spec.node_dataplanes.is_empty(),
                "a floor lab runs no agent on any node"
            );
            self.route_without_overlay()?;
        } else {
            // Agents first, all at once: each leases a subnet and writes the
            // subnet.env the CNI config is derived from.
            for node in 0..spec.nodes {
                self.spawn_agent(node)?;
            }
            for node in 0..spec.nodes {
                self.wait_agent_ready(node)?;
            }
        }
        for node in 0..spec.nodes {
            for pod in 1..=spec.pods_per_node {
                self.add_pod(node, pod)?;
            }
        }
        for node in 0..spec.nodes {
            if self.state.nodes[node].dataplane == Dataplane::Ebpf {
                self.wait_pods_attached(node)?;
            }
        }
        self.save()
    }

    /// The floor: node N owns 10.244.N.0/24 and every node routes the others'
    /// subnets via their addresses, with no agent and no encapsulation.
    fn route_without_overlay(&mut self) -> Result<()> {
        for node in &mut self.state.nodes {
            let env = subnet_env::SubnetEnv {
                network: POD_NETWORK.parse()?,
                subnet: format!("10.244.{}.1/24", node.index).parse()?,
                mtu: 1500,
                ipmasq: false,
            };
            subnet_env::write_atomic(&node.subnet_file, &env)?;
            node.subnet = env.subnet.trunc().to_string();
        }
        for node in &self.state.nodes {
            for peer in self
                .state
                .nodes
                .iter()
                .filter(|peer| peer.index != node.index)
            {
                netns::run_host(&[
                    "ip",
                    "-n",
                    &node.ns,
                    "route",
                    "replace",
                    &peer.subnet,
                    "via",
                    &peer.ip,
                    "dev",
                    UPLINK,
                ])?;
            }
        }
        Ok(())
    }

    /// A client for the lab's etcd.
    pub fn etcd(&self) -> etcd::LabEtcd {
        etcd::LabEtcd {
            ns: self.state.underlay_ns.clone(),
            endpoint: self.state.etcd_endpoint.clone(),
            credentials: None,
        }
    }

    /// Starts (or restarts, keeping its data) the lab's etcd.
    pub fn start_etcd(&self) -> Result<()> {
        etcd::start(
            &self.state.underlay_ns,
            UNDERLAY_GATEWAY,
            &self.state.run_dir,
        )
        .map(drop)
    }

    /// Stops the lab's etcd (SIGTERM); its data stays for `start_etcd`.
    pub fn stop_etcd(&self) -> Result<()> {
        process::stop(
            &self.state.run_dir.join("etcd.pid"),
            Duration::from_secs(10),
        )
    }

    fn build_underlay(&self) -> Result<()> {
        let ul = &self.state.underlay_ns;
        netns::add(ul)?;
        netns::run_host(&[
            "ip",
            "-n",
            ul,
            "link",
            "add",
            UNDERLAY_BRIDGE,
            "type",
            "bridge",
        ])?;
        netns::run_host(&[
            "ip",
            "-n",
            ul,
            "addr",
            "add",
            &format!("{UNDERLAY_GATEWAY}/{UNDERLAY_PREFIX}"),
            "dev",
            UNDERLAY_BRIDGE,
        ])?;
        netns::run_host(&["ip", "-n", ul, "link", "set", UNDERLAY_BRIDGE, "up"])?;
        if self.state.second_segment_from.is_some() {
            netns::run_host(&[
                "ip",
                "-n",
                ul,
                "link",
                "add",
                SECOND_BRIDGE,
                "type",
                "bridge",
            ])?;
            netns::run_host(&[
                "ip",
                "-n",
                ul,
                "addr",
                "add",
                &format!("{SECOND_GATEWAY}/{UNDERLAY_PREFIX}"),
                "dev",
                SECOND_BRIDGE,
            ])?;
            netns::run_host(&["ip", "-n", ul, "link", "set", SECOND_BRIDGE, "up"])?;
            // The underlay namespace is the router between the segments.
            netns::sysctl(ul, "net/ipv4/ip_forward", "1")?;
        }
        Ok(())
    }

    fn build_node(&self, index: usize, dataplane: Dataplane) -> Result<NodeState> {
        let ns = format!("{}-n{index}", self.state.name);
        let ul = &self.state.underlay_ns;
        let ul_port = format!("n{index}");
        let second = self
            .state
            .second_segment_from
            .is_some_and(|first| index >= first);
        let (bridge, gateway, ip) = if second {
            (SECOND_BRIDGE, SECOND_GATEWAY, format!("192.168.78.{index}"))
        } else {
            (
                UNDERLAY_BRIDGE,
                UNDERLAY_GATEWAY,
                format!("192.168.77.{index}"),
            )
        };
        netns::add(&ns)?;
        // Both ends are created directly in their namespaces: nothing ever
        // appears in the host namespace, so labs cannot collide there.
        netns::run_host(&[
            "ip", "link", "add", "name", UPLINK, "netns", &ns, "type", "veth", "peer", "name",
            &ul_port, "netns", ul,
        ])?;
        netns::run_host(&[
            "ip", "-n", ul, "link", "set", &ul_port, "master", bridge, "up",
        ])?;
        netns::run_host(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip}/{UNDERLAY_PREFIX}"),
            "dev",
            UPLINK,
        ])?;
        netns::run_host(&["ip", "-n", &ns, "link", "set", UPLINK, "up"])?;
        // Everything off the segment (etcd on the other one, for a start)
        // goes through the segment's gateway.
        netns::run_host(&[
            "ip", "-n", &ns, "route", "add", "default", "via", gateway, "dev", UPLINK,
        ])?;
        // A wire carries MTU-sized frames: no veth super-frames; GRO on, as a
        // NIC driver does.
        netns::run(
            &ns,
            &[
                "ethtool", "-K", UPLINK, "tso", "off", "gso", "off", "gro", "on", "tx", "off",
            ],
        )?;
        netns::run(
            ul,
            &[
                "ethtool", "-K", &ul_port, "tso", "off", "gso", "off", "gro", "on", "tx", "off",
            ],
        )?;
        netns::sysctl(&ns, "net/ipv4/ip_forward", "1")?;

        let node_dir = self.state.run_dir.join(&ns);
        fs::create_dir_all(&node_dir)?;
        Ok(NodeState {
            index,
            ns: ns.clone(),
            ip,
            dataplane,
            subnet: String::new(),
            subnet_file: node_dir.join("subnet.env"),
            pin_dir: Path::new(BPFFS).join(&ns),
            agent_log: None,
            pods: Vec::new(),
        })
    }

    /// Starts the agent on node `node` (0-based) and waits until it is ready
    /// (lease held, datapath programmed, subnet.env written) and, with the
    /// eBPF dataplane, XDP is on its uplink.
    pub fn start_agent(&mut self, node: usize) -> Result<u32> {
        let pid = self.spawn_agent(node)?;
        self.wait_agent_ready(node)?;
        Ok(pid)
    }

    fn spawn_agent(&mut self, node: usize) -> Result<u32> {
        let weft = self.state.weft_bin.display().to_string();
        ensure!(
            self.state.weft_bin.exists(),
            "{weft} does not exist; build it with `cargo build -p weft-agent` (cargo xtask test and lab do)"
        );
        let run_dir = self.state.run_dir.clone();
        let etcd_endpoint = self.state.etcd_endpoint.clone();
        let ip_masq = self.state.ip_masq;
        let agent_args = self.state.agent_args.clone();
        let state = &mut self.state.nodes[node];
        let mut command = netns::command(&state.ns, &weft)?;
        command
            .args([
                "agent",
                "--iface",
                UPLINK,
                "--etcd-endpoints",
                &etcd_endpoint,
            ])
            .args([
                "--healthz-ip",
                "127.0.0.1",
                "--healthz-port",
                &HEALTHZ_PORT.to_string(),
            ])
            .args(["--dataplane", state.dataplane.flag(), "--bpf-pin-dir"])
            .arg(&state.pin_dir)
            .arg("--subnet-file")
            .arg(&state.subnet_file)
            .env("RUST_LOG", "info");
        if ip_masq {
            command.arg("--ip-masq");
        }
        command.args(&agent_args);
        let log = run_dir.join(&state.ns).join("agent.log");
        let pid_file = state.agent_pid_file(&run_dir);
        let pid = process::spawn_daemon(command, &log, &pid_file)?;
        state.agent_log = Some(log);
        self.save()?;
        Ok(pid)
    }

    fn wait_agent_ready(&mut self, node: usize) -> Result<()> {
        let run_dir = self.state.run_dir.clone();
        let state = &mut self.state.nodes[node];
        let pid_file = state.agent_pid_file(&run_dir);
        let log = state.agent_log.clone().unwrap_or_default();
        let ns = state.ns.clone();
        let ebpf = state.dataplane == Dataplane::Ebpf;
        wait_for(
            &format!("the agent on {ns} to be ready"),
            Duration::from_secs(30),
            || {
                if process::running_pid(&pid_file).is_none() {
                    bail!("the agent on {ns} exited:\n{}", process::log_tail(&log, 20));
                }
                // The agent attaches the uplink programs (TC in every
                // `--xdp-mode`, then XDP if any) before it turns ready.
                Ok(agent_ready(&ns)?
                    && (!ebpf || tc_attached(&ns, UPLINK, weft_common::program_names::TC_UPLINK)?))
            },
        )?;
        let env = subnet_env::read_if_present(&state.subnet_file)?.ok_or_else(|| {
            anyhow!(
                "the agent on {ns} is ready but wrote no {}",
                state.subnet_file.display()
            )
        })?;
        state.subnet = env.subnet.trunc().to_string();
        self.save()
    }

    /// The pid of node `node`'s running agent.
    pub fn agent_pid(&self, node: usize) -> Option<u32> {
        process::running_pid(&self.state.nodes[node].agent_pid_file(&self.state.run_dir))
    }

    /// Stops node `node`'s agent with `signal` and waits for it to exit.
    pub fn stop_agent(&self, node: usize, signal: Signal) -> Result<()> {
        let state = &self.state.nodes[node];
        let pid_file = state.agent_pid_file(&self.state.run_dir);
        let pid = process::running_pid(&pid_file)
            .ok_or_else(|| anyhow!("no agent runs on {}", state.ns))?;
        let program = self.state.weft_bin.display().to_string();
        process::signal_and_wait(pid, &program, signal, Duration::from_secs(10));
        ensure!(
            !process::is_running(pid, &program),
            "the agent on {} survived {signal}",
            state.ns
        );
        let _ = fs::remove_file(pid_file);
        Ok(())
    }

    fn add_pod(&mut self, node: usize, pod: usize) -> Result<()> {
        let state = &self.state.nodes[node];
        let pod_ns = format!("{}-p{pod}", state.ns);
        netns::add(&pod_ns)?;
        let env = subnet_env::read_if_present(&state.subnet_file)?
            .ok_or_else(|| anyhow!("{} has no subnet.env", state.ns))?;
        let config =
            cni::flannel_bridge_config(&env, &self.state.run_dir.join(&state.ns).join("ipam"));
        let network = cni::add_pod(&state.ns, &pod_ns, &config)?;
        self.state.nodes[node].pods.push(PodState {
            ns: pod_ns,
            network,
        });
        self.save()
    }

    /// Waits until the agent on `node` has TC on every pod veth and every
    /// pod in ENDPOINTS (read from the pod's own namespace once its CNI
    /// plugin has configured its address).
    pub fn wait_pods_attached(&self, node: usize) -> Result<()> {
        let state = &self.state.nodes[node];
        for pod in &state.pods {
            let veth = pod.network.host_veth.clone();
            wait_for(
                &format!("TC on {} in {}", veth, state.ns),
                Duration::from_secs(10),
                || tc_attached(&state.ns, &veth, weft_common::program_names::TC_POD_EGRESS),
            )?;
        }
        wait_for(
            &format!("every pod of {} in ENDPOINTS", state.ns),
            Duration::from_secs(10),
            || {
                let endpoints = self.maps_json(node + 1, "endpoints")?.to_string();
                Ok(state
                    .pods
                    .iter()
                    .all(|pod| endpoints.contains(&format!("\"{}\"", pod.ip()))))
            },
        )
    }

    pub fn node(&self, index: usize) -> &NodeState {
        &self.state.nodes[index - 1]
    }

    /// Every pod with the index of its node (1-based).
    pub fn pods(&self) -> impl Iterator<Item = &PodState> {
        self.state.nodes.iter().flat_map(|node| node.pods.iter())
    }

    /// Pings `to` from inside pod namespace `from`; returns ping's output.
    pub fn ping(&self, from: &PodState, to: &str, count: u32) -> Result<String> {
        self.ping_with(from, to, count, &[])
    }

    /// Pings `size`-byte payloads with the DF bit set (`df`) or not.
    pub fn ping_sized(
        &self,
        from: &PodState,
        to: &str,
        count: u32,
        size: usize,
        df: bool,
    ) -> Result<String> {
        let size = size.to_string();
        self.ping_with(
            from,
            to,
            count,
            &["-M", if df { "do" } else { "dont" }, "-s", &size],
        )
    }

    fn ping_with(&self, from: &PodState, to: &str, count: u32, extra: &[&str]) -> Result<String> {
        let count = count.to_string();
        let mut args = vec!["ping", "-q", "-n", "-c", &count, "-i", "0.01", "-W", "2"];
        args.extend_from_slice(extra);
        args.push(to);
        netns::run(&from.ns, &args)
            .with_context(|| format!("{} ({}) cannot reach {to}", from.ns, from.ip()))
    }

    /// `weft maps <map> --json` on node `node` (1-based), parsed.
    pub fn maps_json(&self, node: usize, map: &str) -> Result<serde_json::Value> {
        let weft = self.state.weft_bin.display().to_string();
        let pin_dir = self.node(node).pin_dir.display().to_string();
        let out = netns::run_host(&[&weft, "maps", map, "--json", "--bpf-pin-dir", &pin_dir])?;
        serde_json::from_str(&out).with_context(|| format!("weft maps {map} printed no JSON"))
    }

    /// `weft maps stats --json` on node `node` (1-based): name -> (packets, bytes).
    pub fn counters(&self, node: usize) -> Result<std::collections::BTreeMap<String, (u64, u64)>> {
        let counters = self.maps_json(node, "stats")?;
        Ok(counters
            .as_array()
            .into_iter()
            .flatten()
            .map(|counter| {
                let name = counter["name"].as_str().unwrap_or_default().to_owned();
                (
                    name,
                    (
                        counter["packets"].as_u64().unwrap_or_default(),
                        counter["bytes"].as_u64().unwrap_or_default(),
                    ),
                )
            })
            .collect())
    }

    /// Every pod pings every other pod `count` times; panics naming the pair
    /// that does not get every answer.
    pub fn assert_all_pairs_ping(&self, count: u32) {
        let pods: Vec<PodState> = self.pods().cloned().collect();
        for from in &pods {
            for to in pods.iter().filter(|to| to.ns != from.ns) {
                let out = self
                    .ping(from, to.ip(), count)
                    .unwrap_or_else(|error| panic!("{error:#}"));
                assert!(
                    out.contains(&format!("{count} received")),
                    "{} -> {}: {out}",
                    from.ns,
                    to.ip()
                );
            }
        }
    }

    /// Every pod pings every other once, so nodes learn their pods and
    /// underlay neighbours (the fast path's inputs) the way traffic teaches them.
    pub fn warm_up(&self) -> Result<()> {
        let pods: Vec<PodState> = self.pods().cloned().collect();
        for node in &self.state.nodes {
            let gateway = subnet_env::read_if_present(&node.subnet_file)?
                .ok_or_else(|| anyhow!("{} has no subnet.env", node.ns))?
                .gateway()
                .to_string();
            for pod in &node.pods {
                self.ping(pod, &gateway, 1)?;
            }
        }
        for from in &pods {
            for to in pods.iter().filter(|to| to.ns != from.ns) {
                self.ping(from, to.ip(), 1)?;
            }
        }
        // Give the agents a moment to turn what the kernel learned into map entries.
        sleep(Duration::from_millis(300));
        Ok(())
    }

    /// Leaves the lab running when this handle is dropped.
    pub fn keep(mut self) -> LabState {
        self.keep = true;
        unregister(&self.state.name);
        self.state.clone()
    }

    fn save(&self) -> Result<()> {
        let path = self.state.run_dir.join("state.json");
        fs::write(&path, serde_json::to_string_pretty(&self.state)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.keep
            && let Err(error) = down(&self.state.name)
        {
            eprintln!("lab {}: teardown incomplete: {error:#}", self.state.name);
        }
    }
}

fn validate(spec: &LabSpec) -> Result<()> {
    let name = &spec.name;
    ensure!(
        !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && name.starts_with(|c: char| c.is_ascii_lowercase()),
        "lab name {name:?}: use 1-{MAX_NAME_LEN} characters a-z, 0-9 and '-', starting with a letter"
    );
    ensure!(
        (1..=MAX_NODES).contains(&spec.nodes),
        "--nodes {}: must be 1..={MAX_NODES}",
        spec.nodes
    );
    ensure!(
        spec.pods_per_node <= 250,
        "--pods-per-node {}: must be at most 250",
        spec.pods_per_node
    );
    Ok(())
}

pub fn run_dir(name: &str) -> PathBuf {
    Path::new(RUN_ROOT).join(name)
}

/// Reads a running lab's recorded state.
pub fn load(name: &str) -> Result<LabState> {
    let path = run_dir(name).join("state.json");
    let text = fs::read_to_string(&path)
        .with_context(|| format!("no lab named {name} (no {})", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a lab state file", path.display()))
}

/// Removes everything lab `name` created: agents and etcd (SIGTERM, then
/// SIGKILL), pod, node and underlay namespaces, pin dirs, the run directory.
/// Works from any process and after a partial `up`; keeps going past errors
/// and reports them together.
pub fn down(name: &str) -> Result<()> {
    let mut errors = Vec::new();
    let dir = run_dir(name);
    if let Ok(entries) = fs::read_dir(&dir) {
        let mut pid_files: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "pid"))
            .collect();
        // Agents first, etcd last: agents detach cleanly while etcd is up.
        pid_files.sort_by_key(|path| path.ends_with("etcd.pid"));
        for pid_file in pid_files {
            if let Err(error) = process::stop(&pid_file, Duration::from_secs(10)) {
                errors.push(format!("{error:#}"));
            }
        }
    }
    let mut namespaces: Vec<String> = netns::list()
        .unwrap_or_default()
        .into_iter()
        .filter(|ns| belongs_to(name, ns))
        .collect();
    // Pods before nodes before the underlay.
    namespaces.sort_by_key(|ns| std::cmp::Reverse(ns.len()));
    for ns in namespaces {
        if let Err(error) = netns::delete(&ns) {
            errors.push(format!("{error:#}"));
        }
    }
    if let Ok(entries) = fs::read_dir(BPFFS) {
        for entry in entries.flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if belongs_to(name, &file_name)
                && let Err(error) = fs::remove_dir_all(entry.path())
            {
                errors.push(format!("cannot remove {}: {error}", entry.path().display()));
            }
        }
    }
    if dir.exists()
        && let Err(error) = fs::remove_dir_all(&dir)
    {
        errors.push(format!("cannot remove {}: {error}", dir.display()));
    }
    unregister(name);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(errors.join("; ")))
    }
}

/// Whether `item` (a namespace or pin dir name) is one of lab `name`'s:
/// `name-ul`, `name-nN` or `name-nN-pM`, and nothing else (`name-x` or
/// another lab `name2-...` never matches).
pub fn belongs_to(name: &str, item: &str) -> bool {
    let Some(rest) = item
        .strip_prefix(name)
        .and_then(|rest| rest.strip_prefix('-'))
    else {
        return false;
    };
    if rest == "ul" {
        return true;
    }
    let numbered = |part: &str, tag: char| {
        part.strip_prefix(tag)
            .is_some_and(|digits| !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()))
    };
    match rest.split_once('-') {
        None => numbered(rest, 'n'),
        Some((node, pod)) => numbered(node, 'n') && numbered(pod, 'p'),
    }
}

/// Human-readable status of lab `name`.
pub fn status(name: &str) -> Result<String> {
    let state = load(name)?;
    let alive = |pid_file: &Path| match process::running_pid(pid_file) {
        Some(pid) => format!("running (pid {pid})"),
        None => "not running".to_owned(),
    };
    let mut out = format!(
        "lab {}  backend {:?}  dataplane {:?}\n  {}  {UNDERLAY_BRIDGE} {UNDERLAY_GATEWAY}/{UNDERLAY_PREFIX}  etcd {} {}\n",
        state.name,
        state.backend,
        state.dataplane,
        state.underlay_ns,
        state.etcd_endpoint,
        alive(&state.run_dir.join("etcd.pid")),
    );
    for node in &state.nodes {
        let agent = match node.dataplane {
            Dataplane::Floor => "no agent (floor: plain routes)".to_owned(),
            dataplane => format!(
                "agent ({}) {}",
                dataplane.flag(),
                alive(&node.agent_pid_file(&state.run_dir))
            ),
        };
        out += &format!(
            "  {}  {UPLINK} {}/{UNDERLAY_PREFIX}  subnet {}  pins {}  {agent}\n",
            node.ns,
            node.ip,
            node.subnet,
            node.pin_dir.display()
        );
        for pod in &node.pods {
            out += &format!(
                "    {}  eth0 {}  host veth {}\n",
                pod.ns, pod.network.address, pod.network.host_veth
            );
        }
    }
    Ok(out)
}

/// Whether the agent in `ns` answers 200 on /readyz.
pub fn agent_ready(ns: &str) -> Result<bool> {
    agent_ready_on(ns, HEALTHZ_PORT)
}

/// Whether the agent in `ns` with `--healthz-port port` answers 200 on /readyz.
pub fn agent_ready_on(ns: &str, port: u16) -> Result<bool> {
    http_ok(ns, port, "/readyz")
}

/// Whether `GET path` on 127.0.0.1:`port` inside `ns` answers 200.
pub fn http_ok(ns: &str, port: u16, path: &str) -> Result<bool> {
    netns::in_netns(ns, || {
        use std::io::{Read as _, Write as _};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return Ok(false);
        };
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        Ok(response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"))
    })
}

/// Whether an XDP program is attached to `iface` in `ns`.
pub fn xdp_attached(ns: &str, iface: &str) -> Result<bool> {
    let out = netns::run_host(&["ip", "-j", "-n", ns, "link", "show", "dev", iface])?;
    let links: serde_json::Value = serde_json::from_str(&out)?;
    Ok(!links[0]["xdp"].is_null())
}

/// Whether program `program` is attached by TCX at ingress of `iface` in `ns`.
pub fn tc_attached(ns: &str, iface: &str, program: &str) -> Result<bool> {
    netns::in_netns(ns, || {
        let (_, programs) =
            aya::programs::SchedClassifier::query_tcx(iface, aya::programs::TcAttachType::Ingress)
                .with_context(|| format!("cannot query TCX on {iface}"))?;
        Ok(programs
            .iter()
            .any(|info| info.name_as_str() == Some(program)))
    })
}

/// Polls `check` until it is true; errors (naming `what`) on timeout or when
/// `check` fails.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        sleep(Duration::from_millis(50));
    }
}

// Ctrl-C / SIGTERM: tear down every lab this process is bringing up or
// holding, then exit. A lab left running on purpose (`lab up`) leaves this
// list through `Lab::keep`.
static LIVE_LABS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn register(name: &str) {
    LIVE_LABS
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .push(name.to_owned());
}

fn unregister(name: &str) {
    LIVE_LABS
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .retain(|live| live != name);
}

fn install_interrupt_teardown() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let installed = ctrlc::set_handler(|| {
            let names = LIVE_LABS
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .clone();
            for name in names {
                eprintln!("interrupted: tearing down lab {name}");
                if let Err(error) = down(&name) {
                    eprintln!("lab {name}: teardown incomplete: {error:#}");
                }
            }
            std::process::exit(130);
        });
        if let Err(error) = installed {
            // Another handler (e.g. the test harness's) owns the signal; Drop
            // still tears labs down on panic and normal exit.
            eprintln!("weft lab: cannot install the Ctrl-C teardown handler: {error}");
        }
    });
}

/// Counters as [`Lab::counters`] returns them: name -> (packets, bytes).
pub type Counters = std::collections::BTreeMap<String, (u64, u64)>;

/// How much counter `name` rose between two readings: (packets, bytes).
/// A flow's first packets take the kernel path until netfilter has passed
/// it both ways: the first request (new to conntrack), then the first reply
/// and the second request, which are recorded as they leave netfilter.
pub const FLOW_SETUP_PACKETS: u64 = 3;

/// Whether the fast path's byte counter (`counted`, headers included) covers
/// at least 99% of a transfer's `payload` bytes: the rest is the flow's
/// set-up and one packet per re-check interval, which netfilter sees.
pub fn carried_nearly_all(counted: u64, payload: u64) -> bool {
    counted * 100 >= payload * 99
}

pub fn counter_delta(before: &Counters, after: &Counters, name: &str) -> (u64, u64) {
    (
        after[name].0 - before[name].0,
        after[name].1 - before[name].1,
    )
}

/// How much the counters in `names` rose together: (packets, bytes).
pub fn counters_delta(before: &Counters, after: &Counters, names: &[&str]) -> (u64, u64) {
    names.iter().fold((0, 0), |(packets, bytes), name| {
        let (p, b) = counter_delta(before, after, name);
        (packets + p, bytes + b)
    })
}

/// Counters of VXLAN delivered into local pods: by XDP, or after GRO by TC.
pub const DECAP_COUNTERS: [&str; 2] = ["xdp_decap", "tc_uplink_decap"];
/// Counters of host-gw packets delivered into local pods: XDP, or TC after GRO.
pub const HOST_GW_DELIVERY_COUNTERS: [&str; 2] = ["xdp_host_gw", "tc_uplink_host_gw"];

/// The agent argument that puts XDP on the lab's (veth) uplinks, which
/// `--xdp-mode auto` leaves to TC alone.
pub const XDP_NATIVE: &str = "--xdp-mode=native";

#[cfg(test)]
mod tests {
    use super::belongs_to;

    #[test]
    fn only_the_labs_own_names_belong_to_it() {
        for own in ["weft-ul", "weft-n1", "weft-n12", "weft-n3-p2"] {
            assert!(belongs_to("weft", own), "{own}");
        }
        for foreign in [
            "weft",
            "weft-",
            "weft-x",
            "weft2-n1",
            "weftn1",
            "weft-n",
            "weft-n1-p",
            "weft-n1-q1",
            "weft-ul0",
            "other-n1",
        ] {
            assert!(!belongs_to("weft", foreign), "{foreign}");
        }
    }
}
