//! Ranks in separate processes, on one node or several, that meet over TCP.
//!
//! Rank 0 listens on the master address; every other rank connects, says its rank and the
//! world size, and waits until all have arrived. The connections then carry what the ranks
//! share: NCCL's unique id on GPUs (`share`), and on CPUs the all-reduce itself
//! (`TcpGroup`), which rank 0 sums in rank order and sends back.

use super::parallel::{add_into, on_host, Communicator};
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const HELLO: &[u8; 4] = b"MSA1";

/// The connections between the ranks: rank 0 holds one per other rank, in rank order;
/// every other rank holds the one to rank 0.
pub struct Rendezvous {
    pub rank: usize,
    pub world: usize,
    links: Vec<TcpStream>,
}

impl Rendezvous {
    /// Meets the other ranks at `addr:port` within `timeout`.
    pub fn meet(
        addr: &str,
        port: u16,
        rank: usize,
        world: usize,
        timeout: Duration,
    ) -> Result<Self> {
        if rank >= world {
            bail!("rank {rank} is outside a world of {world}");
        }
        let links = match rank {
            0 => accept_all(addr, port, world, timeout)?,
            _ => vec![connect(addr, port, rank, world, timeout)?],
        };
        Ok(Self { rank, world, links })
    }

    /// Rank 0's `blob`, on every rank.
    pub fn share(&mut self, blob: &[u8]) -> Result<Vec<u8>> {
        match self.rank {
            0 => {
                for (i, link) in self.links.iter_mut().enumerate() {
                    write_frame(link, blob, i + 1)?;
                }
                Ok(blob.to_vec())
            }
            _ => read_frame(self.master()?, 0),
        }
    }

    fn master(&mut self) -> Result<&mut TcpStream> {
        self.links.first_mut().context("no connection to rank 0")
    }

    /// The element-wise sums of every rank's `values`, added in rank order.
    fn sum(&mut self, values: Vec<f32>) -> Result<Vec<f32>> {
        let bytes: &[u8] = bytemuck::cast_slice(&values);
        if self.rank != 0 {
            let master = self.master()?;
            write_frame(master, bytes, 0)?;
            return floats(&read_frame(master, 0)?);
        }
        let mut sums = vec![0f32; values.len()];
        add_into(&mut sums, &values, 0)?;
        for (i, link) in self.links.iter_mut().enumerate() {
            add_into(&mut sums, &floats(&read_frame(link, i + 1)?)?, i + 1)?;
        }
        let out: &[u8] = bytemuck::cast_slice(&sums);
        for (i, link) in self.links.iter_mut().enumerate() {
            write_frame(link, out, i + 1)?;
        }
        Ok(sums)
    }

    /// Closes every connection, so that a rank waiting on this one gets an error.
    pub fn close(&self) {
        for link in &self.links {
            let _ = link.shutdown(Shutdown::Both);
        }
    }
}

fn accept_all(addr: &str, port: u16, world: usize, timeout: Duration) -> Result<Vec<TcpStream>> {
    let listener = TcpListener::bind((addr, port))
        .with_context(|| format!("rank 0 cannot listen on {addr}:{port}"))?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    let mut slots: Vec<Option<TcpStream>> = (1..world).map(|_| None).collect();
    while slots.iter().any(Option::is_none) {
        let (mut stream, peer) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    let missing: Vec<usize> = (1..world)
                        .filter(|r| slots.get(r - 1).is_some_and(Option::is_none))
                        .collect();
                    bail!("ranks {missing:?} did not reach {addr}:{port} within {timeout:?}");
                }
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => return Err(e).context("accepting a rank"),
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let (rank, their_world) =
            hello(&mut stream).with_context(|| format!("a connection from {peer}"))?;
        if their_world != world {
            bail!("rank {rank} (from {peer}) counts {their_world} ranks, rank 0 counts {world}");
        }
        match slots.get_mut(rank.wrapping_sub(1)) {
            Some(slot @ None) => *slot = Some(stream),
            Some(Some(_)) => bail!("two processes claim rank {rank} (the second from {peer})"),
            None => bail!("{peer} claims rank {rank}, outside 1..{world}"),
        }
    }
    let mut links: Vec<TcpStream> = slots.into_iter().flatten().collect();
    for link in &mut links {
        link.set_read_timeout(None)?;
        link.set_nodelay(true)?;
        link.write_all(b"OK").context("answering a rank")?;
    }
    Ok(links)
}

fn connect(
    addr: &str,
    port: u16,
    rank: usize,
    world: usize,
    timeout: Duration,
) -> Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    let mut stream = loop {
        match TcpStream::connect((addr, port)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| {
                    format!("rank {rank} cannot reach rank 0 at {addr}:{port} within {timeout:?}")
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    stream.set_nodelay(true)?;
    let mut hello = HELLO.to_vec();
    hello.extend((rank as u32).to_le_bytes());
    hello.extend((world as u32).to_le_bytes());
    stream.write_all(&hello)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut ok = [0u8; 2];
    stream
        .read_exact(&mut ok)
        .with_context(|| format!("rank {rank}: rank 0 at {addr}:{port} did not let it join"))?;
    if &ok != b"OK" {
        bail!("rank {rank}: {addr}:{port} is not an msa rank 0");
    }
    stream.set_read_timeout(None)?;
    Ok(stream)
}

fn hello(stream: &mut TcpStream) -> Result<(usize, usize)> {
    let mut buf = [0u8; 12];
    stream.read_exact(&mut buf).context("no greeting")?;
    let (magic, rest) = buf.split_at(4);
    if magic != HELLO {
        bail!("not an msa rank (greeting {magic:?})");
    }
    let (rank, world) = rest.split_at(4);
    let int = |b: &[u8]| -> Result<usize> { Ok(u32::from_le_bytes(b.try_into()?) as usize) };
    Ok((int(rank)?, int(world)?))
}

/// Sends a frame to rank `to`; a closed connection (the rank stopped) is an error that says so.
fn write_frame(stream: &mut TcpStream, bytes: &[u8], to: usize) -> Result<()> {
    let stopped = || format!("rank {to} stopped (its connection closed)");
    stream
        .write_all(&(bytes.len() as u64).to_le_bytes())
        .with_context(stopped)?;
    stream.write_all(bytes).with_context(stopped)
}

/// The next frame from rank `from`; its end (the rank stopped) is an error that says so.
fn read_frame(stream: &mut TcpStream, from: usize) -> Result<Vec<u8>> {
    let stopped = || format!("rank {from} stopped (its connection closed)");
    let mut len = [0u8; 8];
    stream.read_exact(&mut len).with_context(stopped)?;
    let len = u64::from_le_bytes(len);
    let mut bytes = Vec::new();
    stream
        .take(len)
        .read_to_end(&mut bytes)
        .with_context(stopped)?;
    if bytes.len() as u64 != len {
        bail!("{}: {} of {len} bytes arrived", stopped(), bytes.len());
    }
    Ok(bytes)
}

fn floats(bytes: &[u8]) -> Result<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        bail!("{} bytes are not whole f32 values", bytes.len());
    }
    Ok(bytemuck::pod_collect_to_vec(bytes))
}

/// Ranks in separate processes on CPUs, reducing through rank 0 over TCP.
pub struct TcpGroup {
    links: Mutex<Rendezvous>,
    rank: usize,
    world: usize,
}

impl TcpGroup {
    pub fn new(rendezvous: Rendezvous) -> Self {
        Self {
            rank: rendezvous.rank,
            world: rendezvous.world,
            links: Mutex::new(rendezvous),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Rendezvous>> {
        self.links
            .lock()
            .map_err(|_| anyhow::anyhow!("a thread panicked during an all-reduce"))
    }
}

impl Communicator for TcpGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, values: &Tensor) -> Result<Tensor> {
        on_host(values, |v| self.lock()?.sum(v))
    }

    fn abort(&self) {
        if let Ok(links) = self.links.lock() {
            links.close();
        }
    }
}
