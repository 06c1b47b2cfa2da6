//! The OCI image layout (image-spec v1.1), written as one tar: content
//! addressed blobs, the manifest and config that name them, index.json.
//! Every byte is a function of the inputs: entries sorted, owners and modes
//! fixed, times set to the build's SOURCE_DATE_EPOCH, gzip without a name or
//! a time.

use std::{
    fs,
    io::{self, Read as _, Write as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use flate2::{Compression, GzBuilder};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// One content-addressed blob.
pub struct Blob {
    /// `sha256:<hex>` of the bytes as stored.
    pub digest: String,
    pub size: u64,
    /// For a layer: `sha256:<hex>` of the uncompressed tar (the config's
    /// rootfs.diff_ids); its size is `tar_size`.
    pub diff_id: String,
    pub tar_size: u64,
    content: Content,
}

enum Content {
    Bytes(Vec<u8>),
    File(PathBuf),
}

impl Blob {
    /// A JSON document (config, manifest), serialised compactly.
    pub fn json(value: &Value) -> Result<Self> {
        let bytes = serde_json::to_vec(value)?;
        Ok(Self {
            digest: sha256_of(&bytes),
            size: bytes.len() as u64,
            diff_id: String::new(),
            tar_size: 0,
            content: Content::Bytes(bytes),
        })
    }

    /// A layer from a tar held in memory.
    pub fn gzip_tar(tar: &[u8]) -> Result<Self> {
        let mut gz = gzip_writer(Vec::new());
        gz.write_all(tar)?;
        let bytes = gz.finish()?;
        Ok(Self {
            digest: sha256_of(&bytes),
            size: bytes.len() as u64,
            diff_id: sha256_of(tar),
            tar_size: tar.len() as u64,
            content: Content::Bytes(bytes),
        })
    }

    /// A layer from a tar on disk, compressed to `out`.
    pub fn gzip_tarball(tar: &Path, out: &Path) -> Result<Self> {
        let mut input =
            fs::File::open(tar).with_context(|| format!("cannot open {}", tar.display()))?;
        let output =
            fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
        let mut gz = gzip_writer(io::BufWriter::new(output));
        let mut hasher = Sha256::new();
        let mut buffer = vec![0; 1 << 20];
        loop {
            let read = input.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
            gz.write_all(&buffer[..read])?;
        }
        gz.finish()?.flush()?;
        let diff_id = format!("sha256:{:x}", hasher.finalize());
        Self::gzip_file(out, &diff_id)
    }

    /// A compressed layer already on disk (a cached base), checked against
    /// the diff_id recorded when it was written: a damaged file is an
    /// error, not a different image.
    pub fn gzip_file(path: &Path, diff_id: &str) -> Result<Self> {
        let mut file =
            fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut hasher = Sha256::new();
        let size = io::copy(&mut file, &mut hasher)?;
        let file = fs::File::open(path)?;
        let mut tar = Sha256::new();
        let tar_size = io::copy(
            &mut flate2::read::GzDecoder::new(io::BufReader::new(file)),
            &mut tar,
        )
        .with_context(|| format!("{} is not gzip", path.display()))?;
        let unpacked = format!("sha256:{:x}", tar.finalize());
        if unpacked != diff_id {
            bail!(
                "{} unpacks to {unpacked}, not the recorded {diff_id}",
                path.display()
            );
        }
        Ok(Self {
            digest: format!("sha256:{:x}", hasher.finalize()),
            size,
            diff_id: diff_id.to_owned(),
            tar_size,
            content: Content::File(path.to_owned()),
        })
    }

    /// The descriptor other documents point at it with.
    pub fn descriptor(&self, media_type: &str) -> Value {
        serde_json::json!({
            "mediaType": media_type,
            "digest": self.digest,
            "size": self.size,
        })
    }

    fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }
}

/// Writes the image layout as the tar `podman load`, `skopeo copy
/// oci-archive:` and `ctr image import` read: `oci-layout`, `index.json`
/// and `blobs/sha256/<hex>`.
pub fn write_archive(path: &Path, index: &Value, blobs: &[&Blob], mtime: u64) -> Result<()> {
    let file =
        fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut tar = tar::Builder::new(io::BufWriter::new(file));
    let layout = serde_json::to_vec(&serde_json::json!({"imageLayoutVersion": "1.0.0"}))?;
    let index = serde_json::to_vec(index)?;
    directory(&mut tar, "blobs/", mtime)?;
    directory(&mut tar, "blobs/sha256/", mtime)?;
    let mut sorted: Vec<&&Blob> = blobs.iter().collect();
    sorted.sort_by_key(|blob| blob.hex());
    sorted.dedup_by_key(|blob| blob.hex());
    for blob in sorted {
        let name = format!("blobs/sha256/{}", blob.hex());
        match &blob.content {
            Content::Bytes(bytes) => file_entry(&mut tar, &name, 0o644, mtime, bytes)?,
            Content::File(source) => {
                let mut header = header(0o644, mtime, tar::EntryType::Regular, blob.size);
                let reader = fs::File::open(source)
                    .with_context(|| format!("cannot open {}", source.display()))?;
                tar.append_data(&mut header, &name, reader)?;
            }
        }
    }
    file_entry(&mut tar, "index.json", 0o644, mtime, &index)?;
    file_entry(&mut tar, "oci-layout", 0o644, mtime, &layout)?;
    tar.into_inner()?.flush()?;
    Ok(())
}

/// A tar header owned by root, with a fixed time.
pub fn header(mode: u32, mtime: u64, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    header.set_size(size);
    header
}

pub fn file_entry<W: io::Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    mode: u32,
    mtime: u64,
    bytes: &[u8],
) -> Result<()> {
    let mut header = header(mode, mtime, tar::EntryType::Regular, bytes.len() as u64);
    tar.append_data(&mut header, name, bytes)?;
    Ok(())
}

pub fn directory<W: io::Write>(tar: &mut tar::Builder<W>, name: &str, mtime: u64) -> Result<()> {
    let mut header = header(0o755, mtime, tar::EntryType::Directory, 0);
    tar.append_data(&mut header, name, io::empty())?;
    Ok(())
}

/// gzip as `gzip -n` writes it: no file name, no time, so the same tar
/// always compresses to the same bytes. The default level: the best one
/// saves under 1% of the layers for three times the time.
fn gzip_writer<W: io::Write>(inner: W) -> flate2::write::GzEncoder<W> {
    GzBuilder::new()
        .mtime(0)
        .write(inner, Compression::default())
}

fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}
