//! The real etcd server (Debian's etcd-server), run inside the underlay
//! namespace with its data in the lab's run directory.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use anyhow::Result;

use crate::{netns, process};

pub const CLIENT_PORT: u16 = 2379;

/// Starts etcd in `ns`, listening for clients on `ip:2379`, and waits until
/// it reports healthy.
pub fn start(ns: &str, ip: &str, run_dir: &Path) -> Result<u32> {
    let client_url = format!("http://{ip}:{CLIENT_PORT}");
    let address: SocketAddr = format!("{ip}:{CLIENT_PORT}").parse()?;
    start_instance(ns, run_dir, "etcd", &client_url, 2380, &[], address)
}

/// Where [`start_secure`] serves clients: TLS with client certificates here,
/// and plain HTTP on the namespace's loopback for the test's own admin calls.
pub const SECURE_PORT: u16 = 2381;
pub const SECURE_ADMIN: &str = "http://127.0.0.1:2382";

/// Starts a second etcd in `ns` that requires TLS client certificates on
/// `https://ip:2381` (certificates from [`make_certificates`] in `tls_dir`).
pub fn start_secure(ns: &str, ip: &str, run_dir: &Path, tls_dir: &Path) -> Result<u32> {
    let urls = format!("https://{ip}:{SECURE_PORT},{SECURE_ADMIN}");
    let file = |name: &str| tls_dir.join(name).display().to_string();
    let tls = [
        "--cert-file".to_owned(),
        file("server.crt"),
        "--key-file".to_owned(),
        file("server.key"),
        "--trusted-ca-file".to_owned(),
        file("ca.crt"),
        "--client-cert-auth".to_owned(),
    ];
    start_instance(
        ns,
        run_dir,
        "etcd-secure",
        &urls,
        2390,
        &tls,
        "127.0.0.1:2382".parse()?,
    )
}

/// A CA, a server certificate for `ip` and a client certificate, made with
/// openssl in `dir`.
pub fn make_certificates(dir: &Path, ip: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let run = |args: &[&str]| -> Result<()> {
        let output = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=weft-lab-ca",
        "-days",
        "2",
    ])?;
    for (name, ext) in [
        (
            "server",
            format!("subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth"),
        ),
        ("client", "extendedKeyUsage=clientAuth".to_owned()),
    ] {
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN=weft-{name}"),
        ])?;
        std::fs::write(dir.join(format!("{name}.ext")), ext)?;
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ])?;
    }
    Ok(())
}

fn start_instance(
    ns: &str,
    run_dir: &Path,
    name: &str,
    client_urls: &str,
    peer_port: u16,
    extra: &[String],
    health: SocketAddr,
) -> Result<u32> {
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let mut command = netns::command(ns, "etcd")?;
    command
        .args([
            "--name",
            name,
            "--data-dir",
            &run_dir.join(format!("{name}.data")).display().to_string(),
        ])
        .args([
            "--listen-client-urls",
            client_urls,
            "--advertise-client-urls",
            client_urls,
        ])
        // Peers never join: keep the peer port on loopback inside the namespace.
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("{name}={peer_url}")])
        .args(extra);
    let log = run_dir.join(format!("{name}.log"));
    let pid_file = run_dir.join(format!("{name}.pid"));
    let pid = process::spawn_daemon(command, &log, &pid_file)?;
    process::wait_ready("etcd", &pid_file, &log, Duration::from_secs(30), || {
        netns::in_netns(ns, || healthy(health)).unwrap_or(false)
    })?;
    Ok(pid)
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
    /// User and password, once auth is enabled.
    pub credentials: Option<(String, String)>,
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
                let mut options = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(3))
                    .with_timeout(Duration::from_secs(5));
                if let Some((user, password)) = &self.credentials {
                    options = options.with_user(user, password);
                }
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

impl LabEtcd {
    /// Creates user `user` with the root role and turns authentication on.
    pub fn enable_auth(&self, user: &str, password: &str) -> Result<()> {
        self.call(async |client| {
            client.user_add(user, password, None).await?;
            client.user_grant_role(user, "root").await?;
            client.auth_enable().await.map(drop)
        })
    }
}

impl LabEtcd {
    /// Writes every key/value, 100 to a transaction (etcd allows 128).
    pub fn put_many(&self, entries: &[(String, String)]) -> Result<()> {
        self.call(async |client| {
            for batch in entries.chunks(100) {
                let ops: Vec<etcd_client::TxnOp> = batch
                    .iter()
                    .map(|(key, value)| etcd_client::TxnOp::put(key.as_str(), value.as_str(), None))
                    .collect();
                client.txn(etcd_client::Txn::new().and_then(ops)).await?;
            }
            Ok(())
        })
    }
    /// Deletes every key, 100 to a transaction.
    pub fn delete_many(&self, keys: &[String]) -> Result<()> {
        self.call(async |client| {
            for batch in keys.chunks(100) {
                let ops: Vec<etcd_client::TxnOp> = batch
                    .iter()
                    .map(|key| etcd_client::TxnOp::delete(key.as_str(), None))
                    .collect();
                client.txn(etcd_client::Txn::new().and_then(ops)).await?;
            }
            Ok(())
        })
    }
}
