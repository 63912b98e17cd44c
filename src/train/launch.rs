//! Data-parallel runs of one process per rank: `msa train --gpus N` starts N copies of
//! itself on this node (ranks `node_rank * N ..`), tells each its place through the
//! environment, and waits for them; with `--nnodes M` the same command on every node makes
//! one run of M * N ranks that meet at rank 0's `--master-addr:--master-port`.

use super::parallel::Communicator;
use super::tcp_group::{Rendezvous, TcpGroup};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const RANK: &str = "MSA_RANK";
pub const LOCAL_RANK: &str = "MSA_LOCAL_RANK";
pub const WORLD_SIZE: &str = "MSA_WORLD_SIZE";
pub const MASTER_ADDR: &str = "MSA_MASTER_ADDR";
pub const MASTER_PORT: &str = "MSA_MASTER_PORT";

/// How long ranks wait for each other to start.
const MEET_TIMEOUT: Duration = Duration::from_secs(300);

/// Where the ranks of a run are.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Ranks (GPUs) per node.
    pub per_node: usize,
    pub nnodes: usize,
    pub node_rank: usize,
    pub master_addr: String,
    /// None: a free port, for a single node.
    pub master_port: Option<u16>,
}

impl Topology {
    pub fn world(&self) -> usize {
        self.per_node * self.nnodes
    }

    fn check(&self) -> Result<u16> {
        if self.per_node == 0 || self.nnodes == 0 {
            bail!("--gpus and --nnodes must be at least 1");
        }
        if self.node_rank >= self.nnodes {
            bail!(
                "--node-rank {} is outside --nnodes {}",
                self.node_rank,
                self.nnodes
            );
        }
        match (self.master_port, self.nnodes) {
            (Some(p), _) => Ok(p),
            (None, 1) => free_port(&self.master_addr),
            (None, _) => bail!("--nnodes > 1 needs --master-port (the same on every node)"),
        }
    }
}

fn free_port(addr: &str) -> Result<u16> {
    let listener = std::net::TcpListener::bind((addr, 0))
        .with_context(|| format!("cannot find a free port on {addr}"))?;
    Ok(listener.local_addr()?.port())
}

/// This process's place in a run, when a launcher started it.
#[derive(Debug, Clone)]
pub struct Worker {
    pub rank: usize,
    pub local_rank: usize,
    pub world: usize,
    pub master_addr: String,
    pub master_port: u16,
}

impl Worker {
    /// The worker's place from the environment; None when this process is not a worker.
    pub fn from_env() -> Result<Option<Self>> {
        let Ok(rank) = std::env::var(RANK) else {
            return Ok(None);
        };
        let var = |name: &str| {
            std::env::var(name).with_context(|| format!("{RANK} is set but {name} is not"))
        };
        let num = |name: &str| -> Result<usize> {
            let v = var(name)?;
            v.parse()
                .with_context(|| format!("{name}={v} is not a number"))
        };
        Ok(Some(Self {
            rank: rank
                .parse()
                .with_context(|| format!("{RANK}={rank} is not a number"))?,
            local_rank: num(LOCAL_RANK)?,
            world: num(WORLD_SIZE)?,
            master_addr: var(MASTER_ADDR)?,
            master_port: u16::try_from(num(MASTER_PORT)?).context("the master port")?,
        }))
    }

    /// The device of this rank: its GPU in a CUDA build, else the CPU.
    pub fn device(&self) -> Result<Device> {
        #[cfg(feature = "cuda")]
        {
            crate::runtime::device::cuda_device(self.local_rank)
                .with_context(|| format!("rank {}: GPU {}", self.rank, self.local_rank))
        }
        #[cfg(not(feature = "cuda"))]
        {
            Ok(Device::Cpu)
        }
    }

    /// Meets the other ranks and returns the communicator for `device`: NCCL on a GPU, TCP
    /// through rank 0 on the CPU.
    pub fn join(&self, device: &Device) -> Result<Box<dyn Communicator>> {
        let meet = Rendezvous::meet(
            &self.master_addr,
            self.master_port,
            self.rank,
            self.world,
            MEET_TIMEOUT,
        )?;
        match device {
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => Ok(Box::new(super::nccl::NcclGroup::new(meet, device)?)),
            _ => Ok(Box::new(TcpGroup::new(meet))),
        }
    }
}

/// Starts this node's ranks as copies of this process (same arguments, a worker's
/// environment) and waits for all of them. The first to fail stops the others, and its
/// failure is the run's. Only rank 0 prints to stdout.
pub fn run_node(topology: &Topology) -> Result<()> {
    let port = topology.check()?;
    let exe = std::env::current_exe().context("cannot find this program to start its ranks")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let mut children: Vec<(usize, Child)> = vec![];
    for local in 0..topology.per_node {
        let rank = topology.node_rank * topology.per_node + local;
        let child = Command::new(&exe)
            .args(&args)
            .env(RANK, rank.to_string())
            .env(LOCAL_RANK, local.to_string())
            .env(WORLD_SIZE, topology.world().to_string())
            .env(MASTER_ADDR, &topology.master_addr)
            .env(MASTER_PORT, port.to_string())
            .stdout(if rank == 0 {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn();
        match child {
            Ok(c) => children.push((rank, c)),
            Err(e) => {
                stop_all(&mut children);
                return Err(e).with_context(|| format!("cannot start rank {rank}"));
            }
        }
    }
    wait_all(children)
}

fn wait_all(mut children: Vec<(usize, Child)>) -> Result<()> {
    while !children.is_empty() {
        let mut failed: Vec<(bool, String)> = vec![];
        children.retain_mut(|(rank, child)| match child.try_wait() {
            Ok(Some(status)) if status.success() => false,
            Ok(Some(status)) => {
                // A rank killed by a signal is the cause; the others then fail on its
                // closed connection.
                let killed = status.code().is_none();
                failed.push((killed, format!("rank {rank} stopped ({status})")));
                false
            }
            Ok(None) => true,
            Err(e) => {
                failed.push((false, format!("rank {rank}: cannot wait for it: {e}")));
                false
            }
        });
        failed.sort_by_key(|(killed, _)| !killed);
        if let Some((_, why)) = failed.into_iter().next() {
            stop_all(&mut children);
            bail!("{why}; the other ranks of this node were stopped");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn stop_all(children: &mut [(usize, Child)]) {
    for (_, child) in children.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
}
