//! Runs nft scripts: one `nft -f -` call is one transaction, all or nothing
//! (the way flannel's knftables and kube-proxy's nftables mode apply theirs).

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Applies `script` atomically; `what` names it in errors.
pub fn apply(script: &str, what: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{what} needs nft (Debian package nftables)"))?;
    child
        .stdin
        .take()
        .context("nft has no stdin")?
        .write_all(script.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "nft rejected the {what}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
