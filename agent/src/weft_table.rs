//! Table `inet weft`: everything weft asks of the node's netfilter, in one
//! table of its own. Two parts share it, each owning its chains:
//! `overlay_guard.rs` (who may send to the VXLAN port; both dataplanes) and
//! `verdicts.rs` (the accept mark that tells the fast path what netfilter
//! passed; eBPF only). Each part adds and rewrites only its own chains, so
//! installing one never disturbs the other.

use anyhow::Result;

pub const TABLE: &str = "weft";

/// Creates the table if it is missing; a no-op otherwise.
pub fn ensure_script() -> String {
    format!("add table inet {TABLE}\n")
}

/// `nft` lines that delete chain `chain` of the table if it exists (nft
/// 1.0.6 has no `destroy`: add it empty first, so the delete always finds
/// it). A base chain is added with its hook as given in `definition`.
pub fn delete_chain_script(chain: &str, definition: &str) -> String {
    format!(
        "add chain inet {TABLE} {chain} {definition}\nflush chain inet {TABLE} {chain}\ndelete chain inet {TABLE} {chain}\n"
    )
}

/// Removes the whole table (`weft cleanup`): the guard, its counters and
/// set, and the accept mark's chain.
pub fn remove() -> Result<()> {
    crate::nft::apply(
        &format!("add table inet {TABLE}\ndelete table inet {TABLE}\n"),
        &format!("inet {TABLE} table"),
    )
}
