//! `weft agent`: validate inputs, load the fast path, follow pod veths until
//! SIGTERM/SIGINT, then detach everything.

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{info, warn};

use crate::{
    bpffs,
    cli::AgentArgs,
    dataplane::ebpf::EbpfDataplane,
    endpoints::{self, BridgePorts},
    net, subnet_env,
};

pub async fn run(args: AgentArgs) -> Result<()> {
    // Check every input before touching the kernel, so a bad flag or file
    // fails with one clear line and leaves nothing half-attached.
    let uplink_index = net::ifindex(&args.iface).context("--iface")?;
    match subnet_env::read_if_present(&args.subnet_file)? {
        Some(env) => {
            info!(file = %args.subnet_file.display(), subnet = %env.subnet, network = %env.network, mtu = env.mtu, "subnet.env")
        }
        None => info!(file = %args.subnet_file.display(), "no subnet.env yet"),
    }
    bpffs::ensure_pin_dir(&args.bpf_pin_dir)?;

    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;

    let mut dataplane = EbpfDataplane::load(&args.bpf_pin_dir)?;
    let mode = dataplane.attach_uplink(&args.iface, uplink_index, args.xdp_mode)?;
    info!(iface = %args.iface, ifindex = uplink_index, ?mode, "XDP attached to the uplink");

    let (ports_tx, mut ports_rx) = mpsc::channel::<BridgePorts>(8);
    let watcher = tokio::spawn(endpoints::watch_bridge_ports(args.bridge.clone(), ports_tx));

    info!(bridge = %args.bridge, pin_dir = %args.bpf_pin_dir.display(), "agent running");
    let outcome = loop {
        tokio::select! {
            ports = ports_rx.recv() => match ports {
                Some(ports) => dataplane.reconcile_pod_ports(&ports),
                None => break watcher.await.context("bridge watcher panicked")?
                    .context("lost the kernel link event stream"),
            },
            _ = sigterm.recv() => { info!("SIGTERM: detaching"); break Ok(()) }
            _ = sigint.recv() => { info!("SIGINT: detaching"); break Ok(()) }
        }
    };
    let detached = dataplane.detach_all();
    info!(
        interfaces = detached,
        "detached; maps stay pinned in {}",
        args.bpf_pin_dir.display()
    );
    if outcome.is_err() {
        warn!("agent stopped on an error");
    }
    outcome
}
