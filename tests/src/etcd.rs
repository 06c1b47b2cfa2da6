//! The real etcd server (Debian's etcd-server), run inside the underlay
//! namespace with its data in the lab's run directory.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{netns, process};

pub const CLIENT_PORT: u16 = 2379;

/// Starts etcd in `ns`, listening for clients on `ip:2379`, and waits until
/// it reports healthy.
pub fn start(ns: &str, ip: &str, run_dir: &Path) -> Result<u32> {
    let client_url = format!("http://{ip}:{CLIENT_PORT}");
    let mut command = netns::command(ns, "etcd")?;
    command.args([
        "--name",
        ns,
        "--data-dir",
        &run_dir.join("etcd.data").display().to_string(),
        "--listen-client-urls",
        &client_url,
        "--advertise-client-urls",
        &client_url,
        // Peers never join: keep the peer port on loopback inside the namespace.
        "--listen-peer-urls",
        "http://127.0.0.1:2380",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:2380",
        "--initial-cluster",
        &format!("{ns}=http://127.0.0.1:2380"),
    ]);
    let log = run_dir.join("etcd.log");
    let pid_file = run_dir.join("etcd.pid");
    let pid = process::spawn_daemon(command, &log, &pid_file)?;
    let address: SocketAddr = format!("{ip}:{CLIENT_PORT}").parse()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if netns::in_netns(ns, || healthy(address)).unwrap_or(false) {
            return Ok(pid);
        }
        if process::running_pid(&pid_file).is_none() {
            bail!(
                "etcd exited during start-up:\n{}",
                process::log_tail(&log, 20)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "etcd did not become healthy within 30 s:\n{}",
                process::log_tail(&log, 20)
            );
        }
        sleep(Duration::from_millis(100));
    }
}

/// GET /health on the client URL; etcd answers `{"health":"true"}`.
fn healthy(address: SocketAddr) -> Result<bool> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET /health HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response.contains("\"health\":\"true\""))
}

/// A short-lived etcd client that works from the host: each call runs on a
/// thread inside the underlay namespace (etcd is reachable only there).
#[derive(Clone, Debug)]
pub struct LabEtcd {
    pub ns: String,
    pub endpoint: String,
}

impl LabEtcd {
    fn call<T: Send>(
        &self,
        work: impl AsyncFnOnce(&mut etcd_client::Client) -> Result<T, etcd_client::Error> + Send,
    ) -> Result<T> {
        netns::in_netns(&self.ns, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let options = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(3))
                    .with_timeout(Duration::from_secs(5));
                let mut client =
                    etcd_client::Client::connect([&self.endpoint], Some(options)).await?;
                Ok(work(&mut client).await?)
            })
        })
    }

    pub fn put(&self, key: &str, value: &str) -> Result<()> {
        self.call(async |client| client.put(key, value, None).await.map(drop))
    }

    /// Every key and value under `prefix`, in key order.
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        self.call(async |client| {
            let response = client
                .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
                .await?;
            Ok(response
                .kvs()
                .iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        String::from_utf8_lossy(kv.value()).into_owned(),
                    )
                })
                .collect())
        })
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        self.call(async |client| client.delete(key, None).await.map(drop))
    }

    /// The current revision.
    pub fn revision(&self) -> Result<i64> {
        self.call(async |client| {
            let response = client.get("/", None).await?;
            Ok(response
                .header()
                .map(|header| header.revision())
                .unwrap_or_default())
        })
    }

    /// Compacts history up to `revision` (physically, so watchers behind it
    /// are told so).
    pub fn compact(&self, revision: i64) -> Result<()> {
        self.call(async |client| {
            client
                .compact(
                    revision,
                    Some(etcd_client::CompactionOptions::new().with_physical()),
                )
                .await
                .map(drop)
        })
    }
}

impl LabEtcd {
    /// The etcd lease behind `key`: (lease id, granted TTL, remaining TTL) in seconds.
    pub fn lease_of(&self, key: &str) -> Result<(i64, i64, i64)> {
        self.call(async |client| {
            let response = client.get(key, None).await?;
            let id = response
                .kvs()
                .first()
                .map(|kv| kv.lease())
                .unwrap_or_default();
            let ttl = client.lease_time_to_live(id, None).await?;
            Ok((id, ttl.granted_ttl(), ttl.ttl()))
        })
    }
}
