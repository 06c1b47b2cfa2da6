//! Starting, stopping and watching each node's agent: weft, or stock
//! flanneld on [`Dataplane::Flanneld`] nodes.

use std::{fs, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use nix::sys::signal::Signal;
use weft_agent::subnet_env;

use super::{Dataplane, Lab, NodeId, SubnetManager, UPLINK, wait_for};
use crate::{netns, process};

/// Where each node's agent serves /healthz, /readyz and /metrics (on every
/// address of the node namespace, so the lab's Prometheus in the underlay
/// reaches it; every node can use the same port).
pub const HEALTHZ_PORT: u16 = 10256;

/// What flanneld logs once its backend runs and it follows peer leases,
/// lower-cased: the vxlan backend writes "watching for new subnet leases",
/// the host-gw (route) backend "Watching for new subnet leases".
const FLANNELD_RUNNING: &str = "watching for new subnet leases";

/// The agent argument that puts XDP on the lab's (veth) uplinks, which
/// `--xdp-mode auto` leaves to TC alone.
pub const XDP_NATIVE: &str = "--xdp-mode=native";

/// How long an agent may take to turn ready in a lab of a few leases.
pub const AGENT_READY_WITHIN: Duration = Duration::from_secs(30);

impl Lab {
    /// Starts the agent on `node` and waits until it is ready
    /// (lease held, datapath programmed, subnet.env written) and, with the
    /// eBPF dataplane, XDP is on its uplink.
    pub fn start_agent(&mut self, node: NodeId) -> Result<u32> {
        self.start_agent_within(node, AGENT_READY_WITHIN)
    }

    /// [`Self::start_agent`], waiting up to `timeout` for it to be ready:
    /// an agent turns ready once it has programmed the whole first listing,
    /// which takes longer than [`AGENT_READY_WITHIN`] with many thousands
    /// of leases on a slow machine (a debug build).
    pub fn start_agent_within(&mut self, node: NodeId, timeout: Duration) -> Result<u32> {
        let pid = self.spawn_agent(node)?;
        self.wait_agent_ready_within(node, timeout)?;
        Ok(pid)
    }

    pub(super) fn spawn_agent(&mut self, node: NodeId) -> Result<u32> {
        if self.node(node).dataplane == Dataplane::Flanneld {
            return self.spawn_flanneld(node);
        }
        let weft = self.state.weft_bin.display().to_string();
        ensure!(
            self.state.weft_bin.exists(),
            "{weft} does not exist; build it with `cargo build -p weft-agent` (cargo xtask test and lab do)"
        );
        let etcd_endpoint = self.state.etcd_endpoint.clone();
        let ip_masq = self.state.ip_masq;
        let agent_args = self.state.agent_args.clone();
        let capabilities = self.state.agent_capabilities.clone();
        let state = self.node(node);
        let mut command = netns::command(&state.ns, &weft)?;
        if let Some(capabilities) = capabilities {
            // After netns::command's setns, which needs CAP_SYS_ADMIN.
            process::bound_capabilities(&mut command, &capabilities)?;
        }
        command.args(["agent", "--iface", UPLINK]);
        match self.state.subnet_manager {
            SubnetManager::Etcd => {
                command.args(["--etcd-endpoints", &etcd_endpoint]);
            }
            // As kube-flannel.yml runs flanneld: the agents' ServiceAccount,
            // net-conf.json, the node's name in NODE_NAME.
            SubnetManager::Kube => {
                let kube = self.kube()?;
                command
                    .arg("--kube-subnet-mgr")
                    .arg(format!(
                        "--kubeconfig-file={}",
                        kube.agent_kubeconfig.display()
                    ))
                    .arg(format!("--net-config-path={}", kube.net_conf.display()))
                    .env("NODE_NAME", state.node_name());
            }
        }
        command
            .args([
                "--healthz-ip",
                "0.0.0.0",
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
        self.launch(node, command)
    }

    /// flanneld with the flags weft gets: etcd (or, with the kube subnet
    /// manager, the API server with the agents' ServiceAccount and the node's
    /// name, as kube-flannel.yml runs it), `--iface`, `--subnet-file`,
    /// `--ip-masq`, its health endpoint on the same port.
    fn spawn_flanneld(&mut self, node: NodeId) -> Result<u32> {
        let flanneld = self
            .state
            .flanneld_bin
            .clone()
            .ok_or_else(|| anyhow!("lab {} has no flanneld binary", self.state.name))?;
        let etcd_endpoint = self.state.etcd_endpoint.clone();
        let ip_masq = self.state.ip_masq;
        let state = self.node(node);
        let mut command = netns::command(&state.ns, &flanneld.display().to_string())?;
        command.args(["--iface", UPLINK]);
        match self.state.subnet_manager {
            SubnetManager::Etcd => {
                command.args(["--etcd-endpoints", &etcd_endpoint]);
            }
            SubnetManager::Kube => {
                let kube = self.kube()?;
                command
                    .arg("--kube-subnet-mgr")
                    .arg(format!(
                        "--kubeconfig-file={}",
                        kube.agent_kubeconfig.display()
                    ))
                    .arg(format!("--net-config-path={}", kube.net_conf.display()))
                    .env("NODE_NAME", state.node_name());
            }
        }
        command
            .arg(format!("--subnet-file={}", state.subnet_file.display()))
            .args(["--healthz-ip", "127.0.0.1", "--healthz-port"])
            .arg(HEALTHZ_PORT.to_string());
        if ip_masq {
            command.arg("--ip-masq");
        }
        self.launch(node, command)
    }

    /// Starts `node`'s agent `command` detached, with its log in the node's
    /// run directory and its pid where `down` finds it.
    fn launch(&mut self, node: NodeId, command: std::process::Command) -> Result<u32> {
        let run_dir = self.state.run_dir.clone();
        let state = self.node_mut(node);
        let log = run_dir.join(&state.ns).join("agent.log");
        let pid = process::spawn_daemon(command, &log, &state.agent_pid_file(&run_dir))?;
        state.agent_log = Some(log);
        self.save()?;
        Ok(pid)
    }

    pub(super) fn wait_agent_ready(&mut self, node: NodeId) -> Result<()> {
        self.wait_agent_ready_within(node, AGENT_READY_WITHIN)
    }

    fn wait_agent_ready_within(&mut self, node: NodeId, timeout: Duration) -> Result<()> {
        let run_dir = self.state.run_dir.clone();
        let dual_stack = self.state.dual_stack;
        let state = self.node_mut(node);
        let pid_file = state.agent_pid_file(&run_dir);
        let log = state.agent_log.clone().unwrap_or_default();
        let ns = state.ns.clone();
        let dataplane = state.dataplane;
        wait_for(&format!("the agent on {ns} to be ready"), timeout, || {
            if process::running_pid(&pid_file).is_none() {
                bail!("the agent on {ns} exited:\n{}", process::log_tail(&log, 20));
            }
            Ok(match dataplane {
                // flanneld has no /readyz: it is ready once its backend
                // follows peer leases (after writing subnet.env).
                Dataplane::Flanneld => fs::read_to_string(&log)
                    .is_ok_and(|text| text.to_lowercase().contains(FLANNELD_RUNNING)),
                // weft attaches the uplink programs (TC in every
                // `--xdp-mode`, then XDP if any) before it turns ready.
                Dataplane::Ebpf => {
                    agent_ready(&ns)?
                        && tc_attached(&ns, UPLINK, weft_common::program_names::TC_UPLINK)?
                }
                _ => agent_ready(&ns)?,
            })
        })
        .with_context(|| format!("the agent's log ends:\n{}", process::log_tail(&log, 30)))?;
        let env = subnet_env::read_if_present(&state.subnet_file)?.ok_or_else(|| {
            anyhow!(
                "the agent on {ns} is ready but wrote no {}",
                state.subnet_file.display()
            )
        })?;
        ensure!(
            !dual_stack || env.ipv6.is_some(),
            "the agent on {ns} wrote no FLANNEL_IPV6_SUBNET to {} in a dual-stack lab",
            state.subnet_file.display()
        );
        // Empty on an IPv6-only node.
        state.subnet = env
            .ipv4
            .map(|ipv4| ipv4.subnet.trunc().to_string())
            .unwrap_or_default();
        state.subnet6 = env.ipv6.map(|ipv6| ipv6.subnet.trunc().to_string());
        self.save()
    }

    /// The value of the sample `name_and_labels` (as the exposition writes
    /// it) in node `node`'s agent's /metrics; a sample that is missing is
    /// an error, never 0, so a renamed metric fails its test.
    pub fn metric(&self, node: NodeId, name_and_labels: &str) -> Result<f64> {
        let ns = &self.node(node).ns;
        let body = netns::in_netns(ns, || crate::scrapes::get(HEALTHZ_PORT, "/metrics"))?.body;
        crate::scrapes::sample(&body, name_and_labels)
            .ok_or_else(|| anyhow!("no {name_and_labels} in {ns}'s /metrics"))
    }

    /// The pid of node `node`'s running agent.
    pub fn agent_pid(&self, node: NodeId) -> Option<u32> {
        process::running_pid(&self.node(node).agent_pid_file(&self.state.run_dir))
    }

    /// Stops node `node`'s agent with `signal` and waits for it to exit.
    pub fn stop_agent(&self, node: NodeId, signal: Signal) -> Result<()> {
        let state = self.node(node);
        let pid_file = state.agent_pid_file(&self.state.run_dir);
        let pid = process::running_pid(&pid_file)
            .ok_or_else(|| anyhow!("no agent runs on {}", state.ns))?;
        let program = self.agent_program(node)?;
        process::signal_and_wait(pid, &program, signal, Duration::from_secs(10));
        ensure!(
            !process::is_running(pid, &program),
            "the agent on {} survived {signal}",
            state.ns
        );
        // A multi-threaded process shows as a zombie once its main thread
        // is gone, while its other threads may still be exiting and holding
        // its files: the pin dir's lock is free only once the last one is.
        if state.pin_dir.exists() {
            wait_for(
                &format!("the agent on {} to release its pin dir", state.ns),
                Duration::from_secs(10),
                || process::unlocked(&state.pin_dir),
            )?;
        }
        let _ = fs::remove_file(pid_file);
        Ok(())
    }

    /// The binary `node`'s agent runs.
    fn agent_program(&self, node: NodeId) -> Result<String> {
        let binary = match self.node(node).dataplane {
            Dataplane::Flanneld => self
                .state
                .flanneld_bin
                .clone()
                .ok_or_else(|| anyhow!("lab {} has no flanneld binary", self.state.name))?,
            _ => self.state.weft_bin.clone(),
        };
        Ok(binary.display().to_string())
    }

    /// Replaces `node`'s agent by `dataplane`'s, as an operator does: stop
    /// the running one (SIGTERM), start the other with the same flags and
    /// `subnet.env`, and wait until it is ready (and, with the eBPF
    /// dataplane, has every pod in its maps). Pods stay as they are.
    pub fn replace_agent(&mut self, node: NodeId, dataplane: Dataplane) -> Result<()> {
        ensure!(
            dataplane != Dataplane::Floor,
            "a floor node runs no agent to replace"
        );
        self.stop_agent(node, Signal::SIGTERM)?;
        self.node_mut(node).dataplane = dataplane;
        self.save()?;
        self.start_agent(node)?;
        if dataplane == Dataplane::Ebpf {
            self.wait_pods_attached(node)?;
        }
        Ok(())
    }

    /// Waits until the agent on `node` has TC on every pod veth and every
    /// pod in ENDPOINTS (read from the pod's own namespace once its CNI
    /// plugin has configured its address).
    pub fn wait_pods_attached(&self, node: NodeId) -> Result<()> {
        let state = self.node(node);
        for pod in &state.pods {
            let veth = pod.network.host_veth.clone();
            wait_for(
                &format!("TC on {} in {}", veth, state.ns),
                Duration::from_secs(10),
                || tc_attached(&state.ns, &veth, weft_common::program_names::TC_POD_EGRESS),
            )?;
        }
        // ENDPOINTS6 for an IPv6-only lab's pods.
        let map = if self.state.ipv6_only {
            "endpoints6"
        } else {
            "endpoints"
        };
        wait_for(
            &format!("every pod of {} in {map}", state.ns),
            Duration::from_secs(10),
            || {
                let endpoints = self.maps_json(node, map)?.to_string();
                Ok(state
                    .pods
                    .iter()
                    .all(|pod| endpoints.contains(&format!("\"{}\"", pod.ip()))))
            },
        )
    }
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
