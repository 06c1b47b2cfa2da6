//! Interface helpers.

use anyhow::{Result, bail};

/// The index of interface `name` in this network namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    match nix::net::if_::if_nametoindex(name) {
        Ok(index) => Ok(index),
        Err(_) => bail!("interface {name:?} not found in this network namespace"),
    }
}
