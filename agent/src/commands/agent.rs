//! `weft agent`: validate inputs, take a subnet lease, program the datapath,
//! follow the other nodes' leases until SIGTERM/SIGINT.
//!
//! The flow is one-way: lease events -> the peer table (desired state) -> the
//! kernel datapath (and the eBPF dataplane, which follows pod veths).

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use etcd_client::ConnectOptions;
use ipnet::Ipv4Net;
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::{Notify, mpsc},
    time::Instant,
};
use tracing::{error, info, warn};
use weft_common::{CONFIG_BULK_TCP_VIA_GRO, CONFIG_STRICT_VTEPS, CONFIG_UPLINK_XDP, NodeConfig};

use crate::{
    bpffs,
    cli::{AgentArgs, DataplaneArg},
    config::{BackendConfig, NetworkConfig},
    dataplane::{
        ebpf::{AttachedXdpMode, EbpfDataplane},
        fastpath::FastPath,
        kernel::{KernelDataplane, PeerRoute},
        maps::FastPathMaps,
    },
    endpoints::{self, LocalView},
    http::{self, Readiness},
    lease::{
        self, LeaseAttrs, MacAddr, VxlanBackendData,
        acquire::{LEASE_TTL, acquire},
        peers::{PeerChange, PeerTable},
        registry::{EtcdOptions, Registry},
        validate::LeasePolicy,
        watch::{LeaseEvent, LeaseFollower},
    },
    masq,
    net::{self, Uplink},
    subnet_env::{self, SubnetEnv},
    verdicts,
};

/// A failed renewal is retried this often, as flanneld does.
const RENEW_RETRY: Duration = Duration::from_secs(60);
/// How often the --ip-masq rules are checked (and restored if changed).
const MASQ_RECHECK: Duration = Duration::from_secs(5);
/// How often pods whose side could not be read, whose GRO is not
/// confirmed, or that had no address yet are read again (a pod that is
/// complete costs nothing here).
const POD_RETRY: Duration = Duration::from_millis(500);
/// How often the maps are read back and repaired where they differ from
/// what they should hold.
const MAP_AUDIT: Duration = Duration::from_secs(10);
/// How often start-up steps that wait on etcd try again.
const STARTUP_RETRY: Duration = Duration::from_secs(2);

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
    let uplink = net::select_uplink(
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
    let options = EtcdOptions {
        endpoints: args.etcd_endpoints.clone(),
        prefix: args.etcd_prefix.clone(),
        keyfile: args.etcd_keyfile.clone(),
        certfile: args.etcd_certfile.clone(),
        cafile: args.etcd_cafile.clone(),
        username: args.etcd_username.clone(),
        password: args.etcd_password.clone(),
    };
    let connect = options.connect_options()?;
    info!(uplink = %uplink.name, public_ip = %uplink.public_ip, mtu = uplink.mtu, "uplink");

    let readiness = Readiness::default();
    if args.healthz_port != 0 {
        http::serve(
            SocketAddr::from((args.healthz_ip, args.healthz_port)),
            readiness.clone(),
        )
        .await?;
    }
    let mut signals = Signals::new()?;

    let (mut registry, config) = tokio::select! {
        ready = connect_and_read_config(&options, &connect) => ready,
        signal = signals.recv() => { info!("{signal} before start-up finished"); return Ok(()) }
    };
    info!(network = %config.network, subnet_len = config.subnet_len, backend = config.backend.type_name(), "network config");

    let mut kernel = KernelDataplane::new(
        handle.clone(),
        config.clone(),
        uplink.index,
        uplink.public_ip,
    )
    .await?;
    let vxlan = kernel.ensure_vxlan_device(uplink.mtu).await?;
    let attrs = LeaseAttrs {
        public_ip: uplink.public_ip,
        public_ipv6: None,
        backend_type: config.backend.type_name().to_owned(),
        backend_data: match (&config.backend, vxlan) {
            (BackendConfig::Vxlan { vni, .. }, Some(device)) => Some(VxlanBackendData {
                vni: *vni,
                vtep_mac: device.mac,
            }),
            _ => None,
        },
    };
    let mtu = match &config.backend {
        BackendConfig::Vxlan { mtu, .. } => mtu.unwrap_or(uplink.mtu - 50),
        BackendConfig::HostGw => uplink.mtu,
    };

    let mut fast_path = None;
    let (views_tx, mut views_rx) = mpsc::channel::<LocalView>(8);
    let ruleset_changed = Arc::new(Notify::new());
    if ebpf_enabled {
        let node = node_config(&uplink, &config, vxlan.map(|device| device.mac), &args);
        let vxlan_name = match config.backend {
            BackendConfig::Vxlan { vni, .. } => Some(KernelDataplane::vxlan_name(vni)),
            BackendConfig::HostGw => None,
        };
        match start_fast_path(
            &args,
            &uplink,
            vxlan_name.as_deref(),
            node,
            handle.clone(),
            views_tx,
            ruleset_changed.clone(),
        ) {
            Ok(started) => fast_path = Some(started),
            Err(error) if args.dataplane == DataplaneArg::Auto => {
                warn!(
                    "the eBPF fast path cannot start: {error:#}; running the kernel datapath only"
                );
            }
            Err(error) => return Err(error),
        }
    }

    let previous_subnet = previous.as_ref().map(|env| env.subnet.trunc());
    let mut own = tokio::select! {
        subnet = acquire_until_done(&mut registry, &config, &attrs, previous_subnet) => subnet,
        signal = signals.recv() => { info!("{signal} before a lease was acquired"); return Ok(()) }
    };
    take_subnet(&kernel, &args, &config, own, mtu).await?;
    if let Some(fast_path) = fast_path.as_mut() {
        fast_path.set_own_subnet(own).await;
    }
    let renew_margin = Duration::from_secs(args.subnet_lease_renew_margin * 60);
    let renew_every = LEASE_TTL
        .saturating_sub(renew_margin)
        .max(Duration::from_secs(60));
    let mut renew_at = Instant::now() + renew_every;

    let mut masq_check = tokio::time::interval(MASQ_RECHECK);
    let mut pod_retry = tokio::time::interval(POD_RETRY);
    let mut map_audit = tokio::time::interval(MAP_AUDIT);
    let mut follower = LeaseFollower::new(registry.clone());
    let mut peers = PeerTable::new(LeasePolicy::new(
        &config,
        uplink.public_ip,
        vxlan.map(|device| device.mac),
    ));
    let mut programmed: BTreeMap<Ipv4Net, PeerRoute> = BTreeMap::new();
    let stop = loop {
        tokio::select! {
            events = follower.next() => {
                crate::metrics::global().synced();
                let own_key = lease::key(registry.prefix(), &own);
                let mut reacquire = false;
                // The fast path follows once per batch, not once per event:
                // a listing of thousands of leases arrives as one batch.
                let mut routes_changed = false;
                for event in events {
                    match event {
                        LeaseEvent::Listing(leases) => {
                            crate::metrics::global().leases_listed();
                            if !leases.iter().any(|lease| lease.key == own_key) {
                                warn!(key = %own_key, "our lease is gone from etcd");
                                reacquire = true;
                            }
                            peers.resync(&leases, Some(own));
                            programmed = plan_all(&kernel, peers.peers());
                            if let Err(error) = kernel.reconcile(&programmed).await {
                                warn!("cannot reconcile the kernel datapath: {error:#}");
                            }
                            routes_changed = true;
                            if !readiness.get() {
                                info!(
                                    peers = programmed.len(),
                                    rejected = %rejection_summary(&peers),
                                    "datapath programmed; ready"
                                );
                                readiness.set(true);
                            }
                        }
                        LeaseEvent::Put { key, value, .. } if key == own_key => {
                            if LeaseAttrs::from_json(&value).ok().as_ref() != Some(&attrs) {
                                warn!(%key, "our lease was overwritten by someone else");
                                reacquire = true;
                            }
                        }
                        LeaseEvent::Delete { key } if key == own_key => {
                            warn!(%key, "our lease was deleted");
                            reacquire = true;
                        }
                        LeaseEvent::Put { key, value, create_revision } => {
                            for change in peers.put(&key, &value, create_revision, Some(own)) {
                                apply(&kernel, &mut programmed, change).await;
                                routes_changed = true;
                            }
                        }
                        LeaseEvent::Delete { key } => {
                            for change in peers.delete(&key) {
                                apply(&kernel, &mut programmed, change).await;
                                routes_changed = true;
                            }
                        }
                    }
                }
                crate::metrics::global().set_peers(programmed.values().filter(|route| matches!(route, PeerRoute::Vxlan { .. })).count(), programmed.len());
                if routes_changed && let Some(fast_path) = fast_path.as_mut() {
                    fast_path.on_routes(&programmed);
                }
                if reacquire {
                    let subnet = acquire_until_done(&mut registry, &config, &attrs, Some(own)).await;
                    if subnet != own {
                        warn!(old = %own, new = %subnet, "re-acquired a different subnet; pods on the old one need restarting");
                        own = subnet;
                        take_subnet(&kernel, &args, &config, own, mtu).await?;
                        if let Some(fast_path) = fast_path.as_mut() {
                            fast_path.set_own_subnet(own).await;
                        }
                    } else {
                        info!(%subnet, "re-acquired our subnet");
                    }
                    renew_at = Instant::now() + renew_every;
                }
            }
            () = tokio::time::sleep_until(renew_at) => {
                match registry.renew(&own, &attrs, LEASE_TTL).await {
                    Ok(()) => {
                        crate::metrics::global().lease_renewed(true);
                        info!(subnet = %own, "lease renewed");
                        renew_at = Instant::now() + renew_every;
                    }
                    Err(error) => {
                        crate::metrics::global().lease_renewed(false);
                        warn!("{error:#}; retrying in a minute");
                        renew_at = Instant::now() + RENEW_RETRY;
                    }
                }
            }
            _ = masq_check.tick(), if args.ip_masq => {
                let own_subnet = own;
                match masq::is_current(&config.network, &own_subnet) {
                    Ok(true) => {}
                    Ok(false) => match masq::apply(&config.network, &own_subnet) {
                        Ok(()) => info!(table = masq::TABLE, "masquerade rules (re)applied"),
                        Err(error) => warn!("{error:#}"),
                    },
                    Err(error) => warn!("{error:#}"),
                }
            }
            Some(view) = views_rx.recv() => {
                if let Some(fast_path) = fast_path.as_mut() {
                    fast_path.on_view(view).await;
                }
            }
            _ = pod_retry.tick(), if fast_path.is_some() => {
                if let Some(fast_path) = fast_path.as_mut() {
                    fast_path.retry_pods().await;
                }
            }
            _ = map_audit.tick(), if fast_path.is_some() => {
                if let Some(fast_path) = fast_path.as_mut() {
                    fast_path.audit_maps().await;
                }
            }
            () = ruleset_changed.notified(), if fast_path.is_some() => {
                if let Some(fast_path) = fast_path.as_mut() {
                    fast_path.on_ruleset_changed();
                }
            }
            signal = signals.recv() => break signal,
        }
    };
    info!("{stop}: detaching");
    readiness.set(false);
    if let Some(mut fast_path) = fast_path {
        let detached = fast_path.programs.detach_all();
        info!(
            attachments = detached,
            "detached; maps stay pinned in {}",
            args.bpf_pin_dir.display()
        );
        // Nothing clears the accept mark without tc_verdict.
        if let Err(error) = verdicts::remove() {
            warn!("{error:#}");
        }
    }
    // The kernel datapath stays programmed, as flanneld leaves it: pods keep
    // talking while the agent restarts.
    Ok(())
}

/// Connects to etcd and reads a valid network config, retrying (and saying
/// why) until both work.
async fn connect_and_read_config(
    options: &EtcdOptions,
    connect: &ConnectOptions,
) -> (Registry, NetworkConfig) {
    let mut last_error = String::new();
    loop {
        let attempt = async {
            let mut registry = Registry::connect(options, connect).await?;
            let key = registry.config_key();
            let text = registry
                .config()
                .await?
                .ok_or_else(|| anyhow::anyhow!("{key}: no network config yet"))?;
            let config = NetworkConfig::parse(&text).with_context(|| key.clone())?;
            anyhow::Ok((registry, config))
        };
        match attempt.await {
            Ok(ready) => {
                crate::metrics::global().etcd_connected(true);
                return ready;
            }
            Err(error) => {
                crate::metrics::global().etcd_connected(false);
                let message = format!("{error:#}");
                if message != last_error {
                    error!("{message}; retrying");
                    last_error = message;
                }
                tokio::time::sleep(STARTUP_RETRY).await;
            }
        }
    }
}

async fn acquire_until_done(
    registry: &mut Registry,
    config: &NetworkConfig,
    attrs: &LeaseAttrs,
    previous: Option<Ipv4Net>,
) -> Ipv4Net {
    loop {
        match acquire(registry, config, attrs, previous).await {
            Ok((subnet, reason)) => {
                info!(%subnet, ?reason, "lease acquired");
                return subnet;
            }
            Err(error) => {
                error!("cannot acquire a subnet lease: {error:#}; retrying");
                tokio::time::sleep(STARTUP_RETRY).await;
            }
        }
    }
}

/// Makes `subnet` this node's: the VXLAN device address and subnet.env.
async fn take_subnet(
    kernel: &KernelDataplane,
    args: &AgentArgs,
    config: &NetworkConfig,
    subnet: Ipv4Net,
    mtu: u32,
) -> Result<()> {
    kernel.set_vxlan_address(&subnet).await?;
    let gateway = Ipv4Net::new(
        subnet.hosts().next().unwrap_or(subnet.network()),
        subnet.prefix_len(),
    )?;
    let env = SubnetEnv {
        network: config.network,
        subnet: gateway,
        mtu,
        ipmasq: args.ip_masq,
    };
    if args.ip_masq {
        masq::apply(&config.network, &subnet)?;
        info!(table = masq::TABLE, "masquerade rules applied");
    }
    subnet_env::write_atomic(&args.subnet_file, &env)?;
    info!(file = %args.subnet_file.display(), subnet = %gateway, "subnet.env written");
    Ok(())
}

/// `rule=count` for every rule that rejected a lease, for the log.
fn rejection_summary(peers: &PeerTable) -> String {
    let counts: Vec<String> = peers
        .rejections()
        .iter()
        .map(|(rule, count)| format!("{rule}={count}"))
        .collect();
    if counts.is_empty() {
        "none".to_owned()
    } else {
        counts.join(",")
    }
}

fn plan_all(
    kernel: &KernelDataplane,
    peers: &BTreeMap<Ipv4Net, LeaseAttrs>,
) -> BTreeMap<Ipv4Net, PeerRoute> {
    peers
        .iter()
        .filter_map(|(subnet, attrs)| match kernel.plan(*subnet, attrs) {
            Ok(route) => Some((*subnet, route)),
            Err(error) => {
                warn!("{error:#}; not programming it");
                None
            }
        })
        .collect()
}

async fn apply(
    kernel: &KernelDataplane,
    programmed: &mut BTreeMap<Ipv4Net, PeerRoute>,
    change: PeerChange,
) {
    match change {
        PeerChange::Upsert { subnet, attrs } => {
            let route = match kernel.plan(subnet, &attrs) {
                Ok(route) => route,
                Err(error) => {
                    warn!("{error:#}; not programming it");
                    return;
                }
            };
            if let Some(old) = programmed.get(&subnet).filter(|old| **old != route)
                && let Err(error) = kernel.remove_peer(old).await
            {
                warn!(%subnet, "{error:#}");
            }
            match kernel.add_peer(&route).await {
                Ok(()) => {
                    info!(%subnet, public_ip = %attrs.public_ip, "peer programmed");
                    programmed.insert(subnet, route);
                }
                Err(error) => warn!(%subnet, "{error:#}"),
            }
        }
        PeerChange::Remove { subnet, .. } => {
            if let Some(old) = programmed.remove(&subnet) {
                match kernel.remove_peer(&old).await {
                    Ok(()) => info!(%subnet, "peer removed"),
                    Err(error) => warn!(%subnet, "{error:#}"),
                }
            }
        }
    }
}

/// CONFIG[0] for this node; the gateway MAC follows once cni0 exists.
fn node_config(
    uplink: &Uplink,
    config: &NetworkConfig,
    vtep_mac: Option<MacAddr>,
    args: &AgentArgs,
) -> NodeConfig {
    let (vni, port) = match config.backend {
        BackendConfig::Vxlan { vni, port, .. } => (vni, port),
        BackendConfig::HostGw => (0, 0),
    };
    NodeConfig {
        node_ip: uplink.public_ip.octets(),
        uplink_ifindex: uplink.index,
        vni,
        vxlan_port_be: port.to_be(),
        uplink_mac: uplink.mac.0,
        vtep_mac: vtep_mac.map(|mac| mac.0).unwrap_or_default(),
        gateway_mac: [0; 6],
        uplink_mtu: uplink.mtu,
        flags: (if args.strict_vteps {
            CONFIG_STRICT_VTEPS
        } else {
            0
        }) | (if args.bulk_tcp_via_gro {
            CONFIG_BULK_TCP_VIA_GRO
        } else {
            0
        }),
        accept_mark: args.accept_mark,
        // Set from the pinned CONFIG when the fast path starts.
        ruleset_generation: 0,
        verdict_ttl_ns: args.verdict_ttl_ms * 1_000_000,
    }
}

/// Loads and attaches the programs, writes CONFIG, installs the nftables
/// rule that tells the fast path what netfilter passed, and starts following
/// the node's pods, neighbours and ruleset.
fn start_fast_path(
    args: &AgentArgs,
    uplink: &Uplink,
    vxlan_device: Option<&str>,
    node: NodeConfig,
    handle: rtnetlink::Handle,
    views: mpsc::Sender<LocalView>,
    ruleset_changed: Arc<Notify>,
) -> Result<FastPath> {
    let mut programs = EbpfDataplane::load(&args.bpf_pin_dir)?;
    let mut maps = FastPathMaps::open_pinned(&args.bpf_pin_dir)?;
    // Verdicts recorded before this start (pinned FLOWS) were not followed
    // by this agent's ruleset watch: a new generation voids them.
    let mut node = node;
    node.ruleset_generation = maps.cached_config().ruleset_generation.wrapping_add(1);
    // Dormant until the maps hold this run's leases and pods (FastPath
    // goes live then): a previous run's pinned entries may be stale.
    maps.set_config(NodeConfig {
        ruleset_generation: node.ruleset_generation,
        ..NodeConfig::default()
    })?;
    // Record verdicts before anything is fast-pathed: where kernel-path
    // packets leave the node's netfilter (pod veths follow as they appear).
    programs.attach_verdicts(&uplink.name)?;
    if let Some(device) = vxlan_device {
        programs.attach_verdicts(device)?;
    }
    let mode = programs.attach_uplink(uplink, args.xdp_mode)?;
    info!(iface = %uplink.name, xdp = ?mode, veth = uplink.is_veth, "uplink programs attached");
    // TC on the uplink counts what XDP would have counted when XDP is off.
    if mode != AttachedXdpMode::Off {
        node.flags |= CONFIG_UPLINK_XDP;
    }
    verdicts::watch_ruleset(ruleset_changed)?;
    verdicts::install(args.accept_mark)?;
    if verdicts::make_tcp_tracking_liberal()? {
        info!(
            "net.netfilter.nf_conntrack_tcp_be_liberal set to 1: conntrack does not see fast-pathed TCP segments"
        );
    }
    info!(
        table = verdicts::TABLE,
        mark = format_args!("{:#x}", args.accept_mark),
        "netfilter verdict rule installed; the fast path takes only flows it marks"
    );
    tokio::spawn(endpoints::watch(args.bridge.clone(), uplink.index, views));
    crate::metrics::global().fast_path_started(&args.bpf_pin_dir);
    Ok(FastPath::new(programs, maps, handle, node))
}
