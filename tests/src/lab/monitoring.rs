//! The lab's real Prometheus: in the underlay namespace, scraping every weft
//! agent's `/metrics` (flanneld serves none).

use anyhow::{Result, ensure};

use super::{HEALTHZ_PORT, Lab, UNDERLAY_GATEWAY};
use crate::prometheus::{self, Sample, Target};

impl Lab {
    pub(super) fn start_prometheus(&mut self) -> Result<()> {
        let targets: Vec<Target> = self
            .state
            .nodes
            .iter()
            .filter(|node| node.dataplane.is_weft())
            .map(|node| Target {
                node: node.ns.clone(),
                address: format!("{}:{HEALTHZ_PORT}", node.ip),
            })
            .collect();
        ensure!(
            !targets.is_empty(),
            "no weft agent for Prometheus to scrape"
        );
        prometheus::start(
            &self.state.underlay_ns,
            UNDERLAY_GATEWAY,
            &self.state.run_dir,
            &targets,
        )?;
        self.state.prometheus = Some(prometheus_url());
        self.save()
    }

    /// Asks the lab's Prometheus `promql` (an instant query).
    pub fn query_prometheus(&self, promql: &str) -> Result<Vec<Sample>> {
        ensure!(
            self.state.prometheus.is_some(),
            "lab {} runs no Prometheus (bring it up with --prometheus)",
            self.state.name
        );
        prometheus::query(&self.state.underlay_ns, UNDERLAY_GATEWAY, promql)
    }
}

/// Where the lab's Prometheus listens, inside the underlay namespace.
pub fn prometheus_url() -> String {
    format!("http://{UNDERLAY_GATEWAY}:{}", prometheus::PORT)
}
