//! `weft agent`: validate inputs, take a subnet lease, program the datapath,
//! follow the other nodes' leases until SIGTERM/SIGINT.
//!
//! The flow is one-way. Every input has one handler on [`Agent`]; the ones
//! that change what the datapath should hold update their input (the
//! accepted peers, the local view, the own subnet, the ruleset generation)
//! and call [`Agent::apply`], which computes [`Desired`] (`desired.rs`) and
//! hands it to both sinks: the kernel writer and the map writer.

mod own_lease;
mod startup;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::{Notify, mpsc},
};
use tracing::{info, warn};

use self::own_lease::{OwnLease, Renewal};
use crate::{
    bpffs,
    cli::{AgentArgs, DataplaneArg},
    config::{BackendConfig, NetworkConfig},
    dataplane::{
        fastpath::FastPath,
        kernel::{self, KernelDataplane, KernelReport},
        maps::MapReport,
    },
    desired::{self, Desired, Inputs, NodeFacts},
    endpoints::LocalView,
    http::{self, Readiness},
    lease::{
        peers::PeerTable,
        registry::EtcdOptions,
        validate::LeasePolicy,
        watch::{LeaseEvent, LeaseFollower},
    },
    masq,
    net::{self},
    subnet_env, verdicts,
};

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

/// What one [`Agent::apply`] did: the sinks' reports (the map sink's only
/// with the fast path running).
#[derive(Debug, Default)]
pub struct Applied {
    pub unroutable: usize,
    pub kernel: Option<KernelReport>,
    pub maps: Option<MapReport>,
}

/// What one batch of lease events did.
#[derive(Debug, Default)]
pub struct LeaseOutcome {
    /// Changes to the accepted peer set.
    pub peer_changes: usize,
    /// Our own lease was lost and acquired again.
    pub reacquired: bool,
    pub applied: Applied,
}

/// The running agent: its inputs, the desired-state inputs, and the sinks.
pub struct Agent {
    args: Box<AgentArgs>,
    config: NetworkConfig,
    facts: NodeFacts,
    mtu: u32,
    own: OwnLease,
    peers: PeerTable,
    kernel: KernelDataplane,
    fast_path: Option<FastPath>,
    view: LocalView,
    ruleset_generation: u32,
    /// A listing has been applied: until then the kernel sink is left
    /// alone (its first sync removes what no lease explains).
    listed: bool,
    /// A local view has arrived: with a listing, CONFIG may go live.
    viewed: bool,
    readiness: Readiness,
}

impl Agent {
    /// Computes the desired state from the current inputs and makes both
    /// sinks hold it. The one update path, for listings and events alike.
    async fn apply(&mut self) -> Applied {
        let pods = self
            .fast_path
            .as_ref()
            .map(FastPath::pods)
            .unwrap_or_default();
        let desired: Desired = desired::compute(&Inputs {
            node: &self.facts,
            peers: self.peers.peers(),
            view: &self.view,
            pods: &pods,
            ruleset_generation: self.ruleset_generation,
            listed: self.listed,
            viewed: self.viewed,
        });
        for (subnet, why) in &desired.unroutable {
            warn!(%subnet, "{why}; not programming it");
        }
        let mut applied = Applied {
            unroutable: desired.unroutable.len(),
            ..Applied::default()
        };
        if desired.listed {
            applied.kernel = Some(self.kernel.sync(&desired).await);
        }
        if let Some(fast_path) = self.fast_path.as_mut() {
            applied.maps = Some(fast_path.sync(&desired).await);
        }
        applied
    }

    /// A batch of lease events (a listing of thousands is one batch, so it
    /// costs one apply).
    pub async fn on_lease_events(&mut self, events: Vec<LeaseEvent>) -> Result<LeaseOutcome> {
        let mut outcome = LeaseOutcome::default();
        let mut lost = false;
        let mut listed = false;
        for event in &events {
            lost |= self.own.is_lost_by(event);
            if self.own.is_own(event) {
                continue;
            }
            let own = Some(self.own.subnet);
            outcome.peer_changes += match event {
                LeaseEvent::Listing(leases) => {
                    listed = true;
                    self.peers.resync(leases, own).len()
                }
                LeaseEvent::Put {
                    key,
                    value,
                    create_revision,
                } => self.peers.put(key, value, *create_revision, own).len(),
                LeaseEvent::Delete { key } => self.peers.delete(key).len(),
            };
        }
        if listed {
            // A listing replaces all the agent knew: check the kernel again.
            self.kernel.reread_next_sync();
            self.listed = true;
        }
        if listed || outcome.peer_changes > 0 {
            outcome.applied = self.apply().await;
        }
        if listed && !self.readiness.get() {
            info!(
                peers = self.peers.peers().len() - outcome.applied.unroutable,
                rejected = %rejection_summary(&self.peers),
                "datapath programmed; ready"
            );
            self.readiness.set(true);
        }
        if lost {
            outcome.reacquired = true;
            if self.own.reacquire(&self.config).await {
                self.take_subnet().await?;
            }
        }
        Ok(outcome)
    }

    /// The lease is due for renewal.
    pub async fn on_renew_due(&mut self) -> Renewal {
        self.own.renew().await
    }

    /// Makes the own subnet the node's, and the local pods the ones in it.
    async fn take_subnet(&mut self) -> Result<()> {
        self.own
            .take(&self.kernel, &self.args, &self.config, self.mtu)
            .await?;
        if let Some(fast_path) = self.fast_path.as_mut() {
            fast_path.set_own_subnet(self.own.subnet);
            self.apply().await;
        }
        Ok(())
    }

    /// `--ip-masq`: checks the rules and restores them if they changed;
    /// returns whether they were (re)applied.
    pub fn on_masq_check(&mut self) -> bool {
        let subnet = self.own.subnet;
        match masq::is_current(&self.config.network, &subnet) {
            Ok(true) => false,
            Ok(false) => match masq::apply(&self.config.network, &subnet) {
                Ok(()) => {
                    info!(table = masq::TABLE, "masquerade rules (re)applied");
                    true
                }
                Err(error) => {
                    warn!("{error:#}");
                    false
                }
            },
            Err(error) => {
                warn!("{error:#}");
                false
            }
        }
    }

    /// The kernel's view of pods, ports, uplink neighbours and routes.
    pub async fn on_view(&mut self, view: LocalView) -> Applied {
        if let Some(fast_path) = self.fast_path.as_mut() {
            fast_path.on_view(&view).await;
        }
        self.view = view;
        self.viewed = true;
        self.apply().await
    }

    /// Pods not complete yet are read again; the maps follow if they
    /// changed, and the pods' pinned neighbours are checked either way.
    pub async fn on_pod_retry(&mut self) -> Option<Applied> {
        let fast_path = self.fast_path.as_mut()?;
        if fast_path.retry_pods(&self.view).await {
            return Some(self.apply().await);
        }
        fast_path.pin_pod_neighbours().await;
        None
    }

    /// Reads the maps back and repairs whatever differs.
    pub async fn on_map_audit(&mut self) -> Option<Applied> {
        let fast_path = self.fast_path.as_mut()?;
        if let Err(error) = fast_path.reread_maps() {
            warn!("cannot read the maps back: {error:#}");
            return None;
        }
        Some(self.apply().await)
    }

    /// The node's nftables ruleset changed: every verdict recorded so far
    /// is void until netfilter passes the flow again under the new rules.
    pub async fn on_ruleset_changed(&mut self) -> Applied {
        self.ruleset_generation = self.ruleset_generation.wrapping_add(1);
        tracing::debug!(
            generation = self.ruleset_generation,
            "nftables ruleset changed; fast-path verdicts voided"
        );
        self.apply().await
    }

    /// SIGTERM/SIGINT: detach the programs; the kernel datapath stays
    /// programmed, as flanneld leaves it, so pods keep talking while the
    /// agent restarts.
    pub fn on_stop(self, signal: &str) {
        info!("{signal}: detaching");
        self.readiness.set(false);
        if let Some(mut fast_path) = self.fast_path {
            let detached = fast_path.programs.detach_all();
            info!(
                attachments = detached,
                "detached; maps stay pinned in {}",
                self.args.bpf_pin_dir.display()
            );
            // Nothing clears the accept mark without tc_verdict.
            if let Err(error) = verdicts::remove() {
                warn!("{error:#}");
            }
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

    let (registry, config) = tokio::select! {
        ready = startup::connect_and_read_config(&options, &connect) => ready,
        signal = signals.recv() => { info!("{signal} before start-up finished"); return Ok(()) }
    };
    info!(network = %config.network, subnet_len = config.subnet_len, backend = config.backend.type_name(), "network config");

    let mut kernel = KernelDataplane::new(
        handle.clone(),
        config.clone(),
        uplink.index,
        uplink.public_ip,
    );
    let vxlan = kernel.ensure_vxlan_device(uplink.mtu).await?;
    let attrs = startup::lease_attrs(&uplink, &config, vxlan);
    let uplink_prefixes = kernel::ipv4_prefixes(&handle, uplink.index).await?;
    let mut facts = startup::node_facts(&uplink, &config, uplink_prefixes, vxlan, &args);

    let mut fast_path = None;
    let mut ruleset_generation = 0;
    let (views_tx, mut views_rx) = mpsc::channel::<LocalView>(8);
    let ruleset_changed = Arc::new(Notify::new());
    if ebpf_enabled {
        let vxlan_name = match config.backend {
            BackendConfig::Vxlan { vni, .. } => Some(KernelDataplane::vxlan_name(vni)),
            BackendConfig::HostGw => None,
        };
        match startup::start_fast_path(
            &args,
            &uplink,
            vxlan_name.as_deref(),
            &mut facts,
            handle.clone(),
            views_tx,
            ruleset_changed.clone(),
        ) {
            Ok(started) => {
                ruleset_generation = started.ruleset_generation;
                fast_path = Some(started.fast_path);
            }
            Err(error) if args.dataplane == DataplaneArg::Auto => {
                warn!(
                    "the eBPF fast path cannot start: {error:#}; running the kernel datapath only"
                );
            }
            Err(error) => return Err(error),
        }
    }

    let previous_subnet = previous.as_ref().map(|env| env.subnet.trunc());
    let own = tokio::select! {
        own = OwnLease::acquire(registry.clone(), &config, attrs, previous_subnet, args.subnet_lease_renew_margin) => own,
        signal = signals.recv() => { info!("{signal} before a lease was acquired"); return Ok(()) }
    };
    let peers = PeerTable::new(LeasePolicy::new(
        &config,
        uplink.public_ip,
        vxlan.map(|device| device.mac),
    ));
    let mut agent = Agent {
        mtu: desired::overlay_mtu(&config, uplink.mtu),
        args,
        config,
        facts,
        own,
        peers,
        kernel,
        fast_path,
        view: LocalView::default(),
        ruleset_generation,
        listed: false,
        viewed: false,
        readiness,
    };
    agent.take_subnet().await?;

    let mut masq_check = tokio::time::interval(MASQ_RECHECK);
    let mut pod_retry = tokio::time::interval(POD_RETRY);
    let mut map_audit = tokio::time::interval(MAP_AUDIT);
    let mut follower = LeaseFollower::new(registry);
    let ip_masq = agent.args.ip_masq;
    let fast = agent.fast_path.is_some();
    let stop = loop {
        tokio::select! {
            events = follower.next() => { agent.on_lease_events(events).await?; }
            () = tokio::time::sleep_until(agent.own.renew_at) => { agent.on_renew_due().await; }
            _ = masq_check.tick(), if ip_masq => { agent.on_masq_check(); }
            Some(view) = views_rx.recv() => { agent.on_view(view).await; }
            _ = pod_retry.tick(), if fast => { agent.on_pod_retry().await; }
            _ = map_audit.tick(), if fast => { agent.on_map_audit().await; }
            () = ruleset_changed.notified(), if fast => { agent.on_ruleset_changed().await; }
            signal = signals.recv() => break signal,
        }
    };
    agent.on_stop(stop);
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
