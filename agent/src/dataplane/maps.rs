//! The map writer, the sink for the fast path's half of [`Desired`]: PEERS,
//! VTEPS, ENDPOINTS, their IPv6 halves PEERS6 and ENDPOINTS6, and CONFIG,
//! written so that only what differs changes.
//! A cache of each map's contents (read from the maps when the writer is
//! made, so a restarted agent adopts what the last one left) keeps a sync to
//! in-memory work plus one syscall per changed entry. Every entry is written
//! on its own: one that fails is logged and counted, the others still go
//! in, and the cache keeps saying what the map really holds, so the next
//! sync tries the failed entry again.
//!
//! Built from typed aya maps ([`FastPathMaps::new`]), so the agent (pinned
//! maps, [`FastPathMaps::open_pinned`]) and the program tests (maps of an
//! unpinned object) drive the same code.

mod write_log;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, lpm_trie::Key};
use ipnet::{Ipv4Net, Ipv6Net};
use tracing::{info, warn};
use weft_common::{
    CONFIG_STRICT_VTEPS, Endpoint, EndpointKey, EndpointKey6, MAX_ENDPOINTS, MAX_PEERS, NodeConfig,
    Peer, Peer6, PeerAddr, PeerAddr6, Vtep, VtepKey, map_names,
};
pub use write_log::WriteLog;

use crate::desired::{self, Desired};

pub type PeersMap = LpmTrie<MapData, PeerAddr, Peer>;
pub type Peers6Map = LpmTrie<MapData, PeerAddr6, Peer6>;
pub type EndpointsMap = HashMap<MapData, EndpointKey, Endpoint>;
pub type Endpoints6Map = HashMap<MapData, EndpointKey6, Endpoint>;
pub type VtepsMap = HashMap<MapData, VtepKey, Vtep>;
pub type ConfigMap = Array<MapData, NodeConfig>;

pub struct FastPathMaps {
    peers: PeersMap,
    peers6: Peers6Map,
    endpoints: EndpointsMap,
    endpoints6: Endpoints6Map,
    vteps: VtepsMap,
    config: ConfigMap,
    cached_peers: BTreeMap<(u32, PeerAddr), Peer>,
    cached_peers6: BTreeMap<(u32, PeerAddr6), Peer6>,
    cached_endpoints: BTreeMap<[u8; 4], Endpoint>,
    cached_endpoints6: BTreeMap<[u8; 16], Endpoint>,
    cached_vteps: BTreeMap<[u8; 4], Vtep>,
    cached_config: NodeConfig,
    /// `--strict-vteps` is asked for but suspended (VTEPS is full), as last
    /// said in the log: said once when it starts and once when it ends.
    strict_vteps_suspended: bool,
    writes: WriteLog,
}

/// What one [`FastPathMaps::sync`] could not apply, for logs and counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapReport {
    /// Entries written (inserted, changed or removed).
    pub written: u64,
    /// Entries that failed, per map (each logged by [`WriteLog`]).
    pub failed: BTreeMap<&'static str, u64>,
    /// VTEPS holds every VXLAN peer; if not, the strict VTEP check is
    /// suspended in the CONFIG written (it would drop real peers' traffic).
    pub vteps_complete: bool,
    /// CONFIG went from dormant to live in this sync.
    pub went_live: bool,
}

impl MapReport {
    fn count(&mut self, map: &'static str, ok: bool) {
        if ok {
            self.written += 1;
        } else {
            *self.failed.entry(map).or_default() += 1;
        }
    }
}

impl FastPathMaps {
    /// Opens the maps pinned in `pin_dir`.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self> {
        let open = |name: &str| crate::bpffs::open_pinned_map(pin_dir, name);
        let wrong = |name: &'static str| {
            move |error| anyhow!("{name} in {} is not weft's: {error}", pin_dir.display())
        };
        let peers = LpmTrie::try_from(Map::LpmTrie(open(map_names::PEERS)?))
            .map_err(wrong(map_names::PEERS))?;
        let peers6 = LpmTrie::try_from(Map::LpmTrie(open(map_names::PEERS6)?))
            .map_err(wrong(map_names::PEERS6))?;
        let endpoints = HashMap::try_from(Map::HashMap(open(map_names::ENDPOINTS)?))
            .map_err(wrong(map_names::ENDPOINTS))?;
        let endpoints6 = HashMap::try_from(Map::HashMap(open(map_names::ENDPOINTS6)?))
            .map_err(wrong(map_names::ENDPOINTS6))?;
        let vteps = HashMap::try_from(Map::HashMap(open(map_names::VTEPS)?))
            .map_err(wrong(map_names::VTEPS))?;
        let config = Array::try_from(Map::Array(open(map_names::CONFIG)?))
            .map_err(wrong(map_names::CONFIG))?;
        Self::new(peers, peers6, endpoints, endpoints6, vteps, config)
    }

    /// Takes the six maps and reads them into the caches.
    pub fn new(
        peers: PeersMap,
        peers6: Peers6Map,
        endpoints: EndpointsMap,
        endpoints6: Endpoints6Map,
        vteps: VtepsMap,
        config: ConfigMap,
    ) -> Result<Self> {
        let mut maps = Self {
            peers,
            peers6,
            endpoints,
            endpoints6,
            vteps,
            config,
            cached_peers: BTreeMap::new(),
            cached_peers6: BTreeMap::new(),
            cached_endpoints: BTreeMap::new(),
            cached_endpoints6: BTreeMap::new(),
            cached_vteps: BTreeMap::new(),
            cached_config: NodeConfig::default(),
            strict_vteps_suspended: false,
            writes: WriteLog::default(),
        };
        maps.reload()?;
        Ok(maps)
    }

    /// Re-reads every map into the caches.
    pub fn reload(&mut self) -> Result<()> {
        self.cached_peers = self
            .peers()?
            .into_iter()
            .map(|(key, peer)| ((key.prefix_len(), key.data()), peer))
            .collect();
        self.cached_peers6 = self
            .peers6()?
            .into_iter()
            .map(|(key, peer)| ((key.prefix_len(), key.data()), peer))
            .collect();
        self.cached_endpoints = self
            .endpoints()?
            .into_iter()
            .map(|(key, endpoint)| (key.addr, endpoint))
            .collect();
        self.cached_endpoints6 = self
            .endpoints6()?
            .into_iter()
            .map(|(key, endpoint)| (key.addr, endpoint))
            .collect();
        self.cached_vteps = self
            .vteps()?
            .into_iter()
            .map(|(key, vtep)| (key.addr, vtep))
            .collect();
        self.cached_config = self.config()?;
        Ok(())
    }

    pub fn peers(&self) -> Result<Vec<(Key<PeerAddr>, Peer)>> {
        self.peers
            .iter()
            .collect::<Result<_, _>>()
            .context("cannot read PEERS")
    }

    pub fn peers6(&self) -> Result<Vec<(Key<PeerAddr6>, Peer6)>> {
        self.peers6
            .iter()
            .collect::<Result<_, _>>()
            .context("cannot read PEERS6")
    }

    pub fn endpoints6(&self) -> Result<Vec<(EndpointKey6, Endpoint)>> {
        self.endpoints6
            .iter()
            .collect::<Result<_, _>>()
            .context("cannot read ENDPOINTS6")
    }

    pub fn endpoints(&self) -> Result<Vec<(EndpointKey, Endpoint)>> {
        self.endpoints
            .iter()
            .collect::<Result<_, _>>()
            .context("cannot read ENDPOINTS")
    }

    pub fn vteps(&self) -> Result<Vec<(VtepKey, Vtep)>> {
        self.vteps
            .iter()
            .collect::<Result<_, _>>()
            .context("cannot read VTEPS")
    }

    pub fn config(&self) -> Result<NodeConfig> {
        self.config.get(&0, 0).context("cannot read CONFIG")
    }

    pub fn set_config(&mut self, config: NodeConfig) -> Result<()> {
        if config != self.cached_config {
            self.config
                .set(0, config, 0)
                .context("cannot write CONFIG")?;
            self.cached_config = config;
        }
        Ok(())
    }

    pub fn cached_config(&self) -> NodeConfig {
        self.cached_config
    }

    /// Failed map writes since start.
    pub fn write_failures(&self) -> &BTreeMap<&'static str, u64> {
        self.writes.failures()
    }

    /// Makes the maps hold `desired`: VTEPS and PEERS, then PEERS6, then
    /// ENDPOINTS and ENDPOINTS6, then CONFIG last, so CONFIG goes live only
    /// once the others are written. PEERS6 has no VTEPS of its own: the
    /// programs never decapsulate VXLAN over IPv6 (the kernel path does).
    /// VTEPS is derived from what PEERS holds ([`desired::vteps`]) and
    /// never passes a frame PEERS would refuse: before PEERS changes, it
    /// narrows to the entries the old and the new PEERS share
    /// ([`desired::vteps_while_changing`]: a lease moved to another
    /// PublicIP is refused from the old one before PEERS says where it
    /// went); after, it follows what PEERS now holds, also where a PEERS
    /// write failed.
    pub fn sync(&mut self, desired: &Desired) -> MapReport {
        // Until the first listing and local view are planned, a restarted
        // agent keeps the last run's PEERS and VTEPS (CONFIG is dormant
        // meanwhile).
        let mut report = MapReport {
            vteps_complete: true,
            ..MapReport::default()
        };
        if desired.planned {
            let wanted_peers = peer_entries(&desired.peers);
            let shared: BTreeMap<(u32, PeerAddr), Peer> = self
                .cached_peers
                .iter()
                .filter(|(key, peer)| wanted_peers.get(*key) == Some(*peer))
                .map(|(key, peer)| (*key, *peer))
                .collect();
            let known: Vec<Ipv4Addr> = desired
                .vteps
                .keys()
                .filter(|source| self.cached_vteps.contains_key(&source.octets()))
                .copied()
                .collect();
            let during = desired::vteps_while_changing(subnets(&shared), known);
            self.sync_vteps(&during, &mut report);
            self.sync_peers(&wanted_peers, &mut report);
            let held = desired::vteps(subnets(&self.cached_peers));
            self.sync_vteps(&held, &mut report);
            report.vteps_complete = desired
                .vteps
                .keys()
                .all(|source| self.cached_vteps.contains_key(&source.octets()));
            self.sync_peers6(&peer6_entries(&desired.peers6), &mut report);
        }
        self.sync_endpoints(&desired.endpoints, &mut report);
        self.sync_endpoints6(&desired.endpoints6, &mut report);
        let mut config = desired.config;
        if !report.vteps_complete {
            config.flags &= !CONFIG_STRICT_VTEPS;
        }
        let was_live = self.cached_config.uplink_ifindex != 0;
        match self.set_config(config) {
            Ok(()) => {
                report.written += 1;
                report.went_live = !was_live && config.uplink_ifindex != 0;
                if report.went_live {
                    info!("maps synced with the leases and the pods: the fast path is live");
                }
                let asked = desired.config.flags & CONFIG_STRICT_VTEPS != 0;
                let suspended = asked && !report.vteps_complete;
                if suspended != self.strict_vteps_suspended {
                    self.strict_vteps_suspended = suspended;
                    if suspended {
                        warn!(
                            "VTEPS cannot hold every VXLAN peer: strict VTEP check suspended, VXLAN from any source goes to the kernel path"
                        );
                    } else {
                        info!("every VXLAN peer is in VTEPS: strict VTEP check on again");
                    }
                }
            }
            Err(error) => {
                warn!("{error:#}");
                report.count(map_names::CONFIG, false);
            }
        }
        report
    }

    fn sync_peers(&mut self, wanted: &BTreeMap<(u32, PeerAddr), Peer>, report: &mut MapReport) {
        let peers = &mut self.peers;
        sync_entries(
            Table::PEERS,
            &mut self.cached_peers,
            wanted,
            (&mut self.writes, report),
            |&(prefix_len, addr)| PeerEntry(prefix_len, addr),
            |change| match change {
                Change::Remove(&(prefix_len, addr)) => peers.remove(&Key::new(prefix_len, addr)),
                Change::Insert(&(prefix_len, addr), peer) => {
                    peers.insert(&Key::new(prefix_len, addr), peer, 0)
                }
            },
        );
    }

    fn sync_peers6(&mut self, wanted: &BTreeMap<(u32, PeerAddr6), Peer6>, report: &mut MapReport) {
        let peers6 = &mut self.peers6;
        sync_entries(
            Table::PEERS6,
            &mut self.cached_peers6,
            wanted,
            (&mut self.writes, report),
            |&(prefix_len, addr)| Peer6Entry(prefix_len, addr),
            |change| match change {
                Change::Remove(&(prefix_len, addr)) => peers6.remove(&Key::new(prefix_len, addr)),
                Change::Insert(&(prefix_len, addr), peer) => {
                    peers6.insert(&Key::new(prefix_len, addr), peer, 0)
                }
            },
        );
    }

    fn sync_vteps(&mut self, sources: &BTreeMap<Ipv4Addr, Vtep>, report: &mut MapReport) {
        let wanted: BTreeMap<[u8; 4], Vtep> = sources
            .iter()
            .map(|(ip, vtep)| (ip.octets(), *vtep))
            .collect();
        let vteps = &mut self.vteps;
        sync_entries(
            Table::VTEPS,
            &mut self.cached_vteps,
            &wanted,
            (&mut self.writes, report),
            |addr| Ipv4Addr::from(*addr),
            |change| match change {
                Change::Remove(&addr) => vteps.remove(&VtepKey { addr }),
                Change::Insert(&addr, vtep) => vteps.insert(VtepKey { addr }, *vtep, 0),
            },
        );
    }

    fn sync_endpoints(&mut self, desired: &BTreeMap<Ipv4Addr, Endpoint>, report: &mut MapReport) {
        let wanted: BTreeMap<[u8; 4], Endpoint> = desired
            .iter()
            .map(|(ip, endpoint)| (ip.octets(), *endpoint))
            .collect();
        let endpoints = &mut self.endpoints;
        sync_entries(
            Table::ENDPOINTS,
            &mut self.cached_endpoints,
            &wanted,
            (&mut self.writes, report),
            |addr| Ipv4Addr::from(*addr),
            |change| match change {
                Change::Remove(&addr) => endpoints.remove(&EndpointKey { addr }),
                Change::Insert(&addr, endpoint) => {
                    endpoints.insert(EndpointKey { addr }, *endpoint, 0)
                }
            },
        );
    }

    fn sync_endpoints6(&mut self, desired: &BTreeMap<Ipv6Addr, Endpoint>, report: &mut MapReport) {
        let wanted: BTreeMap<[u8; 16], Endpoint> = desired
            .iter()
            .map(|(ip, endpoint)| (ip.octets(), *endpoint))
            .collect();
        let endpoints6 = &mut self.endpoints6;
        sync_entries(
            Table::ENDPOINTS6,
            &mut self.cached_endpoints6,
            &wanted,
            (&mut self.writes, report),
            |addr| Ipv6Addr::from(*addr),
            |change| match change {
                Change::Remove(&addr) => endpoints6.remove(&EndpointKey6 { addr }),
                Change::Insert(&addr, endpoint) => {
                    endpoints6.insert(EndpointKey6 { addr }, *endpoint, 0)
                }
            },
        );
    }
}

/// PEERS6's entries as the map keys them: (prefix length, network address).
fn peer6_entries(desired: &BTreeMap<Ipv6Net, Peer6>) -> BTreeMap<(u32, PeerAddr6), Peer6> {
    desired
        .iter()
        .map(|(subnet, peer)| {
            (
                (u32::from(subnet.prefix_len()), subnet.network().octets()),
                *peer,
            )
        })
        .collect()
}

/// PEERS' entries as the map keys them: (prefix length, network address).
fn peer_entries(desired: &BTreeMap<Ipv4Net, Peer>) -> BTreeMap<(u32, PeerAddr), Peer> {
    desired
        .iter()
        .map(|(subnet, peer)| {
            (
                (u32::from(subnet.prefix_len()), subnet.network().octets()),
                *peer,
            )
        })
        .collect()
}

/// PEERS' entries as subnets (a key no subnet can have, read back from a
/// map someone else wrote, is left out: the sync removes it).
fn subnets(entries: &BTreeMap<(u32, PeerAddr), Peer>) -> impl Iterator<Item = (Ipv4Net, &Peer)> {
    entries.iter().filter_map(|(&(prefix_len, addr), peer)| {
        let prefix_len = u8::try_from(prefix_len).ok()?;
        Some((Ipv4Net::new(addr.into(), prefix_len).ok()?, peer))
    })
}

/// A map the sync writes: its pinned name and how many entries it holds.
struct Table {
    name: &'static str,
    capacity: u32,
}

impl Table {
    const PEERS: Self = Self {
        name: map_names::PEERS,
        capacity: MAX_PEERS,
    };
    const VTEPS: Self = Self {
        name: map_names::VTEPS,
        capacity: MAX_PEERS,
    };
    const ENDPOINTS: Self = Self {
        name: map_names::ENDPOINTS,
        capacity: MAX_ENDPOINTS,
    };
    const PEERS6: Self = Self {
        name: map_names::PEERS6,
        capacity: MAX_PEERS,
    };
    const ENDPOINTS6: Self = Self {
        name: map_names::ENDPOINTS6,
        capacity: MAX_ENDPOINTS,
    };
}

/// One write to a map.
enum Change<'a, K, V> {
    Remove(&'a K),
    Insert(&'a K, &'a V),
}

/// Makes a map hold `wanted`, given `cached` (what it holds, as last written
/// or read back): removals first, which make room, then the entries that
/// are missing or differ. A failed write is logged by the write log (a
/// full map once) and every write is counted in the report; `cached`
/// follows only the writes that went through, so the next sync tries the
/// others again.
fn sync_entries<K: Ord + Clone, V: PartialEq + Clone, E: std::fmt::Display>(
    table: Table,
    cached: &mut BTreeMap<K, V>,
    wanted: &BTreeMap<K, V>,
    (writes, report): (&mut WriteLog, &mut MapReport),
    entry: impl Fn(&K) -> E,
    mut write: impl FnMut(Change<'_, K, V>) -> Result<(), aya::maps::MapError>,
) {
    let stale: Vec<K> = cached
        .keys()
        .filter(|key| !wanted.contains_key(*key))
        .cloned()
        .collect();
    for key in stale {
        let result = write(Change::Remove(&key));
        let ok = writes.removed(table.name, &entry(&key), result);
        if ok {
            cached.remove(&key);
        }
        report.count(table.name, ok);
    }
    for (key, value) in wanted {
        if cached.get(key) == Some(value) {
            continue;
        }
        let result = write(Change::Insert(key, value));
        let ok = writes.inserted(table.name, table.capacity, &entry(key), result);
        if ok {
            cached.insert(key.clone(), value.clone());
        }
        report.count(table.name, ok);
    }
}

/// A PEERS key as a subnet, for log lines.
struct PeerEntry(u32, PeerAddr);

impl std::fmt::Display for PeerEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.1), self.0)
    }
}

/// A PEERS6 key as a subnet, for log lines.
struct Peer6Entry(u32, PeerAddr6);

impl std::fmt::Display for Peer6Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv6Addr::from(self.1), self.0)
    }
}
