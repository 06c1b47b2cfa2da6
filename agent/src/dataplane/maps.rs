//! The fast path's forwarding maps (PEERS, ENDPOINTS, VTEPS, CONFIG): typed
//! handles and writers that change only what differs. A cache of each
//! map's contents (read from the pinned map at start, so a restarted agent
//! adopts what it left) keeps a sync to in-memory work plus one syscall per
//! changed entry. Every entry is written on its own: one that fails is
//! logged and counted, the others still go in, and the cache keeps saying
//! what the map really holds, so the next sync tries the failed entry again.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, lpm_trie::Key};
use ipnet::Ipv4Net;
use tracing::{info, warn};
use weft_common::{
    ENDPOINT_XDP_READY, Endpoint, EndpointKey, MAX_ENDPOINTS, MAX_PEERS, NodeConfig, Peer,
    PeerAddr, PeerMode, VtepKey, map_names,
};

use super::pods::LocalPod;

pub struct FastPathMaps {
    peers: LpmTrie<MapData, PeerAddr, Peer>,
    endpoints: HashMap<MapData, EndpointKey, Endpoint>,
    vteps: HashMap<MapData, VtepKey, u8>,
    config: Array<MapData, NodeConfig>,
    cached_peers: BTreeMap<(u32, PeerAddr), Peer>,
    cached_endpoints: BTreeMap<[u8; 4], Endpoint>,
    cached_vteps: BTreeSet<[u8; 4]>,
    cached_config: NodeConfig,
    writes: WriteLog,
}

/// Failed map writes: logged with the entry and counted per map; a full map
/// is said once (until an entry leaves it) instead of once per entry.
#[derive(Debug, Default)]
pub struct WriteLog {
    failures: BTreeMap<&'static str, u64>,
    full: BTreeSet<&'static str>,
}

impl WriteLog {
    /// Whether the insert of `entry` into `map` (which holds `capacity`
    /// entries) went through.
    fn inserted(
        &mut self,
        map: &'static str,
        capacity: u32,
        entry: &dyn std::fmt::Display,
        result: Result<(), MapError>,
    ) -> bool {
        let Err(error) = result else {
            return true;
        };
        *self.failures.entry(map).or_default() += 1;
        if errno(&error).is_some_and(|errno| errno == libc::E2BIG || errno == libc::ENOSPC) {
            if self.full.insert(map) {
                warn!(
                    map,
                    "{map} is full ({capacity} entries): {entry} and what follows stay on the kernel path"
                );
            }
        } else {
            warn!(map, "cannot write {entry} to {map}: {error:#}");
        }
        false
    }

    /// Whether `entry` is no longer in `map` (it was not there: also fine).
    fn removed(
        &mut self,
        map: &'static str,
        entry: &dyn std::fmt::Display,
        result: Result<(), MapError>,
    ) -> bool {
        match result {
            Ok(()) => {
                if self.full.remove(map) {
                    info!(map, "{map} has room again");
                }
                true
            }
            Err(error) if errno(&error) == Some(libc::ENOENT) => true,
            Err(error) => {
                *self.failures.entry(map).or_default() += 1;
                warn!(map, "cannot remove {entry} from {map}: {error:#}");
                false
            }
        }
    }

    /// Failed writes per map since start.
    pub fn failures(&self) -> &BTreeMap<&'static str, u64> {
        &self.failures
    }
}

fn errno(error: &MapError) -> Option<i32> {
    match error {
        MapError::SyscallError(error) => error.io_error.raw_os_error(),
        _ => None,
    }
}

impl FastPathMaps {
    /// Opens the maps pinned in `pin_dir`.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self> {
        let open = |name: &str| -> Result<MapData> {
            let path = pin_dir.join(name);
            MapData::from_pin(&path).with_context(|| {
                format!(
                    "cannot open pinned map {} (is an agent using this --bpf-pin-dir?)",
                    path.display()
                )
            })
        };
        let wrong = |name: &'static str| {
            move |error| anyhow!("{name} in {} is not weft's: {error}", pin_dir.display())
        };
        let peers = LpmTrie::try_from(Map::LpmTrie(open(map_names::PEERS)?))
            .map_err(wrong(map_names::PEERS))?;
        let endpoints = HashMap::try_from(Map::HashMap(open(map_names::ENDPOINTS)?))
            .map_err(wrong(map_names::ENDPOINTS))?;
        let vteps = HashMap::try_from(Map::HashMap(open(map_names::VTEPS)?))
            .map_err(wrong(map_names::VTEPS))?;
        let config = Array::try_from(Map::Array(open(map_names::CONFIG)?))
            .map_err(wrong(map_names::CONFIG))?;
        let mut maps = Self {
            peers,
            endpoints,
            vteps,
            config,
            cached_peers: BTreeMap::new(),
            cached_endpoints: BTreeMap::new(),
            cached_vteps: BTreeSet::new(),
            cached_config: NodeConfig::default(),
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
        self.cached_endpoints = self
            .endpoints()?
            .into_iter()
            .map(|(key, endpoint)| (key.addr, endpoint))
            .collect();
        self.cached_vteps = self.vteps()?.into_iter().map(|key| key.addr).collect();
        self.cached_config = self.config()?;
        Ok(())
    }

    pub fn peers(&self) -> Result<Vec<(Key<PeerAddr>, Peer)>> {
        self.peers
            .iter()
            .collect::<Result<_, _>>()
            .context("cannot read PEERS")
    }

    pub fn endpoints(&self) -> Result<Vec<(EndpointKey, Endpoint)>> {
        self.endpoints
            .iter()
            .collect::<Result<_, _>>()
            .context("cannot read ENDPOINTS")
    }

    pub fn vteps(&self) -> Result<Vec<VtepKey>> {
        self.vteps
            .keys()
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

    /// Failed map writes so far.
    pub fn write_failures(&self) -> &BTreeMap<&'static str, u64> {
        self.writes.failures()
    }

    /// Makes PEERS and VTEPS hold `desired` (and its VXLAN sources), entry
    /// by entry: what fails is logged and left for the next sync. Returns
    /// whether VTEPS holds every VXLAN source.
    pub fn sync_peers(&mut self, desired: &BTreeMap<Ipv4Net, Peer>) -> bool {
        let wanted: BTreeMap<(u32, PeerAddr), Peer> = desired
            .iter()
            .map(|(subnet, peer)| {
                (
                    (u32::from(subnet.prefix_len()), subnet.network().octets()),
                    *peer,
                )
            })
            .collect();
        let stale: Vec<(u32, PeerAddr)> = self
            .cached_peers
            .keys()
            .filter(|key| !wanted.contains_key(*key))
            .copied()
            .collect();
        // Removals first: they make room for the additions.
        for (prefix_len, addr) in stale {
            let result = self.peers.remove(&Key::new(prefix_len, addr));
            let entry = PeerEntry(prefix_len, addr);
            if self.writes.removed(map_names::PEERS, &entry, result) {
                self.cached_peers.remove(&(prefix_len, addr));
            }
        }
        for (&(prefix_len, addr), peer) in &wanted {
            if self.cached_peers.get(&(prefix_len, addr)) != Some(peer) {
                let result = self.peers.insert(&Key::new(prefix_len, addr), peer, 0);
                let entry = PeerEntry(prefix_len, addr);
                if self
                    .writes
                    .inserted(map_names::PEERS, MAX_PEERS, &entry, result)
                {
                    self.cached_peers.insert((prefix_len, addr), *peer);
                }
            }
        }
        let sources: BTreeSet<[u8; 4]> = desired
            .values()
            .filter(|peer| peer.mode == PeerMode::Vxlan as u8)
            .map(|peer| peer.public_ip)
            .collect();
        let stale: Vec<[u8; 4]> = self.cached_vteps.difference(&sources).copied().collect();
        for addr in stale {
            let result = self.vteps.remove(&VtepKey { addr });
            let entry = Ipv4Addr::from(addr);
            if self.writes.removed(map_names::VTEPS, &entry, result) {
                self.cached_vteps.remove(&addr);
            }
        }
        let missing: Vec<[u8; 4]> = sources.difference(&self.cached_vteps).copied().collect();
        for addr in missing {
            let result = self.vteps.insert(VtepKey { addr }, 1, 0);
            let entry = Ipv4Addr::from(addr);
            if self
                .writes
                .inserted(map_names::VTEPS, MAX_PEERS, &entry, result)
            {
                self.cached_vteps.insert(addr);
            }
        }
        self.cached_vteps.is_superset(&sources)
    }

    /// Makes ENDPOINTS hold `pods`, entry by entry, as `sync_peers` does.
    pub fn sync_endpoints(&mut self, pods: &BTreeMap<Ipv4Addr, LocalPod>) {
        let wanted: BTreeMap<[u8; 4], Endpoint> = pods
            .iter()
            .map(|(ip, pod)| {
                (
                    ip.octets(),
                    Endpoint {
                        ifindex: pod.port,
                        mac: pod.mac.0,
                        flags: if pod.xdp_ready { ENDPOINT_XDP_READY } else { 0 },
                        _pad: 0,
                    },
                )
            })
            .collect();
        let stale: Vec<[u8; 4]> = self
            .cached_endpoints
            .keys()
            .filter(|addr| !wanted.contains_key(*addr))
            .copied()
            .collect();
        for addr in stale {
            let result = self.endpoints.remove(&EndpointKey { addr });
            let entry = Ipv4Addr::from(addr);
            if self.writes.removed(map_names::ENDPOINTS, &entry, result) {
                self.cached_endpoints.remove(&addr);
            }
        }
        for (addr, endpoint) in wanted {
            if self.cached_endpoints.get(&addr) != Some(&endpoint) {
                let result = self.endpoints.insert(EndpointKey { addr }, endpoint, 0);
                let entry = Ipv4Addr::from(addr);
                if self
                    .writes
                    .inserted(map_names::ENDPOINTS, MAX_ENDPOINTS, &entry, result)
                {
                    self.cached_endpoints.insert(addr, endpoint);
                }
            }
        }
    }
}

/// A PEERS key as a subnet, for log lines.
struct PeerEntry(u32, PeerAddr);

impl std::fmt::Display for PeerEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.1), self.0)
    }
}

#[cfg(test)]
mod write_log_tests {
    use aya::{maps::MapError, sys::SyscallError};

    use super::WriteLog;

    fn failed(errno: i32) -> Result<(), MapError> {
        Err(MapError::SyscallError(SyscallError {
            call: "bpf_map_update_elem",
            io_error: std::io::Error::from_raw_os_error(errno),
        }))
    }

    #[test]
    fn a_missing_entry_is_already_removed_and_other_failures_are_counted() {
        let mut log = WriteLog::default();
        assert!(log.removed("PEERS", &"10.244.2.0/24", Ok(())));
        assert!(log.removed("PEERS", &"10.244.2.0/24", failed(libc::ENOENT)));
        assert!(log.failures().is_empty());
        assert!(!log.removed("PEERS", &"10.244.2.0/24", failed(libc::EPERM)));
        assert!(!log.inserted("VTEPS", 16_384, &"192.168.77.2", failed(libc::EINVAL)));
        assert!(log.inserted("VTEPS", 16_384, &"192.168.77.3", Ok(())));
        assert_eq!(log.failures()["PEERS"], 1);
        assert_eq!(log.failures()["VTEPS"], 1);
    }

    #[test]
    fn a_full_map_is_noted_once_until_an_entry_leaves() {
        let mut log = WriteLog::default();
        for errno in [libc::ENOSPC, libc::E2BIG, libc::ENOSPC] {
            assert!(!log.inserted("PEERS", 16_384, &"10.1.0.0/24", failed(errno)));
        }
        assert!(log.full.contains("PEERS"));
        assert_eq!(log.failures()["PEERS"], 3);
        assert!(log.removed("PEERS", &"10.1.0.0/24", Ok(())));
        assert!(
            !log.full.contains("PEERS"),
            "room again: the next full is news"
        );
    }
}
