//! The etcd side of the control plane: flanneld's keys, read and written
//! with etcd v3 transactions and leases.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use super::{LeaseAttrs, LeaseSubnets, lease_key, subnets_prefix};
use anyhow::{Context as _, Result, anyhow, bail};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KvClient,
    PutOptions, TlsOptions, Txn, TxnOp, WatchClient, WatchOptions, WatchStream,
};

/// How to reach etcd: flanneld's flags.
#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub keyfile: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub cafile: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// One key under `<prefix>/subnets`, raw: parsing and validation happen in
/// the caller so a bad value is skipped, never fatal.
#[derive(Clone, Debug)]
pub struct RawLease {
    pub key: String,
    pub value: Vec<u8>,
    /// etcd's revision of the key's creation: the older of two overlapping
    /// leases wins.
    pub create_revision: i64,
}

/// Keys per listing request. A page of flanneld-sized values is about
/// 200 KB; pages keep each response far below the decoding limit.
const LISTING_PAGE: i64 = 1000;
/// The largest etcd response the client decodes (etcd-client's default is
/// 4 MiB). etcd accepts values up to 1.5 MiB by default, so a page of
/// hostile values can still be large: a page that does not fit is fetched
/// again in halves.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

#[derive(Clone)]
pub struct Registry {
    client: Client,
    /// The client's KV and watch services with the raised decoding limit.
    kv: KvClient,
    watcher: WatchClient,
    prefix: String,
}

impl EtcdOptions {
    /// Reads and checks the TLS files and credentials, once, before any
    /// connection attempt: a missing or unreadable file is a bad input that
    /// no retry can fix, so it fails the agent with one line naming it.
    pub fn connect_options(&self) -> Result<ConnectOptions> {
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        match (&self.username, &self.password) {
            (Some(user), Some(password)) => connect = connect.with_user(user, password),
            (Some(_), None) => bail!("--etcd-username is set but --etcd-password is not"),
            (None, Some(_)) => bail!("--etcd-password is set but --etcd-username is not"),
            (None, None) => {}
        }
        let identity = match (&self.certfile, &self.keyfile) {
            (Some(cert), Some(key)) => Some(Identity::from_pem(
                read_pem("--etcd-certfile", cert)?,
                read_pem("--etcd-keyfile", key)?,
            )),
            (Some(_), None) => bail!("--etcd-certfile is set but --etcd-keyfile is not"),
            (None, Some(_)) => bail!("--etcd-keyfile is set but --etcd-certfile is not"),
            (None, None) => None,
        };
        let ca = match &self.cafile {
            Some(ca) => Some(Certificate::from_pem(read_pem("--etcd-cafile", ca)?)),
            None => None,
        };
        if identity.is_some() || ca.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = ca {
                tls = tls.ca_certificate(ca);
            }
            if let Some(identity) = identity {
                tls = tls.identity(identity);
            }
            connect = connect.with_tls(tls);
        }
        Ok(connect)
    }
}

/// A PEM file's bytes, or an error naming the flag, the path and what is
/// wrong with it.
fn read_pem(flag: &str, path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("{flag} {}: cannot read it", path.display()))?;
    if !bytes.windows(11).any(|window| window == b"-----BEGIN ") {
        bail!(
            "{flag} {}: not a PEM file (no -----BEGIN line)",
            path.display()
        );
    }
    Ok(bytes)
}

impl Registry {
    /// Connects with options checked by [`EtcdOptions::connect_options`].
    pub async fn connect(options: &EtcdOptions, connect: &ConnectOptions) -> Result<Self> {
        let client = Client::connect(&options.endpoints, Some(connect.clone()))
            .await
            .with_context(|| format!("cannot reach etcd at {}", options.endpoints.join(",")))?;
        let kv = client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let watcher = client
            .watch_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        Ok(Self {
            client,
            kv,
            watcher,
            prefix: options.prefix.trim_end_matches('/').to_owned(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    /// The raw network config, `None` while nobody has written it.
    pub async fn config(&mut self) -> Result<Option<String>> {
        let key = self.config_key();
        let response = self
            .client
            .get(key.as_str(), None)
            .await
            .with_context(|| format!("cannot read {key}"))?;
        Ok(response
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Every lease key and value, with the revision they were read at: one
    /// consistent snapshot, read in pages (all at the first page's revision).
    pub async fn leases(&mut self) -> Result<(Vec<RawLease>, i64)> {
        let prefix = format!("{}/", subnets_prefix(&self.prefix));
        let end = prefix_end(prefix.as_bytes());
        let mut leases = Vec::new();
        let mut from = prefix.clone().into_bytes();
        let mut revision = None;
        let mut page = LISTING_PAGE;
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(page);
            if let Some(revision) = revision {
                options = options.with_revision(revision);
            }
            let response = match self.kv.get(from.clone(), Some(options)).await {
                Ok(response) => response,
                Err(error) if page > 1 && is_too_large(&error) => {
                    page = (page / 2).max(1);
                    continue;
                }
                Err(error) => {
                    return Err(anyhow!(error)).with_context(|| format!("cannot list {prefix}"));
                }
            };
            let read_at = response
                .header()
                .map(|header| header.revision())
                .ok_or_else(|| anyhow!("etcd sent no revision"))?;
            revision.get_or_insert(read_at);
            leases.extend(response.kvs().iter().map(|kv| RawLease {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                value: kv.value().to_vec(),
                create_revision: kv.create_revision(),
            }));
            match response.kvs().last() {
                Some(last) if response.more() => {
                    // The next page starts right after the last key.
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        let revision = revision.expect("at least one page was read");
        Ok((leases, revision))
    }

    /// Creates the lease for `subnets` only if no key holds its IPv4
    /// subnet, whatever IPv6 half that key pairs it with: a transaction
    /// `If(Version(range) == 0) Then(Put)` over every key `<v4>-<len>` or
    /// `<v4>-<len>&...` (they sort from `<v4>-<len>` to before
    /// `<v4>-<len>'`, `'` being the character after `&`). Comparing our
    /// own key alone would let two nodes take one IPv4 subnet with
    /// different IPv6 halves. Returns the revision of our creation, or
    /// `None` when another node won.
    pub async fn create(
        &mut self,
        subnets: &LeaseSubnets,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Option<i64>> {
        let key = lease_key(&self.prefix, subnets);
        let v4_key = lease_key(&self.prefix, &LeaseSubnets::v4(subnets.v4));
        let v4_keys_end = format!("{v4_key}'");
        let lease = self.grant(ttl).await?;
        let txn = Txn::new()
            .when([Compare::version(v4_key.as_str(), CompareOp::Equal, 0)
                .with_range(v4_keys_end.as_str())])
            .and_then([TxnOp::put(
                key.as_str(),
                attrs.to_json(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let response = self
            .client
            .txn(txn)
            .await
            .with_context(|| format!("cannot create {key}"))?;
        if !response.succeeded() {
            // Nothing is attached to the grant; let it go rather than wait 24 h.
            let _ = self.client.lease_revoke(lease).await;
            return Ok(None);
        }
        let revision = response
            .header()
            .map(|header| header.revision())
            .ok_or_else(|| anyhow!("etcd answered the creation of {key} without a revision"))?;
        Ok(Some(revision))
    }

    /// Writes our lease again under a fresh TTL (renewal, or taking back our
    /// own lease with updated attributes).
    pub async fn renew(
        &mut self,
        subnets: &LeaseSubnets,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<()> {
        let key = lease_key(&self.prefix, subnets);
        let lease = self.grant(ttl).await?;
        self.client
            .put(
                key.as_str(),
                attrs.to_json(),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .with_context(|| format!("cannot renew {key}"))?;
        Ok(())
    }

    /// Deletes a lease key (our own lease that no longer fits the config).
    pub async fn delete(&mut self, key: &str) -> Result<()> {
        self.client
            .delete(key, None)
            .await
            .with_context(|| format!("cannot delete {key}"))?;
        Ok(())
    }

    async fn grant(&mut self, ttl: Duration) -> Result<i64> {
        let response = self
            .client
            .lease_grant(ttl.as_secs() as i64, None)
            .await
            .context("cannot grant an etcd lease")?;
        Ok(response.id())
    }

    /// Watches every lease key from `revision` on.
    pub async fn watch(&mut self, revision: i64) -> Result<WatchStream> {
        let prefix = format!("{}/", subnets_prefix(&self.prefix));
        self.watcher
            .watch(
                prefix.as_str(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision)
                        .with_prev_key(),
                ),
            )
            .await
            .with_context(|| format!("cannot watch {prefix}"))
    }
}

/// The end of the key range holding every key that starts with `prefix`
/// (etcd's prefix end: the last byte below 0xff, plus one).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Whether etcd's answer was refused for exceeding the decoding limit.
fn is_too_large(error: &etcd_client::Error) -> bool {
    // gRPC codes RESOURCE_EXHAUSTED (8) and OUT_OF_RANGE (11, what tonic
    // answers for "decoded message length too large"); etcd-client does not
    // re-export tonic's `Code`.
    matches!(error, etcd_client::Error::GRpcStatus(status)
        if matches!(i32::from(status.code()), 8 | 11))
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end(b"/p/subnets/"), b"/p/subnets0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }
}
