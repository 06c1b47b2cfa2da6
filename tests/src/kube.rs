//! The lab's Kubernetes control plane: a real kube-apiserver v1.20.2 (built
//! by `cargo xtask` from Debian's source package) in the underlay namespace,
//! backed by the lab's etcd under its own prefix, with TLS and RBAC on.
//!
//! Two credentials, never mixed up:
//! - the lab's own admin token (group `system:masters`, from a token file),
//!   used only by the lab to set the cluster up and to read it back;
//! - the agents' ServiceAccount token (`kube-flannel/flannel`, issued by the
//!   API server's TokenRequest API and signed with its service-account key),
//!   bound to a ClusterRole with exactly kube-flannel.yml's rules, so an
//!   agent that needs more than flanneld does fails against this lab.
//!
//! Nodes are registered the way a kubelet registers itself (labels,
//! the kubelet's annotations, addresses), with `spec.podCIDR` set by the lab
//! (node N owns 10.244.N.0/24), as kube-controller-manager's node IPAM would;
//! in a dual-stack lab `spec.podCIDRs` holds an IPv6 one after it
//! (fd00:10:244:N::/64), for which kube-apiserver runs with
//! `IPv6DualStack=true`.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, ensure};
use serde::{Deserialize, Serialize};

use crate::{netns, process};

/// A directory holding kube-apiserver, kube-controller-manager and kubectl
/// v1.20.2 (`cargo xtask` sets it after building them).
pub const BINARY_ENV: &str = "WEFT_KUBERNETES_BIN";
/// The API server's HTTPS port in the underlay namespace.
pub const SECURE_PORT: u16 = 6443;
/// The API server's keys in the lab's etcd, apart from flannel's.
pub const ETCD_PREFIX: &str = "/registry";
/// Where kube-flannel.yml puts flannel's ServiceAccount.
pub const AGENT_NAMESPACE: &str = "kube-flannel";
pub const AGENT_SERVICE_ACCOUNT: &str = "flannel";
/// The first address of the service range (the `kubernetes` Service).
const SERVICE_RANGE: &str = "10.96.0.0/12";
const FIRST_SERVICE_IP: &str = "10.96.0.1";

/// The RBAC objects of flannel v0.20.2's Documentation/kube-flannel.yml,
/// verbatim: the agents get these rights and no others.
pub const AGENT_RBAC: &str = r#"---
kind: Namespace
apiVersion: v1
metadata:
  name: kube-flannel
  labels:
    pod-security.kubernetes.io/enforce: privileged
---
kind: ClusterRole
apiVersion: rbac.authorization.k8s.io/v1
metadata:
  name: flannel
rules:
- apiGroups:
  - ""
  resources:
  - pods
  verbs:
  - get
- apiGroups:
  - ""
  resources:
  - nodes
  verbs:
  - get
  - list
  - watch
- apiGroups:
  - ""
  resources:
  - nodes/status
  verbs:
  - patch
---
kind: ClusterRoleBinding
apiVersion: rbac.authorization.k8s.io/v1
metadata:
  name: flannel
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: flannel
subjects:
- kind: ServiceAccount
  name: flannel
  namespace: kube-flannel
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: flannel
  namespace: kube-flannel
"#;

/// The Kubernetes binaries `cargo xtask` built or was given, if any.
pub fn binaries() -> Option<PathBuf> {
    std::env::var_os(BINARY_ENV).map(PathBuf::from)
}

/// What a lab with the kube subnet manager records about its control plane.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KubeState {
    /// Where kube-apiserver and kubectl live.
    pub bin_dir: PathBuf,
    /// `https://<underlay gateway>:6443`.
    pub server: String,
    /// The lab's own credential (system:masters); never handed to an agent.
    pub admin_kubeconfig: PathBuf,
    /// The agents' credential: the `kube-flannel/flannel` ServiceAccount.
    pub agent_kubeconfig: PathBuf,
    /// flannel's `net-conf.json` (the ConfigMap's key, as a file).
    pub net_conf: PathBuf,
    /// The namespace the API server runs in (the lab's underlay).
    pub ns: String,
}

/// Starts kube-apiserver in `ns` (the underlay, where etcd runs at
/// `etcd_endpoint`), waits until `/readyz` says ok, creates flannel's RBAC
/// objects and issues the agents' ServiceAccount token. Everything lives in
/// `run_dir/kube`; the pid file in `run_dir`, where teardown finds it.
pub fn start(
    ns: &str,
    address: &str,
    etcd_endpoint: &str,
    run_dir: &Path,
    bin_dir: &Path,
    net_conf: &str,
    dual_stack: bool,
) -> Result<KubeState> {
    let dir = run_dir.join("kube");
    fs::create_dir_all(&dir)?;
    make_certificates(&dir, address)?;
    let admin_token = random_token()?;
    fs::write(
        dir.join("tokens.csv"),
        format!("{admin_token},weft-lab-admin,weft-lab-admin,\"system:masters\"\n"),
    )?;
    let server = format!("https://{address}:{SECURE_PORT}");
    let admin_kubeconfig = dir.join("admin.kubeconfig");
    write_kubeconfig(
        &admin_kubeconfig,
        &server,
        &dir.join("ca.crt"),
        "weft-lab-admin",
        &admin_token,
    )?;
    let net_conf_path = dir.join("net-conf.json");
    fs::write(&net_conf_path, net_conf)?;
    let state = KubeState {
        bin_dir: bin_dir.to_owned(),
        server: server.clone(),
        admin_kubeconfig,
        agent_kubeconfig: dir.join("flannel.kubeconfig"),
        net_conf: net_conf_path,
        ns: ns.to_owned(),
    };

    let apiserver = bin_dir.join("kube-apiserver");
    let file = |name: &str| dir.join(name).display().to_string();
    let mut command = netns::command(ns, &apiserver.display().to_string())?;
    command.args([
        format!("--etcd-servers={etcd_endpoint}"),
        format!("--etcd-prefix={ETCD_PREFIX}"),
        "--bind-address=0.0.0.0".to_owned(),
        format!("--advertise-address={address}"),
        format!("--secure-port={SECURE_PORT}"),
        "--insecure-port=0".to_owned(),
        format!("--tls-cert-file={}", file("apiserver.crt")),
        format!("--tls-private-key-file={}", file("apiserver.key")),
        format!("--token-auth-file={}", file("tokens.csv")),
        "--authorization-mode=RBAC".to_owned(),
        "--anonymous-auth=false".to_owned(),
        "--service-account-issuer=https://kubernetes.default.svc".to_owned(),
        format!("--service-account-signing-key-file={}", file("sa.key")),
        format!("--service-account-key-file={}", file("sa.pub")),
        format!("--service-cluster-ip-range={SERVICE_RANGE}"),
        // One machine, several labs: keep the server small.
        "--profiling=false".to_owned(),
        "--enable-priority-and-fairness=false".to_owned(),
        "--watch-cache=false".to_owned(),
    ]);
    if dual_stack {
        // Without the (alpha, off by default) gate v1.20's Node strategy
        // silently keeps only the first of a new Node's podCIDRs
        // (pkg/registry/core/node/strategy.go, `dropDisabledFields`), so a
        // dual-stack Node would lose its IPv6 one. Only dual-stack labs turn
        // it on: it also changes how Services are defaulted and validated,
        // which IPv4 labs keep as a stock v1.20 cluster has them.
        command.arg("--feature-gates=IPv6DualStack=true");
    }
    let log = dir.join("kube-apiserver.log");
    let pid_file = run_dir.join("kube-apiserver.pid");
    process::spawn_daemon(command, &log, &pid_file)?;
    process::wait_ready(
        "kube-apiserver",
        &pid_file,
        &log,
        Duration::from_secs(90),
        || {
            state
                .admin(&["get", "--raw", "/readyz"])
                .is_ok_and(|out| out.trim() == "ok")
        },
    )?;

    state
        .admin_with_input(&["apply", "-f", "-"], AGENT_RBAC)
        .context("creating flannel's RBAC objects")?;
    let agent_token = state.service_account_token()?;
    write_kubeconfig(
        &state.agent_kubeconfig,
        &server,
        &dir.join("ca.crt"),
        "flannel",
        &agent_token,
    )?;
    Ok(state)
}

/// A Node as a kubelet registers one.
pub struct NodeRegistration<'a> {
    pub name: &'a str,
    pub internal_ip: &'a str,
    pub pod_cidr: &'a str,
}

impl NodeRegistration<'_> {
    /// The Node's `spec`: `podCIDR` and `podCIDRs` as node IPAM writes them,
    /// the IPv4 one first and, in a dual-stack cluster, the IPv6 one after it.
    fn spec(&self, pod_cidr_v6: Option<&str>) -> serde_json::Value {
        let pod_cidrs: Vec<&str> = std::iter::once(self.pod_cidr).chain(pod_cidr_v6).collect();
        serde_json::json!({ "podCIDR": self.pod_cidr, "podCIDRs": pod_cidrs })
    }
}

impl KubeState {
    /// `kubectl` with the lab's admin credential; returns stdout.
    pub fn admin(&self, args: &[&str]) -> Result<String> {
        self.kubectl(&self.admin_kubeconfig, args, None)
    }

    pub fn admin_with_input(&self, args: &[&str], input: &str) -> Result<String> {
        self.kubectl(&self.admin_kubeconfig, args, Some(input))
    }

    /// `kubectl` with the agents' ServiceAccount credential.
    pub fn as_agent(&self, args: &[&str]) -> Result<String> {
        self.kubectl(&self.agent_kubeconfig, args, None)
    }

    fn kubectl(&self, kubeconfig: &Path, args: &[&str], input: Option<&str>) -> Result<String> {
        let kubectl = self.bin_dir.join("kubectl").display().to_string();
        let kubeconfig = format!("--kubeconfig={}", kubeconfig.display());
        let mut all = vec![
            kubectl.as_str(),
            kubeconfig.as_str(),
            "--request-timeout=10s",
        ];
        all.extend_from_slice(args);
        match input {
            None => netns::run(&self.ns, &all),
            Some(input) => netns::run_with_input(&self.ns, &all, input),
        }
    }

    /// A Node object as a kubelet creates it: hostname/os/arch labels, the
    /// kubelet's annotations (stock flanneld v0.20.2 panics on a Node whose
    /// annotations map is empty), its addresses, and the podCIDR node IPAM
    /// would assign.
    pub fn register_node(&self, node: &NodeRegistration) -> Result<()> {
        self.register_node_with(node, None)
    }

    /// [`KubeState::register_node`] in a dual-stack cluster: the Node's
    /// `podCIDRs` hold `pod_cidr_v6` after the IPv4 one (the API server
    /// must run with `IPv6DualStack=true`, see [`start`]).
    pub fn register_dual_stack_node(
        &self,
        node: &NodeRegistration,
        pod_cidr_v6: &str,
    ) -> Result<()> {
        self.register_node_with(node, Some(pod_cidr_v6))
    }

    fn register_node_with(&self, node: &NodeRegistration, pod_cidr_v6: Option<&str>) -> Result<()> {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        let object = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": node.name,
                "labels": {
                    "kubernetes.io/hostname": node.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": arch,
                    "beta.kubernetes.io/os": "linux",
                    "beta.kubernetes.io/arch": arch,
                },
                "annotations": {
                    "node.alpha.kubernetes.io/ttl": "0",
                    "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                },
            },
            "spec": node.spec(pod_cidr_v6),
            "status": {
                "addresses": [
                    { "type": "InternalIP", "address": node.internal_ip },
                    { "type": "Hostname", "address": node.name },
                ],
            },
        });
        self.admin_with_input(&["create", "-f", "-"], &object.to_string())
            .with_context(|| format!("registering Node {}", node.name))
            .map(drop)
    }

    /// The Node object `name` as the API server holds it.
    pub fn node(&self, name: &str) -> Result<serde_json::Value> {
        let out = self.admin(&["get", "node", name, "-o", "json"])?;
        serde_json::from_str(&out).with_context(|| format!("Node {name} is not JSON"))
    }

    /// A token for `kube-flannel/flannel` from the TokenRequest API: what
    /// the kubelet mounts into a flannel pod.
    fn service_account_token(&self) -> Result<String> {
        let request = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": { "expirationSeconds": 86400 },
        });
        let path = self.admin_kubeconfig.with_file_name("token-request.json");
        fs::write(&path, request.to_string())?;
        let uri = format!(
            "/api/v1/namespaces/{AGENT_NAMESPACE}/serviceaccounts/{AGENT_SERVICE_ACCOUNT}/token"
        );
        let out = self
            .admin(&["create", "--raw", &uri, "-f", &path.display().to_string()])
            .context("requesting the agents' ServiceAccount token")?;
        let response: serde_json::Value = serde_json::from_str(&out)?;
        response["status"]["token"]
            .as_str()
            .filter(|token| !token.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("TokenRequest answered without a token: {out}"))
    }
}

/// A kubeconfig with one cluster, one user (a bearer token) and a context.
fn write_kubeconfig(path: &Path, server: &str, ca: &Path, user: &str, token: &str) -> Result<()> {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "weft-lab", "cluster": {
            "server": server,
            "certificate-authority": ca,
        }}],
        "users": [{ "name": user, "user": { "token": token } }],
        "contexts": [{ "name": "weft-lab", "context": { "cluster": "weft-lab", "user": user } }],
        "current-context": "weft-lab",
    });
    // JSON is YAML: client-go and flanneld read it as a kubeconfig.
    fs::write(path, config.to_string()).with_context(|| format!("writing {}", path.display()))
}

/// The lab's CA, the API server's serving certificate (for the underlay
/// address, loopback, the first service IP and the in-cluster names) and
/// the service-account signing key pair, made with openssl in `dir`.
fn make_certificates(dir: &Path, address: &str) -> Result<()> {
    let openssl = |args: &[&str]| -> Result<()> {
        let output = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("cannot run openssl")?;
        ensure!(
            output.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    };
    openssl(&[
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
        "/CN=weft-lab-kubernetes-ca",
        "-days",
        "2",
    ])?;
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "apiserver.key",
        "-out",
        "apiserver.csr",
        "-subj",
        "/CN=kube-apiserver",
    ])?;
    fs::write(
        dir.join("apiserver.ext"),
        format!(
            "subjectAltName=IP:{address},IP:127.0.0.1,IP:{FIRST_SERVICE_IP},DNS:kubernetes,\
             DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n"
        ),
    )?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "apiserver.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "apiserver.crt",
        "-days",
        "2",
        "-extfile",
        "apiserver.ext",
    ])?;
    openssl(&["genrsa", "-out", "sa.key", "2048"])?;
    openssl(&["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
    Ok(())
}

/// 32 random hex digits from the kernel.
fn random_token() -> Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

// kube-tests-a: what the kube subnet manager's end-to-end tests ask the API
// server, always as the lab's admin (never with the agents' token).

/// flanneld's default `--kube-annotation-prefix`.
pub const ANNOTATION_PREFIX: &str = "flannel.alpha.coreos.com";

/// The message flanneld v0.20.2 puts on its `NetworkUnavailable=False` condition.
pub const FLANNEL_IS_UP_MESSAGE: &str = "Flannel is running on this node";

impl KubeState {
    /// `kubectl delete node <name>`, as an admin removes a node for good.
    pub fn delete_node(&self, name: &str) -> Result<()> {
        self.admin(&["delete", "node", name, "--wait=true"])
            .with_context(|| format!("deleting Node {name}"))
            .map(drop)
    }

    /// The names of every Node the API server holds.
    pub fn node_names(&self) -> Result<Vec<String>> {
        let out = self.admin(&["get", "nodes", "-o", "name"])?;
        Ok(out
            .lines()
            .filter_map(|line| line.strip_prefix("node/"))
            .map(str::to_owned)
            .collect())
    }
}

/// A Node's annotations under flannel's prefix, keyed without it
/// (`backend-type`, `backend-data`, ...). A non-string value is an error:
/// annotations are strings, and a test must not read a wrong one as absent.
pub fn flannel_annotations(
    node: &serde_json::Value,
) -> Result<std::collections::BTreeMap<String, String>> {
    let prefix = format!("{ANNOTATION_PREFIX}/");
    let mut found = std::collections::BTreeMap::new();
    let annotations = node["metadata"]["annotations"].as_object();
    for (key, value) in annotations.into_iter().flatten() {
        if let Some(short) = key.strip_prefix(&prefix) {
            let value = value
                .as_str()
                .with_context(|| format!("annotation {key} is not a string: {value}"))?;
            found.insert(short.to_owned(), value.to_owned());
        }
    }
    Ok(found)
}

/// A Node's condition of type `kind` (e.g. `NetworkUnavailable`), if it has one.
pub fn condition(node: &serde_json::Value, kind: &str) -> Option<serde_json::Value> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|condition| condition["type"] == kind)
        .cloned()
}

/// What one node holds for one peer: its kernel entries and, where weft's
/// eBPF dataplane runs, its fast-path map entries (`Lab::peer_traces`).
#[derive(Debug)]
pub struct PeerTraces {
    /// Routes to the peer's podCIDR.
    pub routes: Vec<serde_json::Value>,
    /// flannel.1's neighbour entries for the peer's VTEP address (its
    /// podCIDR's network address); none without flannel.1.
    pub neighbours: Vec<serde_json::Value>,
    /// flannel.1's FDB entries towards the peer's address.
    pub fdb: Vec<serde_json::Value>,
    /// `weft maps peers` rows for the peer's podCIDR.
    pub peers: Vec<serde_json::Value>,
    /// `weft maps vteps` entries for the peer's address.
    pub vteps: Vec<serde_json::Value>,
}

impl PeerTraces {
    /// Whether nothing of the peer is left.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
            && self.neighbours.is_empty()
            && self.fdb.is_empty()
            && self.peers.is_empty()
            && self.vteps.is_empty()
    }
}

// kube-failures: the API server stopped and started again, Nodes forged or
// re-registered by the admin, the agents' rights narrowed (the helpers of
// tests/tests/lab/kube_failures.rs).

/// flannel's annotation `key` under the default `--kube-annotation-prefix`.
pub fn flannel_annotation(key: &str) -> String {
    format!("{ANNOTATION_PREFIX}/{key}")
}

/// The running API server's command line, read from /proc before it is
/// stopped, so it starts again exactly as [`start`] ran it (same flags, same
/// etcd data, same certificates).
#[derive(Clone, Debug)]
pub struct ApiserverCommand {
    argv: Vec<String>,
}

/// Where [`start`] records the API server's pid.
fn apiserver_pid_file(run_dir: &Path) -> PathBuf {
    run_dir.join("kube-apiserver.pid")
}

impl KubeState {
    /// Stops the lab's API server (SIGTERM, then SIGKILL after 2 s) and returns how
    /// to start it again. Its objects stay in etcd.
    pub fn stop_apiserver(&self, run_dir: &Path) -> Result<ApiserverCommand> {
        let pid_file = apiserver_pid_file(run_dir);
        let pid = process::running_pid(&pid_file)
            .ok_or_else(|| anyhow!("no kube-apiserver runs ({})", pid_file.display()))?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .with_context(|| format!("reading kube-apiserver's (pid {pid}) command line"))?;
        let argv: Vec<String> = cmdline
            .split(|byte| *byte == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        ensure!(
            !argv.is_empty(),
            "kube-apiserver (pid {pid}) has no command line"
        );
        // A short grace: with watches open it drains for longer than an
        // outage needs to start.
        process::stop(&pid_file, Duration::from_secs(2))?;
        Ok(ApiserverCommand { argv })
    }

    /// Starts the API server `stop_apiserver` stopped, in the same
    /// namespace with the same command line, and waits until it is ready.
    /// Its log goes to `kube/kube-apiserver.<n>.log`, one per restart.
    pub fn restart_apiserver(&self, run_dir: &Path, command: &ApiserverCommand) -> Result<()> {
        let (program, args) = command
            .argv
            .split_first()
            .ok_or_else(|| anyhow!("kube-apiserver's command line is empty"))?;
        let pid_file = apiserver_pid_file(run_dir);
        ensure!(
            process::running_pid(&pid_file).is_none(),
            "kube-apiserver still runs"
        );
        let dir = run_dir.join("kube");
        let log = (1..)
            .map(|n| dir.join(format!("kube-apiserver.{n}.log")))
            .find(|log| !log.exists())
            .expect("an unused log name");
        let mut spawned = netns::command(&self.ns, program)?;
        spawned.args(args);
        process::spawn_daemon(spawned, &log, &pid_file)?;
        process::wait_ready(
            "kube-apiserver (restarted)",
            &pid_file,
            &log,
            Duration::from_secs(90),
            || {
                self.admin(&["get", "--raw", "/readyz"])
                    .is_ok_and(|out| out.trim() == "ok")
            },
        )
    }

    /// Sets (`Some`) or removes (`None`) annotations on Node `name` with the
    /// admin's credential, as a hostile or careless cluster admin could.
    pub fn annotate_node(
        &self,
        name: &str,
        annotations: &[(String, Option<String>)],
    ) -> Result<()> {
        let changes: Vec<String> = annotations
            .iter()
            .map(|(key, value)| match value {
                Some(value) => format!("{key}={value}"),
                None => format!("{key}-"),
            })
            .collect();
        let mut args = vec!["annotate", "node", "--overwrite", name];
        args.extend(changes.iter().map(String::as_str));
        self.admin(&args)
            .with_context(|| format!("annotating Node {name}"))
            .map(drop)
    }

    /// Registers a Node as a kubelet would ([`KubeState::register_node`]),
    /// then gives it `annotations`: a node no agent runs on, whose claims the
    /// agents judge like any peer's.
    pub fn register_annotated_node(
        &self,
        node: &NodeRegistration,
        annotations: &[(String, Option<String>)],
    ) -> Result<()> {
        self.register_node(node)?;
        self.annotate_node(node.name, annotations)
    }

    /// Sets `spec.podCIDR(s)` of Node `name`, as node IPAM does once (the API
    /// server refuses to change a podCIDR that is set).
    pub fn set_pod_cidr(&self, name: &str, pod_cidr: &str) -> Result<()> {
        let patch = serde_json::json!({ "spec": { "podCIDR": pod_cidr, "podCIDRs": [pod_cidr] } });
        self.admin(&["patch", "node", name, "-p", &patch.to_string()])
            .with_context(|| format!("setting Node {name}'s podCIDR to {pod_cidr}"))
            .map(drop)
    }

    /// Deletes Node `name` and registers it again as its kubelet would after
    /// a reinstall: same labels, addresses and kubelet annotations, no
    /// flannel annotations, no conditions, and no podCIDR yet (node IPAM
    /// has not assigned one).
    pub fn reregister_node_without_pod_cidr(&self, name: &str) -> Result<()> {
        let old = self.node(name)?;
        let annotations: serde_json::Map<String, serde_json::Value> =
            old["metadata"]["annotations"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(key, _)| !key.starts_with(&flannel_annotation("")))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
        let object = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": old["metadata"]["labels"],
                "annotations": annotations,
            },
            "spec": {},
            "status": { "addresses": old["status"]["addresses"] },
        });
        self.delete_node(name)?;
        self.admin_with_input(&["create", "-f", "-"], &object.to_string())
            .with_context(|| format!("registering Node {name} again"))
            .map(drop)
    }

    /// Removes every rule on `resource` (e.g. `nodes/status`) from the
    /// agents' ClusterRole `flannel`, as a narrower copy of kube-flannel.yml
    /// would. [`KubeState::restore_agent_rbac`] puts kube-flannel.yml's back.
    pub fn revoke_agent_resource(&self, resource: &str) -> Result<()> {
        let out = self.admin(&["get", "clusterrole", "flannel", "-o", "json"])?;
        let mut role: serde_json::Value = serde_json::from_str(&out)?;
        let rules = role["rules"]
            .as_array_mut()
            .ok_or_else(|| anyhow!("ClusterRole flannel has no rules: {out}"))?;
        let before = rules.len();
        rules.retain(|rule| {
            !rule["resources"]
                .as_array()
                .is_some_and(|resources| resources.iter().any(|r| r == resource))
        });
        ensure!(
            rules.len() < before,
            "ClusterRole flannel has no rule on {resource}"
        );
        self.admin_with_input(&["replace", "-f", "-"], &role.to_string())
            .with_context(|| format!("revoking {resource} from ClusterRole flannel"))
            .map(drop)
    }

    /// Applies kube-flannel.yml's RBAC objects again.
    pub fn restore_agent_rbac(&self) -> Result<()> {
        self.admin_with_input(&["apply", "-f", "-"], AGENT_RBAC)
            .context("restoring flannel's RBAC objects")
            .map(drop)
    }
}
