//! The image's base layer: the Debian packages weft runs with, unpacked by
//! mmdebstrap from Debian's archive (no shell, no package manager, no
//! compilers), as one reproducible tarball, cached by everything it is built
//! from.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};

use super::oci::Blob;
use crate::build::workspace_root;

/// Debian 12. Moving to a newer suite is a change to review (glibc, nft's
/// syntax), so it is named here, not taken from the build machine.
pub const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
const SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";

/// What weft runs with, and why each is there; their dependencies come
/// along (apt resolves them).
pub const PACKAGES: &[(&str, &str)] = &[
    (
        "libgcc-s1",
        "weft's one shared library besides the C library",
    ),
    ("nftables", "the agent drives its tables with `nft -f -`"),
    ("iproute2", "`weft status` asks `ip -j link` about XDP"),
    (
        "iptables",
        "`iptables-nft-save`, which reads the rules that use xtables mark extensions (the agent keeps its accept bit its own)",
    ),
    (
        "coreutils",
        "`cp`, which the DaemonSet's install-cni step runs",
    ),
];

/// Paths dpkg leaves out while unpacking (its own --path-exclude, as
/// Debian's slim images do): documentation but the copyright files,
/// translations, iconv's converters (nothing here converts charsets),
/// headers and completions.
const EXCLUDED: &[&str] = &[
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/bash-completion/*",
    "path-exclude=/usr/share/pixmaps/*",
    "path-exclude=/usr/include/*",
    "path-exclude=/usr/lib/x86_64-linux-gnu/gconv/*",
];

/// The extract hook: the package inventory, the accounts, the clean-up.
const HOOK: &str = "packaging/image/base-hook.sh";

/// The base layer and what it was built from.
pub struct Base {
    pub layer: Blob,
    /// The newest of the archive's Release dates: what the base reflects,
    /// and its SOURCE_DATE_EPOCH.
    pub archive_date: String,
    /// `package version` per line, from the layer's status.d.
    pub packages: String,
}

/// The cached base for the archive's current state, built when there is
/// none. Where Debian's archive cannot be reached, the cached base built
/// from the same inputs serves, said loudly, with the archive state it had.
pub fn ensure(arch: &str) -> Result<Base> {
    let inputs = inputs_key(arch)?;
    let cache = super::cache_root()?.join("base");
    let dates = match archive_dates() {
        Ok(dates) => dates,
        Err(error) => {
            let Some(base) = newest_cached(&cache, &inputs) else {
                return Err(error.context("no cached base built from the same inputs either"));
            };
            println!(
                "image: warning: {error:#}; using the cached base of Debian's archive of {}",
                base.archive_date
            );
            return Ok(base);
        }
    };
    let mut newest = (0, String::new());
    for (_, date) in &dates {
        let epoch = epoch_of(date)?;
        if epoch > newest.0 {
            newest = (epoch, date.clone());
        }
    }
    let (epoch, newest) = newest;
    let mut key = Sha256::new();
    key.update(&inputs);
    for (url, date) in &dates {
        key.update(url);
        key.update(date);
    }
    let key = format!("{:x}", key.finalize());
    let dir = cache.join(&key[..16]);
    if dir.exists() {
        match cached(&dir) {
            Ok(base) => {
                println!("image: base layer cached ({})", dir.display());
                return Ok(base);
            }
            Err(error) => println!("image: cached base unusable, rebuilding it: {error:#}"),
        }
    }

    println!("image: building the base from Debian {SUITE} (archive of {newest})");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tarball = dir.join("base.tar");
    mmdebstrap(arch, epoch, &tarball)?;
    let packages = inventory(&tarball)?;
    let layer = Blob::gzip_tarball(&tarball, &dir.join(LAYER))?;
    fs::remove_file(&tarball)?;
    fs::write(dir.join(PACKAGES_FILE), &packages)?;
    fs::write(dir.join(ARCHIVE_DATE), &newest)?;
    fs::write(dir.join(INPUTS), &inputs)?;
    // Written last: a base without it is an interrupted build, rebuilt.
    fs::write(dir.join(DIFF_ID), &layer.diff_id)?;
    // Older bases (an archive that has moved on, changed inputs) are not
    // built from what is current any more.
    for entry in fs::read_dir(&cache)?.flatten() {
        if entry.path() != dir {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    Ok(Base {
        layer,
        archive_date: newest,
        packages,
    })
}

/// A cached base's files.
const LAYER: &str = "layer.tar.gz";
const DIFF_ID: &str = "diff_id";
const PACKAGES_FILE: &str = "packages";
const ARCHIVE_DATE: &str = "archive_date";
const INPUTS: &str = "inputs";

/// The base cached in `dir`, its layer checked against its diff_id.
fn cached(dir: &Path) -> Result<Base> {
    let read = |name: &str| {
        fs::read_to_string(dir.join(name))
            .with_context(|| format!("cannot read {}", dir.join(name).display()))
    };
    let diff_id = read(DIFF_ID)?;
    Ok(Base {
        layer: Blob::gzip_file(&dir.join(LAYER), diff_id.trim())?,
        archive_date: read(ARCHIVE_DATE)?,
        packages: read(PACKAGES_FILE)?,
    })
}

/// The cached base built from `inputs`, if there is a usable one.
fn newest_cached(cache: &Path, inputs: &str) -> Option<Base> {
    fs::read_dir(cache)
        .ok()?
        .flatten()
        .filter(|entry| fs::read_to_string(entry.path().join(INPUTS)).is_ok_and(|i| i == inputs))
        .find_map(|entry| cached(&entry.path()).ok())
}

/// How `ensure` builds the base, for the image's history.
pub fn recipe() -> String {
    let packages: Vec<&str> = PACKAGES.iter().map(|(name, _)| *name).collect();
    format!(
        "mmdebstrap --variant=extract --include={} {SUITE} ({SUITE}, {SUITE}-updates, {SUITE}-security; dpkg excludes docs, man pages, locales, gconv; {HOOK})",
        packages.join(",")
    )
}

fn mmdebstrap(arch: &str, epoch: u64, tarball: &Path) -> Result<()> {
    let hook = workspace_root().join(HOOK);
    let packages: Vec<&str> = PACKAGES.iter().map(|(name, _)| *name).collect();
    let mut command = Command::new("mmdebstrap");
    command
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .args([
            "--quiet",
            "--mode=root",
            "--variant=extract",
            "--format=tar",
        ])
        .arg(format!("--architectures={arch}"))
        .arg(format!("--include={}", packages.join(",")))
        .args(EXCLUDED.iter().map(|rule| format!("--dpkgopt={rule}")))
        .arg(format!("--extract-hook={} \"$1\"", hook.display()))
        // Device nodes come from the container runtime; the hook removes
        // apt's state itself (so the inventory can read the .debs first).
        .args([
            "--skip=output/dev",
            "--skip=output/mknod",
            "--skip=cleanup/apt",
            "--skip=cleanup/mmdebstrap",
        ])
        .arg(SUITE)
        .arg(tarball)
        .args(sources());
    let status = command
        .status()
        .context("cannot run mmdebstrap (apt-get install mmdebstrap)")?;
    if !status.success() {
        bail!("mmdebstrap failed ({status}) building the base for {SUITE}");
    }
    Ok(())
}

fn sources() -> Vec<String> {
    vec![
        format!("deb {MIRROR} {SUITE} main"),
        format!("deb {MIRROR} {SUITE}-updates main"),
        format!("deb {SECURITY_MIRROR} {SUITE}-security main"),
    ]
}

/// The suites' Release files, as (URL, Date). The archive changes at point
/// releases and with every security or stable update; a new date means a
/// new base.
fn archive_dates() -> Result<Vec<(String, String)>> {
    let suites = [
        (MIRROR, SUITE.to_owned()),
        (MIRROR, format!("{SUITE}-updates")),
        (SECURITY_MIRROR, format!("{SUITE}-security")),
    ];
    let scratch = std::env::temp_dir().join(format!("weft-image-release-{}", std::process::id()));
    fs::create_dir_all(&scratch)?;
    let dates = suites
        .iter()
        .map(|(mirror, suite)| {
            let url = format!("{mirror}/dists/{suite}/InRelease");
            let file = scratch.join(suite);
            // apt's own downloader: present wherever apt is; as root, so
            // the scratch file needs no access for _apt.
            let out = Command::new("/usr/lib/apt/apt-helper")
                .args(["-o", "APT::Sandbox::User=root", "download-file", &url])
                .arg(&file)
                .stdout(Stdio::null())
                .output()
                .context("cannot run apt-helper")?;
            if !out.status.success() {
                bail!(
                    "cannot fetch {url}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let text = fs::read_to_string(&file)?;
            let date = text
                .lines()
                .find_map(|line| line.strip_prefix("Date: "))
                .with_context(|| format!("{url} has no Date field"))?;
            Ok((url, date.to_owned()))
        })
        .collect();
    let _ = fs::remove_dir_all(&scratch);
    dates
}

/// Everything the base is built from but the archive's state: a change to
/// any of them is a new base.
fn inputs_key(arch: &str) -> Result<String> {
    let hook = workspace_root().join(HOOK);
    let mut hasher = Sha256::new();
    let mmdebstrap = Command::new("mmdebstrap")
        .arg("--version")
        .output()
        .context("cannot run mmdebstrap (apt-get install mmdebstrap)")?;
    hasher.update(&mmdebstrap.stdout);
    hasher.update(arch);
    for source in sources() {
        hasher.update(source);
    }
    for (name, _) in PACKAGES {
        hasher.update(name);
    }
    for rule in EXCLUDED {
        hasher.update(rule);
    }
    hasher.update(fs::read(&hook).with_context(|| format!("cannot read {}", hook.display()))?);
    Ok(format!("{:x}", hasher.finalize()))
}

/// `package version` per line, from the status.d stanzas the hook wrote.
fn inventory(tarball: &Path) -> Result<String> {
    let mut archive = tar::Archive::new(
        fs::File::open(tarball).with_context(|| format!("cannot open {}", tarball.display()))?,
    );
    let mut lines = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if !path.starts_with("./var/lib/dpkg/status.d") || !entry.header().entry_type().is_file() {
            continue;
        }
        let mut stanza = String::new();
        std::io::Read::read_to_string(&mut entry, &mut stanza)?;
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
                .map(str::to_owned)
        };
        match (field("Package"), field("Version")) {
            (Some(package), Some(version)) => lines.push(format!("{package} {version}")),
            _ => bail!("{}: no Package or Version", path.display()),
        }
    }
    if lines.is_empty() {
        bail!("the base has no var/lib/dpkg/status.d: did {HOOK} run?");
    }
    lines.sort();
    Ok(lines.join("\n") + "\n")
}

/// Seconds since the epoch of a Release file's date (RFC 2822, in UTC).
pub fn epoch_of(date: &str) -> Result<u64> {
    let out = Command::new("date")
        .args(["-u", "-d", date, "+%s"])
        .output()
        .context("cannot run date")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("`date -d {date:?}` printed {text:?}"))
}
