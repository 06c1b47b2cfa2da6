//! `weft agent`: validate inputs, take a subnet (an etcd lease, or this
//! Node's podCIDR), program the datapath, follow the other nodes' claims
//! until SIGTERM/SIGINT.
//!
//! The flow is one-way. Every input has one handler on [`Agent`]; the ones
//! that change what the datapath should hold update their input (the
//! accepted peers, the local view, the local pods, the own subnet, the
//! ruleset generation) and call [`Agent::apply`], which computes
//! [`Desired`] (`desired.rs`) and hands it to the sinks: the kernel writer,
//! the overlay guard, and the fast path (the maps, and the pods' pinned
//! neighbour entries on the bridge).
//!
//! The loop is single-threaded, so no handler blocks or waits on something
//! unbounded: work that can take long (acquiring a lost lease again, the
//! masquerade check, the look for accept-bit users) runs in tasks of its
//! own and sends its result back on a channel, and a signal is taken
//! between any two handlers.

mod handlers;
mod mark_check;
mod startup;

pub use handlers::Agent;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::{Notify, mpsc},
};
use tracing::{info, warn};

use self::mark_check::MarkChecks;
use crate::{
    bpffs,
    cli::{AgentArgs, DataplaneArg},
    config::BackendConfig,
    dataplane::{guard::OverlayGuard, kernel::KernelDataplane},
    desired,
    endpoints::{self, LocalView},
    http::{self, Readiness},
    lease::{
        peers::PeerTable,
        validate::{LeasePolicy, OwnSubnets},
    },
    net,
    overlay_guard::{self, GuardSpec},
    pods::LocalPods,
    subnet_env,
    subnet_manager::Connection,
    verdicts,
};

/// How often the --ip-masq rules are checked (and restored if changed),
/// by `masq::Keeper`'s task.
const MASQ_RECHECK: Duration = Duration::from_secs(5);
/// How often pods whose side could not be read, whose GRO is not
/// confirmed, or that had no address yet are read again (a pod that is
/// complete costs nothing here).
const POD_RETRY: Duration = Duration::from_millis(500);
/// How often every pod's side is read again, complete or not, so a MAC or
/// address changed inside a pod is followed within this bound.
const POD_REREAD: Duration = Duration::from_secs(5);
/// How often the maps are read back and repaired where they differ from
/// what they should hold.
const MAP_AUDIT: Duration = Duration::from_secs(10);

struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

pub async fn run(args: Box<AgentArgs>) -> Result<()> {
    // Check every local input before touching etcd or the kernel, so a bad
    // flag or file fails with one clear line and leaves nothing behind.
    let (connection, handle, _) =
        rtnetlink::new_connection().context("cannot open an rtnetlink socket")?;
    tokio::spawn(connection);
    let mut uplink = net::select_uplink(
        &handle,
        &args.iface,
        args.iface_regex.as_deref(),
        args.public_ip,
    )
    .await?;
    let previous = subnet_env::read_if_present(&args.subnet_file)?;
    let ebpf_enabled = args.dataplane != DataplaneArg::Kernel;
    let _pin_dir_lock = if ebpf_enabled {
        bpffs::ensure_pin_dir(&args.bpf_pin_dir)?;
        Some(bpffs::lock_pin_dir(&args.bpf_pin_dir)?)
    } else {
        None
    };
    info!(uplink = %uplink.name, public_ip = ?uplink.public_ip.map(|ip| ip.to_string()), mtu = uplink.mtu, "uplink");

    let readiness = Readiness::default();
    if args.healthz_port != 0 {
        http::serve(
            SocketAddr::from((args.healthz_ip, args.healthz_port)),
            readiness.clone(),
        )
        .await?;
    }
    let mut signals = Signals::new()?;

    let (connection, config) = tokio::select! {
        opened = Connection::open(&args) => opened?,
        signal = signals.recv() => { info!("{signal} before start-up finished"); return Ok(()) }
    };
    info!(
        network = ?config.ipv4.as_ref().map(|ipv4| ipv4.network.to_string()),
        subnet_len = ?config.ipv4.as_ref().map(|ipv4| ipv4.subnet_len),
        ipv6_network = ?config.ipv6.as_ref().map(|ipv6| ipv6.network.to_string()),
        ipv6_subnet_len = ?config.ipv6.as_ref().map(|ipv6| ipv6.subnet_len),
        backend = config.backend.type_name(),
        "network config"
    );

    // Which of the uplink's sides matter is known only now, with the
    // config: an IPv4 address unless the network is IPv6-only, an IPv6 one
    // when it has IPv6.
    if config.ipv4.is_some() {
        uplink.ipv4()?;
    } else {
        if let Some(ignored) = args.public_ip {
            warn!(public_ip = %ignored, "--public-ip is ignored: the network is IPv6-only");
        }
        // flanneld's IPv6-only node announces no IPv4 address either.
        uplink.public_ip = None;
    }
    if config.ipv6.is_some() {
        let (own, public) = net::uplink_ipv6(&handle, &uplink, args.public_ipv6).await?;
        info!(uplink = %uplink.name, ipv6 = %own, public_ipv6 = %public, "the uplink's IPv6 side");
        uplink.ipv6 = Some(own);
        uplink.public_ipv6 = Some(public);
    } else if let Some(ignored) = args.public_ipv6 {
        warn!(public_ipv6 = %ignored, "--public-ipv6 is ignored: the network has no IPv6");
    }

    let mut kernel = KernelDataplane::new(
        handle.clone(),
        config.clone(),
        uplink.index,
        uplink.public_ip,
    );
    let vxlan_name = config.backend.vni().map(KernelDataplane::vxlan_name);
    // The guard goes in before the VXLAN devices are created or brought up:
    // each opens a socket on the backend's port on every local address, and
    // the first datagram to reach it must already meet the guard.
    let guard = match (&config.backend, &vxlan_name) {
        (&BackendConfig::Vxlan { port, vni, .. }, Some(vxlan_device)) => {
            // `flannel.<VNI>` exists below exactly when the network has
            // IPv4, `flannel-v6.<VNI>` when the uplink has an IPv6 side (a
            // network with IPv6).
            let vxlan_device = config.ipv4.as_ref().map(|_| vxlan_device.clone());
            let vxlan_v6_device = uplink.ipv6.map(|_| KernelDataplane::vxlan_v6_name(vni));
            let known_peers = overlay_guard::Members {
                v4: kernel.fdb_destinations().await?,
                v6: match vxlan_v6_device {
                    Some(_) => kernel.fdb_destinations_v6().await?,
                    None => Default::default(),
                },
            };
            let spec = GuardSpec {
                bridge: args.bridge.clone(),
                vxlan_device,
                vxlan_v6_device,
                port,
            };
            overlay_guard::install(&spec, &known_peers)?;
            crate::metrics::global().guard_installed();
            info!(
                port,
                known_peers = known_peers.v4.len() + known_peers.v6.len(),
                "overlay guard installed: the VXLAN port takes only peers' addresses, never pods'"
            );
            Some(OverlayGuard::default())
        }
        _ => None,
    };
    startup::remove_left_overs(&kernel, &handle, &args.bridge, &config, previous.as_ref()).await;
    let vxlan = kernel.ensure_vxlan_device(uplink.mtu).await?;
    let vxlan_v6 = match uplink.ipv6 {
        Some(local) => kernel.ensure_vxlan_v6_device(uplink.mtu, local).await?,
        None => None,
    };
    // Both VXLAN devices: tc on either is tc the fast path must not
    // bypass, and kernel-path packets leave netfilter through either
    // (tc_verdict learns there).
    let vtep_names: Vec<String> = vxlan_name
        .iter()
        .filter(|_| vxlan.is_some())
        .cloned()
        .chain(
            config
                .backend
                .vni()
                .filter(|_| vxlan_v6.is_some())
                .map(KernelDataplane::vxlan_v6_name),
        )
        .collect();
    let attrs = startup::lease_attrs(&uplink, &config, vxlan, vxlan_v6);
    let mut facts = startup::node_facts(&uplink, &config, vxlan, vxlan_v6, &args);

    let mut fast_path = None;
    let mut ruleset_generation = 0;
    let mut marks = None;
    let mut verdicts_suspended = false;
    // The local view is an input of both sinks (the uplink's routes decide
    // VXLAN or direct, its neighbours PEERS' next hops), so it is followed
    // with either dataplane; no route is planned before the first arrives.
    let (views_tx, mut views_rx) = mpsc::channel::<LocalView>(8);
    tokio::spawn(endpoints::watch(
        args.bridge.clone(),
        uplink.index,
        vtep_names.clone(),
        config.ipv4.as_ref().map(|ipv4| ipv4.network),
        config.ipv6.as_ref().map(|ipv6| ipv6.network),
        views_tx,
    ));
    let ruleset_changed = Arc::new(Notify::new());
    if ebpf_enabled {
        match startup::start_fast_path(
            &args,
            &uplink,
            &vtep_names,
            &mut facts,
            handle.clone(),
            ruleset_changed.clone(),
        ) {
            Ok(started) => {
                ruleset_generation = started.ruleset_generation;
                fast_path = Some(started.fast_path);
                marks = Some(started.marks);
                verdicts_suspended = started.verdicts_suspended;
            }
            Err(error) if args.dataplane == DataplaneArg::Auto => {
                warn!(
                    "the eBPF fast path cannot start: {error:#}; running the kernel datapath only"
                );
            }
            Err(error) => return Err(error),
        }
    }

    // subnet.env's subnets (each family's only if the file has it).
    let previous_subnets = previous.as_ref().map(|env| OwnSubnets {
        v4: env.ipv4.map(|ipv4| ipv4.subnet.trunc()),
        v6: env.ipv6.map(|ipv6| ipv6.subnet.trunc()),
    });
    // What no peer may announce: our addresses and VTEP MACs, both families.
    let own_ipv6 = (
        attrs.public_ipv6,
        attrs.backend_v6_data.as_ref().map(|data| data.vtep_mac),
    );
    let (manager, subnets) = tokio::select! {
        taken = connection.acquire(&config, attrs, previous_subnets, &args) => taken,
        signal = signals.recv() => { info!("{signal} before a subnet was taken"); return Ok(()) }
    };
    info!(subnet = ?subnets.v4.map(|v4| v4.to_string()), subnet_v6 = ?subnets.v6.map(|v6| v6.to_string()), "this node's subnets");
    let policy = manager.peer_policy(
        LeasePolicy::new(&config, uplink.public_ip, vxlan.map(|device| device.mac))
            .with_own_ipv6(own_ipv6.0, own_ipv6.1),
        subnets,
    );
    let mut agent = Agent {
        mtu: desired::overlay_mtu(&config, uplink.mtu),
        args,
        config,
        facts,
        subnets,
        manager,
        masq: None,
        peers: PeerTable::new(policy),
        kernel,
        guard,
        pods: fast_path.is_some().then(|| LocalPods::new(handle.clone())),
        fast_path,
        marks: None,
        verdicts_suspended,
        view: LocalView::default(),
        ruleset_generation,
        listed: false,
        viewed: false,
        readiness,
    };
    // Later ruleset changes are looked through for other users of the
    // accept bit (the first look ran at start-up).
    let mut mark_results = marks.map(|marks: verdicts::Marks| {
        let (checks, results) = MarkChecks::new(marks.accept);
        agent.marks = Some((marks, checks));
        results
    });
    agent.take_subnet().await?;

    let mut pod_retry = tokio::time::interval(POD_RETRY);
    let mut map_audit = tokio::time::interval(MAP_AUDIT);
    let mut pod_reread = tokio::time::interval(POD_REREAD);
    let fast = agent.fast_path.is_some();
    let stop = loop {
        tokio::select! {
            update = agent.manager.next() => { agent.on_update(update).await?; }
            Some(view) = views_rx.recv() => { agent.on_view(view).await; }
            _ = pod_retry.tick(), if fast => { agent.on_pod_retry().await; }
            _ = map_audit.tick(), if fast => { agent.on_map_audit().await; }
            _ = pod_reread.tick(), if fast => { agent.on_pod_reread().await; }
            Some(result) = recv_some(&mut mark_results) => { agent.on_mark_check(result).await; }
            () = ruleset_changed.notified(), if fast => { agent.on_ruleset_changed().await; }
            signal = signals.recv() => break signal,
        }
    };
    agent.on_stop(stop).await;
    Ok(())
}

/// The next message of an optional channel; pending forever without one.
async fn recv_some<T>(receiver: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match receiver {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}
