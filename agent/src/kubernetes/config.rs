//! How the agent reaches the API server, resolved as flanneld resolves it
//! (`clientcmd.BuildConfigFromFlags(apiUrl, kubeconfig)`):
//! - neither `--kube-api-url` nor `--kubeconfig-file`: the in-cluster
//!   config (the pod's service-account token and CA,
//!   `KUBERNETES_SERVICE_HOST`/`_PORT`);
//! - a kubeconfig file, with `--kube-api-url` (if given) overriding its
//!   server;
//! - `--kube-api-url` alone: that server, no credentials.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::calls::error_text;

/// Where the kubelet mounts a pod's service-account credentials.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The kube subnet manager's flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeOptions {
    /// `--kube-api-url`.
    pub api_url: Option<String>,
    /// `--kubeconfig-file`.
    pub kubeconfig: Option<PathBuf>,
    /// `--kube-annotation-prefix`.
    pub annotation_prefix: String,
}

/// A client for the API server `options` name.
pub async fn client(options: &KubeOptions) -> Result<kube::Client> {
    let config = resolve(
        options,
        &|name| std::env::var(name).ok(),
        Path::new(SERVICE_ACCOUNT_DIR),
    )
    .await?;
    make_client(config)
}

/// The client for `config`; the CA file is named when it is the trouble.
fn make_client(config: kube::Config) -> Result<kube::Client> {
    let server = config.cluster_url.clone();
    let ca = config
        .root_cert_file
        .as_ref()
        .map(|path| format!(" with the CA {}", path.display()))
        .unwrap_or_default();
    kube::Client::try_from(config).map_err(|error| {
        anyhow!(
            "cannot make a Kubernetes client for {server}{ca}: {}",
            error_text(&error)
        )
    })
}

/// The client config for `options`; `env` and `service_account` are the
/// process's environment and the credentials' directory (parameters so the
/// tests can give their own).
pub(super) async fn resolve(
    options: &KubeOptions,
    env: &dyn Fn(&str) -> Option<String>,
    service_account: &Path,
) -> Result<kube::Config> {
    // flanneld's flags default to "": empty means not given.
    let api_url = options.api_url.as_deref().filter(|url| !url.is_empty());
    let kubeconfig = options
        .kubeconfig
        .as_deref()
        .filter(|path| !path.as_os_str().is_empty());
    match (api_url, kubeconfig) {
        (None, None) => in_cluster(env, service_account),
        (api_url, Some(path)) => {
            let file = Kubeconfig::read_from(path).map_err(|error| {
                anyhow!(
                    "cannot read the kubeconfig file {}: {}",
                    path.display(),
                    error_text(&error)
                )
            })?;
            let mut config =
                kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                    .await
                    .map_err(|error| {
                        anyhow!(
                            "cannot use the kubeconfig file {}: {}",
                            path.display(),
                            error_text(&error)
                        )
                    })?;
            // kube reads a CA file without a certificate as no roots at all,
            // and every connection would then fail as "unknown issuer".
            ensure!(
                config
                    .root_cert
                    .as_ref()
                    .is_none_or(|certs| !certs.is_empty()),
                "the kubeconfig file {}: its certificate authority holds no PEM certificate",
                path.display()
            );
            if let Some(url) = api_url {
                config.cluster_url = server_url(url)?;
            }
            Ok(config)
        }
        (Some(url), None) => Ok(kube::Config::new(server_url(url)?)),
    }
}

/// `--kube-api-url`, which must be a full http(s) URL (client-go would
/// guess a scheme for a bare `host:port`; a guess about TLS is not made
/// here).
fn server_url(url: &str) -> Result<http::Uri> {
    let uri: http::Uri = url
        .parse()
        .map_err(|error| anyhow!("--kube-api-url {url:?} is not a URL: {error}"))?;
    ensure!(
        matches!(uri.scheme_str(), Some("https" | "http")) && uri.host().is_some(),
        "--kube-api-url {url:?} is not an http:// or https:// URL with a host"
    );
    Ok(uri)
}

/// client-go's `InClusterConfig`: the API server from
/// `KUBERNETES_SERVICE_HOST`/`_PORT`, the token and CA from
/// `service_account`. The token file is re-read as kube's client does
/// (bound tokens rotate); the CA is required (client-go only logs its
/// absence, and then no TLS connection can be verified anyway).
fn in_cluster(
    env: &dyn Fn(&str) -> Option<String>,
    service_account: &Path,
) -> Result<kube::Config> {
    let var = |name: &str| env(name).filter(|value| !value.is_empty());
    let (host, port) = match (
        var("KUBERNETES_SERVICE_HOST"),
        var("KUBERNETES_SERVICE_PORT"),
    ) {
        (Some(host), Some(port)) => (host, port),
        (host, _) => bail!(
            "no --kubeconfig-file or --kube-api-url, and no in-cluster config: \
             {} is not set (KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be defined)",
            if host.is_none() {
                "KUBERNETES_SERVICE_HOST"
            } else {
                "KUBERNETES_SERVICE_PORT"
            }
        ),
    };
    let port: u16 = port
        .parse()
        .map_err(|_| anyhow!("KUBERNETES_SERVICE_PORT is {port:?}, not a port number"))?;
    // An IPv6 address goes in brackets, as net.JoinHostPort puts it.
    let authority = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => std::net::SocketAddr::new(ip, port).to_string(),
        Err(_) => format!("{host}:{port}"),
    };
    let url: http::Uri = format!("https://{authority}")
        .parse()
        .map_err(|error| anyhow!("KUBERNETES_SERVICE_HOST {host:?} is not a host name: {error}"))?;

    let token = service_account.join("token");
    let ca = service_account.join("ca.crt");
    let mut contents = Vec::new();
    for (what, path) in [
        ("service-account token", &token),
        ("service-account CA", &ca),
    ] {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read the {what} {}", path.display()))?;
        ensure!(!bytes.is_empty(), "the {what} {} is empty", path.display());
        contents.push(bytes);
    }
    // The CA's certificates are the only roots: without them the client
    // would look for the system's, which a node image need not have.
    let roots: Vec<Vec<u8>> = pem::parse_many(&contents[1])
        .with_context(|| format!("the service-account CA {} is not PEM", ca.display()))?
        .into_iter()
        .filter(|block| block.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    ensure!(
        !roots.is_empty(),
        "the service-account CA {} holds no PEM certificate",
        ca.display()
    );
    let mut config = kube::Config::new(url);
    config.root_cert = Some(roots);
    // Re-read about once a minute by kube's verifier (CA rotation).
    config.root_cert_file = Some(ca);
    config.auth_info.token_file = Some(token.display().to_string());
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own under the system's temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("weft-kube-config-{name}-{}", std::process::id()));
            drop(std::fs::remove_dir_all(&dir));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            drop(std::fs::remove_dir_all(&self.0));
        }
    }

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    async fn error_of(
        options: &KubeOptions,
        env: &dyn Fn(&str) -> Option<String>,
        dir: &Path,
    ) -> String {
        format!("{:#}", resolve(options, env, dir).await.unwrap_err())
    }

    #[tokio::test]
    async fn in_cluster_names_the_missing_variable_and_file() {
        let scratch = Scratch::new("incluster");
        let none = KubeOptions::default();
        assert_eq!(
            error_of(&none, &env_of(&[]), &scratch.0).await,
            "no --kubeconfig-file or --kube-api-url, and no in-cluster config: \
             KUBERNETES_SERVICE_HOST is not set (KUBERNETES_SERVICE_HOST and \
             KUBERNETES_SERVICE_PORT must be defined)"
        );
        let host_only = env_of(&[("KUBERNETES_SERVICE_HOST", "10.96.0.1")]);
        assert!(
            error_of(&none, &host_only, &scratch.0)
                .await
                .contains("KUBERNETES_SERVICE_PORT is not set")
        );
        let bad_port = env_of(&[
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "https"),
        ]);
        assert_eq!(
            error_of(&none, &bad_port, &scratch.0).await,
            "KUBERNETES_SERVICE_PORT is \"https\", not a port number"
        );
        let env = env_of(&[
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
        ]);
        let error = error_of(&none, &env, &scratch.0).await;
        let token = scratch.0.join("token");
        assert!(
            error.starts_with(&format!(
                "cannot read the service-account token {}: ",
                token.display()
            )),
            "{error}"
        );
        std::fs::write(&token, "secret").unwrap();
        let error = error_of(&none, &env, &scratch.0).await;
        assert!(
            error.starts_with(&format!(
                "cannot read the service-account CA {}: ",
                scratch.0.join("ca.crt").display()
            )),
            "{error}"
        );
        std::fs::write(scratch.0.join("ca.crt"), "PEM").unwrap();
        let error = error_of(&none, &env, &scratch.0).await;
        assert_eq!(
            error,
            format!(
                "the service-account CA {} holds no PEM certificate",
                scratch.0.join("ca.crt").display()
            )
        );
        std::fs::write(scratch.0.join("ca.crt"), TEST_CA).unwrap();
        let config = resolve(&none, &env, &scratch.0).await.unwrap();
        make_client(config.clone()).unwrap();
        assert_eq!(config.cluster_url.to_string(), "https://10.96.0.1:443/");
        assert_eq!(config.root_cert_file, Some(scratch.0.join("ca.crt")));
        // The CA alone is trusted, not the system's roots (a node image
        // has none).
        assert_eq!(config.root_cert.as_ref().map(Vec::len), Some(1));
        assert_eq!(
            config.auth_info.token_file,
            Some(token.display().to_string())
        );

        let ipv6 = env_of(&[
            ("KUBERNETES_SERVICE_HOST", "fd00::1"),
            ("KUBERNETES_SERVICE_PORT", "6443"),
        ]);
        let config = resolve(&none, &ipv6, &scratch.0).await.unwrap();
        assert_eq!(config.cluster_url.to_string(), "https://[fd00::1]:6443/");
    }

    #[tokio::test]
    async fn a_kubeconfig_file_is_named_when_it_fails_and_the_url_overrides_its_server() {
        let scratch = Scratch::new("kubeconfig");
        let path = scratch.0.join("flannel.kubeconfig");
        let options = KubeOptions {
            kubeconfig: Some(path.clone()),
            ..KubeOptions::default()
        };
        let error = error_of(&options, &env_of(&[]), &scratch.0).await;
        assert!(
            error.starts_with(&format!(
                "cannot read the kubeconfig file {}: ",
                path.display()
            )),
            "{error}"
        );
        std::fs::write(&path, "clusters: [").unwrap();
        let error = error_of(&options, &env_of(&[]), &scratch.0).await;
        assert!(
            error.starts_with(&format!(
                "cannot read the kubeconfig file {}: ",
                path.display()
            )),
            "{error}"
        );

        // The lab's kubeconfig shape: JSON, a token, a CA file.
        let ca = scratch.0.join("ca.crt");
        std::fs::write(&ca, "not used until a connection").unwrap();
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "lab", "cluster": {
                "server": "https://192.168.50.1:6443",
                "certificate-authority": ca,
            }}],
            "users": [{ "name": "flannel", "user": { "token": "t0ken" } }],
            "contexts": [{ "name": "lab", "context": { "cluster": "lab", "user": "flannel" } }],
            "current-context": "lab",
        });
        std::fs::write(&path, kubeconfig.to_string()).unwrap();
        // The CA file is read and parsed as PEM while the config is made.
        assert_eq!(
            error_of(&options, &env_of(&[]), &scratch.0).await,
            format!(
                "the kubeconfig file {}: its certificate authority holds no PEM certificate",
                path.display()
            )
        );
        std::fs::remove_file(&ca).unwrap();
        let error = error_of(&options, &env_of(&[]), &scratch.0).await;
        assert!(
            error.starts_with(&format!(
                "cannot use the kubeconfig file {}: ",
                path.display()
            )),
            "{error}"
        );
        std::fs::write(&ca, TEST_CA).unwrap();
        let config = resolve(&options, &env_of(&[]), &scratch.0).await.unwrap();
        assert_eq!(config.cluster_url.to_string(), "https://192.168.50.1:6443/");
        let overridden = KubeOptions {
            api_url: Some("https://10.0.0.9:443".into()),
            ..options
        };
        let config = resolve(&overridden, &env_of(&[]), &scratch.0)
            .await
            .unwrap();
        assert_eq!(config.cluster_url.to_string(), "https://10.0.0.9:443/");
        assert!(config.root_cert.is_some(), "the kubeconfig's CA is kept");
    }

    #[tokio::test]
    async fn the_api_url_alone_must_be_a_url() {
        let scratch = Scratch::new("url");
        let url = |url: &str| KubeOptions {
            api_url: Some(url.to_owned()),
            ..KubeOptions::default()
        };
        let config = resolve(&url("http://127.0.0.1:8080"), &env_of(&[]), &scratch.0)
            .await
            .unwrap();
        assert_eq!(config.cluster_url.to_string(), "http://127.0.0.1:8080/");
        assert_eq!(
            error_of(&url("127.0.0.1:8080"), &env_of(&[]), &scratch.0).await,
            "--kube-api-url \"127.0.0.1:8080\" is not an http:// or https:// URL with a host"
        );
        assert!(
            error_of(&url("https://a b"), &env_of(&[]), &scratch.0)
                .await
                .starts_with("--kube-api-url \"https://a b\" is not a URL: ")
        );
        // An empty flag is no flag (flanneld's defaults are "").
        let empty = KubeOptions {
            api_url: Some(String::new()),
            kubeconfig: Some(PathBuf::new()),
            ..KubeOptions::default()
        };
        assert!(
            error_of(&empty, &env_of(&[]), &scratch.0)
                .await
                .starts_with("no --kubeconfig-file or --kube-api-url")
        );
    }

    /// A self-signed CA certificate (`openssl req -x509`, P-256); any valid
    /// PEM certificate will do.
    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBgjCCASmgAwIBAgIUTnaJghONR1MdhVqidY3ioTAdxgYwCgYIKoZIzj0EAwIw
FzEVMBMGA1UEAwwMd2VmdC10ZXN0LWNhMB4XDTI2MTIwNDE5NTAzMloXDTM2MTIw
MTE5NTAzMlowFzEVMBMGA1UEAwwMd2VmdC10ZXN0LWNhMFkwEwYHKoZIzj0CAQYI
KoZIzj0DAQcDQgAEROSq8uk81zij+QUaBB5hZF7V+7MbvRH6IldL0YCqiLr/Q9HH
PqmojnuxCQYwm/mMvuuXijLwixMToGJPwGbL3aNTMFEwHQYDVR0OBBYEFJe12RwF
ftWuXdp7BG8hdeEI7wkxMB8GA1UdIwQYMBaAFJe12RwFftWuXdp7BG8hdeEI7wkx
MA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDRwAwRAIgcFvPgsv6l5dxQ5BS
PAeImcAmSiebXo+jU4RFCkjsrEACICytqt8VmQSdMtJm7f4WUGd3BHhgHTgyHywy
/m6a1086
-----END CERTIFICATE-----
";
}
