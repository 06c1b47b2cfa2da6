//! The TCP stack's own reordering and duplicate counters at both ends of the
//! throughput run: `nstat` in the client's and the server's network
//! namespace before and after (the counters are per namespace, and nothing
//! but the bench's traffic runs in a pod's, or in an `underlay` node's).
//!
//! Which counter proves what (Linux `net/ipv4/tcp_input.c`):
//! - sender `TcpExtTCPSACKReorder`: a SACK showed a segment the sender had
//!   taken for lost arriving after later ones: reordering, seen by SACK.
//! - sender `TcpExtTCPTSReorder`: the same, seen by timestamps (an undo of
//!   a fast retransmit whose original arrived).
//! - sender `TcpExtTCPDSACKRecv`: the receiver reported a duplicate
//!   (DSACK): a retransmission that was not needed, the trace reordering
//!   leaves once it fooled fast retransmit.
//! - sender `TcpExtTCPDSACKRecvSegs`: the segments those DSACKs covered.
//!   One DSACK can cover a whole GRO packet (up to 45 segments), so this,
//!   not the DSACK count, is what to hold against the retransmissions:
//!   retransmitted segments a DSACK covered were not lost.
//! - receiver `TcpExtTCPDSACKOldSent`: the receiver got data it already had
//!   and said so: the other side of `TCPDSACKRecv`.
//! - receiver `TcpExtTCPOFOQueue`: segments that arrived ahead of a hole and
//!   waited in the out-of-order queue: reordering or loss on the way in.
//!
//! `TcpExtTCPRenoReorder` (reordering without SACK) is read but not
//! reported: every end in the lab negotiates SACK, so it stays zero.

use anyhow::{Context as _, Result};
use serde::Serialize;
use weft_tests::netns;

/// The counters of one namespace at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TcpEvents {
    sack_reorder: u64,
    ts_reorder: u64,
    reno_reorder: u64,
    dsack_recv: u64,
    dsack_recv_segs: u64,
    dsack_old_sent: u64,
    ofo_queue: u64,
}

impl TcpEvents {
    /// `nstat -asz`: absolute values, zeros included, nstat's history file
    /// left alone (another reader's deltas stay theirs).
    pub(crate) fn read(ns: &str) -> Result<Self> {
        let out = netns::run(ns, &["nstat", "-asz", "--json"])?;
        Self::parse(&out).with_context(|| format!("nstat in {ns}"))
    }

    fn parse(json: &str) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(json).context("nstat printed no JSON")?;
        let kernel = &value["kernel"];
        let counter = |name: &str| {
            kernel[name]
                .as_u64()
                .with_context(|| format!("nstat printed no {name}"))
        };
        Ok(Self {
            sack_reorder: counter("TcpExtTCPSACKReorder")?,
            ts_reorder: counter("TcpExtTCPTSReorder")?,
            reno_reorder: counter("TcpExtTCPRenoReorder")?,
            dsack_recv: counter("TcpExtTCPDSACKRecv")?,
            dsack_recv_segs: counter("TcpExtTCPDSACKRecvSegs")?,
            dsack_old_sent: counter("TcpExtTCPDSACKOldSent")?,
            ofo_queue: counter("TcpExtTCPOFOQueue")?,
        })
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            sack_reorder: self.sack_reorder.saturating_sub(before.sack_reorder),
            ts_reorder: self.ts_reorder.saturating_sub(before.ts_reorder),
            reno_reorder: self.reno_reorder.saturating_sub(before.reno_reorder),
            dsack_recv: self.dsack_recv.saturating_sub(before.dsack_recv),
            dsack_recv_segs: self.dsack_recv_segs.saturating_sub(before.dsack_recv_segs),
            dsack_old_sent: self.dsack_old_sent.saturating_sub(before.dsack_old_sent),
            ofo_queue: self.ofo_queue.saturating_sub(before.ofo_queue),
        }
    }
}

/// Reordering and duplicates during one TCP run: what the sender (the
/// client, iperf3's data flows from it) and the receiver counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TcpReordering {
    pub sender_sack_reorder: u64,
    pub sender_ts_reorder: u64,
    pub sender_dsack_recv: u64,
    pub receiver_dsack_old_sent: u64,
    pub receiver_ofo_queue: u64,
    /// Segments the sender's received DSACKs covered: retransmissions
    /// that were not needed.
    pub sender_dsack_segments: u64,
}

impl TcpReordering {
    /// From (before, after) readings of the sender's and the receiver's
    /// namespace.
    pub(crate) fn between(
        sender: (&TcpEvents, &TcpEvents),
        receiver: (&TcpEvents, &TcpEvents),
    ) -> Self {
        let sent = sender.1.since(sender.0);
        let received = receiver.1.since(receiver.0);
        Self {
            sender_sack_reorder: sent.sack_reorder,
            sender_ts_reorder: sent.ts_reorder,
            sender_dsack_recv: sent.dsack_recv,
            receiver_dsack_old_sent: received.dsack_old_sent,
            receiver_ofo_queue: received.ofo_queue,
            sender_dsack_segments: sent.dsack_recv_segs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nstat(sack: u64, dsack_recv: u64, old_sent: u64, ofo: u64) -> String {
        let segs = dsack_recv * 10;
        format!(
            r#"{{"kernel":{{"TcpExtTCPSACKReorder":{sack},"TcpExtTCPTSReorder":1,
            "TcpExtTCPRenoReorder":0,"TcpExtTCPDSACKRecv":{dsack_recv},
            "TcpExtTCPDSACKRecvSegs":{segs},
            "TcpExtTCPDSACKOldSent":{old_sent},"TcpExtTCPOFOQueue":{ofo},"TcpInSegs":9}}}}"#
        )
    }

    #[test]
    fn each_end_reports_its_own_counters_over_the_run() {
        let read = |json: String| TcpEvents::parse(&json).unwrap();
        let sender = (read(nstat(10, 5, 0, 0)), read(nstat(14, 7, 1, 3)));
        let receiver = (read(nstat(0, 0, 2, 100)), read(nstat(0, 0, 9, 160)));
        let run = TcpReordering::between((&sender.0, &sender.1), (&receiver.0, &receiver.1));
        assert_eq!(
            run,
            TcpReordering {
                sender_sack_reorder: 4,
                sender_ts_reorder: 0,
                sender_dsack_recv: 2,
                receiver_dsack_old_sent: 7,
                receiver_ofo_queue: 60,
                sender_dsack_segments: 20,
            }
        );
    }

    #[test]
    fn a_missing_counter_is_an_error_naming_it() {
        let error = TcpEvents::parse(r#"{"kernel":{"TcpExtTCPSACKReorder":1}}"#).unwrap_err();
        assert!(
            format!("{error:#}").contains("TcpExtTCPTSReorder"),
            "{error:#}"
        );
    }

    #[test]
    fn nstat_prints_every_counter_the_bench_reads() {
        // The host namespace here: nstat's JSON must carry every counter.
        let out = netns::run_host(&["nstat", "-asz", "--json"]).unwrap();
        TcpEvents::parse(&out).unwrap();
    }
}
