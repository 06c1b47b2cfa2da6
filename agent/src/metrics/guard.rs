//! The overlay guard's refusals, read from its nftables counters at scrape
//! time (`overlay_guard::refusals`), so a scrape shows netfilter's own
//! numbers.

use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter},
};

use crate::overlay_guard;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: &'static str,
}

/// Reads the guard's counters once the agent installed it.
#[derive(Debug, Default)]
pub(super) struct GuardCollector {
    pub(super) installed: AtomicBool,
}

impl Collector for GuardCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if !self.installed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let refusals = match overlay_guard::refusals() {
            Ok(refusals) => refusals,
            Err(error) => {
                tracing::warn!("metrics: {error:#}");
                return Ok(());
            }
        };
        encode_refusals(&mut encoder, &refusals)
    }
}

/// The family [`GuardCollector`] serves once the guard is installed, through
/// the same encoder but without samples: its name without an nftables table
/// to read ([`super::family_names`]).
#[derive(Debug)]
pub(super) struct GuardFamilies;

impl Collector for GuardFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_refusals(&mut encoder, &[])
    }
}

fn encode_refusals(
    encoder: &mut DescriptorEncoder,
    refusals: &[(overlay_guard::Refusal, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "weft_overlay_refused_packets",
        "Datagrams to the VXLAN port refused by the overlay guard (table inet weft), by cause: from a local pod, out of the overlay, from an address that holds no lease",
        None,
        MetricType::Counter,
    )?;
    for (refusal, packets) in refusals {
        ConstCounter::new(*packets).encode(family.encode_family(&CauseLabel {
            cause: refusal.name(),
        })?)?;
    }
    Ok(())
}
