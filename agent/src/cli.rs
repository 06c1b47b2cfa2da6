//! Command-line interface. Flags keep flanneld's names where they mean the
//! same thing; each can also come from a `WEFT_*` environment variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "weft",
    version,
    about = "flannel-compatible overlay agent with an eBPF fast path"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent: load and attach the eBPF programs, follow pod veths.
    Agent(AgentArgs),
    /// Print the pinned maps of a running (or stopped) agent.
    Maps(MapsArgs),
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The node's uplink (physical NIC) that carries overlay traffic.
    #[arg(long, env = "WEFT_IFACE")]
    pub iface: String,

    /// bpffs directory where the agent pins its maps.
    #[arg(long, env = "WEFT_BPF_PIN_DIR", default_value = "/sys/fs/bpf/weft")]
    pub bpf_pin_dir: PathBuf,

    /// flannel's subnet.env for this node.
    #[arg(
        long,
        env = "WEFT_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    pub subnet_file: PathBuf,

    /// The bridge the CNI bridge plugin plugs pod veths into.
    #[arg(long, env = "WEFT_BRIDGE", default_value = "cni0")]
    pub bridge: String,

    /// How to attach XDP to the uplink: `native` (driver), `generic` (skb),
    /// or `auto` (native where the driver has it, else generic).
    #[arg(long, env = "WEFT_XDP_MODE", value_enum, default_value_t = XdpModeArg::Auto)]
    pub xdp_mode: XdpModeArg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdpModeArg {
    Auto,
    Native,
    Generic,
}

#[derive(Debug, Args)]
pub struct MapsArgs {
    #[command(subcommand)]
    pub map: MapName,

    /// bpffs directory where the agent pinned its maps.
    #[arg(
        long,
        env = "WEFT_BPF_PIN_DIR",
        default_value = "/sys/fs/bpf/weft",
        global = true
    )]
    pub bpf_pin_dir: PathBuf,

    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, Subcommand)]
pub enum MapName {
    /// Fast-path counters, summed over CPUs.
    Stats,
}
