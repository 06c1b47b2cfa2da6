//! How fast the agent makes fast-pathed TCP flows liberal in conntrack:
//! the whole per-flow job of its `ct-liberal` thread (one ctnetlink update
//! of a real conntrack entry and its ack, then the FLOWS confirmation), on
//! real established connections in a namespace of the bench's own.

use std::{
    net::{TcpListener, TcpStream},
    time::Instant,
};

use anyhow::{Context as _, Result};
use serde::Serialize;
use weft_agent::ct_liberal::{Flows, Marker, Outcome, handle};
use weft_common::FlowKey;
use weft_tests::{
    netns,
    programs::{GENERATION, Programs},
};

const NS: &str = "t-ct-bench";
const IPPROTO_TCP: u8 = 6;

#[derive(Clone, Debug, Default, Serialize)]
pub struct CtMarking {
    /// Established connections (conntrack entries) marked each round.
    pub connections: usize,
    /// Rounds over all of them (each flow set pending again in between).
    pub rounds: usize,
    /// Flows marked and confirmed per second, one at a time, as the agent
    /// does.
    pub flows_per_s: f64,
    pub us_per_flow: f64,
}

/// Removes the namespace when the measurement ends, also on failure.
struct Namespace;

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = netns::delete(NS);
    }
}

/// Marks `connections` real conntrack entries `rounds` times.
pub fn ct_marking(connections: usize, rounds: usize) -> Result<CtMarking> {
    let _ = netns::delete(NS);
    netns::add(NS)?;
    let _namespace = Namespace;
    netns::run(NS, &["ip", "link", "set", "lo", "up"])?;
    // conntrack tracks a namespace's traffic once a rule there uses it.
    netns::run_with_input(
        NS,
        &["nft", "-f", "-"],
        "table inet t_ct_bench {\n chain input {\n type filter hook input priority 0;\n ct state established counter\n }\n}\n",
    )?;
    let (keys, _sockets) = netns::in_netns(NS, || connect(connections))?;
    let mut marker = netns::in_netns(NS, Marker::new)?;
    let mut programs = Programs::load(true);
    let mut flows = Flows::from_map(programs.flows_handle());
    let mut elapsed = 0.0;
    for _ in 0..rounds {
        for key in &keys {
            programs.set_pending_verdict(*key, GENERATION);
        }
        let started = Instant::now();
        for key in &keys {
            let outcome = handle(&mut marker, &mut flows, key);
            anyhow::ensure!(
                outcome == Outcome::Confirmed,
                "flow {key:?}: {}",
                outcome.name()
            );
        }
        elapsed += started.elapsed().as_secs_f64();
    }
    let marked = (connections * rounds) as f64;
    Ok(CtMarking {
        connections,
        rounds,
        flows_per_s: marked / elapsed,
        us_per_flow: elapsed * 1e6 / marked,
    })
}

/// `count` established loopback connections, and the flow key of each
/// one's client-to-server direction.
fn connect(count: usize) -> Result<(Vec<FlowKey>, Vec<TcpStream>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let server = listener.local_addr()?;
    let mut keys = Vec::with_capacity(count);
    let mut sockets = Vec::with_capacity(2 * count);
    for _ in 0..count {
        let client = TcpStream::connect(server).context("cannot connect over loopback")?;
        let (accepted, _) = listener.accept()?;
        keys.push(FlowKey {
            saddr: [127, 0, 0, 1],
            daddr: [127, 0, 0, 1],
            sport: client.local_addr()?.port().to_be_bytes(),
            dport: server.port().to_be_bytes(),
            proto: IPPROTO_TCP,
            ..FlowKey::default()
        });
        sockets.extend([client, accepted]);
    }
    Ok((keys, sockets))
}
