//! A check of a `.pth` archive before candle's pickle reader sees it. That reader builds and
//! drops its objects recursively, so a pickle that nests lists a few hundred thousand deep
//! (a few bytes per level) overflows the stack and aborts the process. The check walks the
//! opcodes once, builds only the structure (which object holds which), refuses nesting
//! deeper than a bound, and refuses zip entries that expand like a decompression bomb.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// Deeper nesting than any state_dict has (a few levels), far below what overflows.
pub const MAX_DEPTH: usize = 100;
/// Largest `data.pkl` read for the check.
const MAX_PICKLE_BYTES: u64 = 256 << 20;
/// A zip entry larger than this must not expand more than `MAX_RATIO` times.
const BOMB_FLOOR: u64 = 64 << 20;
const MAX_RATIO: u64 = 100;

/// Checks the archive's entries and its pickle's nesting.
pub fn check_archive(path: &Path) -> Result<()> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .with_context(|| format!("{}: not a readable zip archive", path.display()))?;
    let mut pickle = None;
    for i in 0..zip.len() {
        let entry = zip
            .by_index_raw(i)
            .with_context(|| format!("{}: zip entry {i} is unreadable", path.display()))?;
        let (packed, size) = (entry.compressed_size(), entry.size());
        let name = entry.name().map(|n| n.into_owned()).unwrap_or_default();
        if size > BOMB_FLOOR && size > packed.saturating_mul(MAX_RATIO) {
            bail!(
                "{}: entry `{}` expands from {packed} to {size} bytes; refused as a decompression bomb",
                path.display(),
                name
            );
        }
        if name.ends_with("data.pkl") && pickle.is_none() {
            pickle = Some(i);
        }
    }
    let Some(i) = pickle else {
        bail!("{}: no data.pkl in the archive", path.display());
    };
    let entry = zip.by_index(i)?;
    if entry.size() > MAX_PICKLE_BYTES {
        bail!(
            "{}: data.pkl is {} bytes; the limit is {MAX_PICKLE_BYTES}",
            path.display(),
            entry.size()
        );
    }
    let mut bytes = Vec::new();
    entry
        .take(MAX_PICKLE_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("{}: cannot read data.pkl", path.display()))?;
    check_pickle(&bytes, MAX_DEPTH).with_context(|| format!("{}: data.pkl", path.display()))
}

/// The structure a pickle builds: object i holds `children[i]`.
#[derive(Default)]
struct Graph {
    children: Vec<Vec<u32>>,
}

impl Graph {
    fn node(&mut self, children: Vec<u32>) -> u32 {
        self.children.push(children);
        (self.children.len() - 1) as u32
    }
}

enum Slot {
    Obj(u32),
    Mark,
}

struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<Slot>,
    memo: HashMap<u64, u32>,
    graph: Graph,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n);
        let Some((s, end)) = end.and_then(|e| Some((self.bytes.get(self.pos..e)?, e))) else {
            bail!("truncated at byte {} (an argument of {n} bytes)", self.pos);
        };
        self.pos = end;
        Ok(s)
    }

    fn uint(&mut self, n: usize) -> Result<u64> {
        let b = self.take(n)?;
        Ok(b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64))
    }

    fn line(&mut self) -> Result<&'a [u8]> {
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            bail!("truncated at byte {}: a line without its end", self.pos);
        };
        self.take(n + 1)
    }

    fn push_leaf(&mut self) {
        let id = self.graph.node(vec![]);
        self.stack.push(Slot::Obj(id));
    }

    fn pop(&mut self) -> Result<u32> {
        match self.stack.pop() {
            Some(Slot::Obj(id)) => Ok(id),
            Some(Slot::Mark) => bail!("an object was expected at byte {}, found a mark", self.pos),
            None => bail!("stack underflow at byte {}", self.pos),
        }
    }

    fn top(&self) -> Result<u32> {
        match self.stack.last() {
            Some(Slot::Obj(id)) => Ok(*id),
            _ => bail!("no object on the stack at byte {}", self.pos),
        }
    }

    /// Pops everything down to the last mark (removed too).
    fn pop_mark(&mut self) -> Result<Vec<u32>> {
        let mut items = vec![];
        loop {
            match self.stack.pop() {
                Some(Slot::Obj(id)) => items.push(id),
                Some(Slot::Mark) => break,
                None => bail!("no mark to pop to at byte {}", self.pos),
            }
        }
        items.reverse();
        Ok(items)
    }

    fn adopt(&mut self, parent: u32, kids: impl IntoIterator<Item = u32>) -> Result<()> {
        self.graph
            .children
            .get_mut(parent as usize)
            .with_context(|| format!("object {parent} unknown at byte {}", self.pos))?
            .extend(kids);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result<()> {
        let id = *self
            .memo
            .get(&key)
            .with_context(|| format!("memo entry {key} read before it was written"))?;
        self.stack.push(Slot::Obj(id));
        Ok(())
    }

    fn memo_put(&mut self, key: u64) -> Result<()> {
        let id = self.top()?;
        self.memo.insert(key, id);
        Ok(())
    }

    /// Runs one opcode; false at STOP.
    fn step(&mut self) -> Result<bool> {
        let at = self.pos;
        let op = self.uint(1)? as u8;
        match op {
            b'.' => return Ok(false),
            0x80 => drop(self.take(1)?),
            0x95 => drop(self.take(8)?),
            b'(' => self.stack.push(Slot::Mark),
            b'}' | b']' | b')' | 0x8f => self.push_leaf(),
            b'N' | 0x88 | 0x89 => self.push_leaf(),
            b'K' | b'U' | b'C' | 0x8c | 0x8a | b'h' | b'q' | b'M' | b'J' | b'G' | b'j' | b'r' => {
                self.sized(op)?
            }
            b'X' | b'B' | b'T' | 0x8b | 0x8d | 0x8e => self.sized(op)?,
            b'I' | b'L' | b'F' | b'S' | b'V' | b'P' => {
                self.line()?;
                self.push_leaf();
            }
            b'c' => {
                self.line()?;
                self.line()?;
                self.push_leaf();
            }
            b'g' | b'p' => {
                let text = String::from_utf8_lossy(self.line()?).trim().to_string();
                let key: u64 = text
                    .parse()
                    .with_context(|| format!("memo key `{text}` at byte {at}"))?;
                if op == b'g' {
                    self.memo_get(key)?
                } else {
                    self.memo_put(key)?
                }
            }
            0x94 => {
                let key = self.memo.len() as u64;
                self.memo_put(key)?;
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let mut kids = (0..n).map(|_| self.pop()).collect::<Result<Vec<_>>>()?;
                kids.reverse();
                let id = self.graph.node(kids);
                self.stack.push(Slot::Obj(id));
            }
            b't' | b'l' | b'd' | 0x91 => {
                let kids = self.pop_mark()?;
                let id = self.graph.node(kids);
                self.stack.push(Slot::Obj(id));
            }
            b'a' => {
                let v = self.pop()?;
                let list = self.top()?;
                self.adopt(list, [v])?;
            }
            b's' => {
                let (v, k) = (self.pop()?, self.pop()?);
                let dict = self.top()?;
                self.adopt(dict, [k, v])?;
            }
            b'e' | b'u' | 0x90 => {
                let kids = self.pop_mark()?;
                let target = self.top()?;
                self.adopt(target, kids)?;
            }
            b'b' => {
                let state = self.pop()?;
                let obj = self.top()?;
                self.adopt(obj, [state])?;
            }
            b'R' | 0x81 | 0x93 => {
                let (b, a) = (self.pop()?, self.pop()?);
                let id = self.graph.node(vec![a, b]);
                self.stack.push(Slot::Obj(id));
            }
            b'Q' => {
                let pid = self.pop()?;
                let id = self.graph.node(vec![pid]);
                self.stack.push(Slot::Obj(id));
            }
            b'0' => {
                self.stack.pop();
            }
            b'1' => drop(self.pop_mark()?),
            b'2' => {
                let id = self.top()?;
                self.stack.push(Slot::Obj(id));
            }
            _ => bail!("unsupported pickle opcode 0x{op:02x} at byte {at}"),
        }
        Ok(true)
    }

    /// Opcodes with a fixed-size argument or a length-prefixed one.
    fn sized(&mut self, op: u8) -> Result<()> {
        match op {
            b'K' => drop(self.take(1)?),
            b'M' => drop(self.take(2)?),
            b'J' => drop(self.take(4)?),
            b'G' => drop(self.take(8)?),
            b'h' => {
                let k = self.uint(1)?;
                return self.memo_get(k);
            }
            b'j' => {
                let k = self.uint(4)?;
                return self.memo_get(k);
            }
            b'q' => {
                let k = self.uint(1)?;
                return self.memo_put(k);
            }
            b'r' => {
                let k = self.uint(4)?;
                return self.memo_put(k);
            }
            _ => {
                let width = match op {
                    b'U' | b'C' | 0x8c | 0x8a => 1,
                    b'X' | b'B' | b'T' | 0x8b => 4,
                    _ => 8,
                };
                let n = self.uint(width)?;
                let n = usize::try_from(n).context("a length beyond memory")?;
                self.take(n)?;
            }
        }
        self.push_leaf();
        Ok(())
    }
}

/// Refuses a pickle that is truncated, uses an opcode torch.save does not, refers to a memo
/// entry never written, holds itself, or nests deeper than `max_depth`.
pub fn check_pickle(bytes: &[u8], max_depth: usize) -> Result<()> {
    let mut m = Machine {
        bytes,
        pos: 0,
        stack: vec![],
        memo: HashMap::new(),
        graph: Graph::default(),
    };
    loop {
        if m.pos >= bytes.len() {
            bail!("no STOP opcode: the pickle is truncated");
        }
        if !m.step()? {
            break;
        }
    }
    if max_nesting(&m.graph, max_depth)? > max_depth {
        bail!("objects nest more than {max_depth} deep (the limit)");
    }
    Ok(())
}

/// The deepest chain of holders, found without recursion (stopping beyond `limit`); a
/// structure that holds itself is refused.
#[expect(
    clippy::indexing_slicing,
    reason = "`height` has one entry per node, and nodes and children are ids that \
              `Graph::node` handed out, all below `children.len()`"
)]
fn max_nesting(g: &Graph, limit: usize) -> Result<usize> {
    const NEW: u32 = u32::MAX;
    const OPEN: u32 = u32::MAX - 1;
    let n = g.children.len();
    let mut height = vec![NEW; n];
    let mut deepest = 0usize;
    for root in 0..n {
        if height[root] != NEW {
            continue;
        }
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        height[root] = OPEN;
        while let Some(&mut (node, ref mut next)) = path.last_mut() {
            if let Some(&child) = g.children[node].get(*next) {
                *next += 1;
                let child = child as usize;
                match height[child] {
                    OPEN => bail!("an object holds itself"),
                    NEW => {
                        if path.len() > limit {
                            return Ok(path.len() + 1);
                        }
                        height[child] = OPEN;
                        path.push((child, 0));
                    }
                    _ => {}
                }
                continue;
            }
            let h = 1 + g.children[node]
                .iter()
                .map(|&c| height[c as usize])
                .max()
                .unwrap_or(0);
            height[node] = h;
            deepest = deepest.max(h as usize);
            path.pop();
        }
    }
    Ok(deepest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested_lists(n: usize) -> Vec<u8> {
        let mut p = vec![0x80, 2];
        p.extend(std::iter::repeat_n(b']', n));
        p.extend(std::iter::repeat_n(b'a', n - 1));
        p.push(b'.');
        p
    }

    /// Depth n with a stack of two, through the memo: the shape a stack bound would miss.
    fn nested_through_memo(n: usize) -> Vec<u8> {
        let mut p = vec![0x80, 2, b']', 0x94];
        for i in 1..n as u32 {
            p.push(b']');
            p.push(0x94);
            p.push(b'a');
            p.push(b'0');
            p.push(b'j');
            p.extend(i.to_le_bytes());
        }
        p.push(b'.');
        p
    }

    #[test]
    fn deep_nesting_is_refused_by_either_route() {
        assert!(check_pickle(&nested_lists(50), 100).is_ok());
        let e = check_pickle(&nested_lists(200_000), 100)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nest more than 100 deep"), "{e}");
        assert!(check_pickle(&nested_through_memo(50), 100).is_ok());
        let e = check_pickle(&nested_through_memo(100_000), 100)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nest"), "{e}");
    }

    #[test]
    fn truncated_and_self_holding_pickles_are_refused() {
        let e = check_pickle(&[0x80, 2, b'X', 9, 0, 0, 0, b'a'], 100)
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = check_pickle(&[0x80, 2, b']'], 100).unwrap_err().to_string();
        assert!(e.contains("STOP"), "{e}");
        // A list appended to itself.
        let e = check_pickle(&[0x80, 2, b']', 0x94, b'h', 0, b'a', b'.'], 100)
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds itself"), "{e}");
        let e = check_pickle(&[0x80, 2, 0xff, b'.'], 100)
            .unwrap_err()
            .to_string();
        assert!(e.contains("0xff"), "{e}");
    }
}
