//! The parameter store: where model parameters come from while a model is built (named
//! tensors read from a file, zeros, or random values). It sits below the model and knows
//! nothing of checkpoint formats. Every request is checked against the expected shape and recorded, so that keys
//! left over in a checkpoint can be reported and the key set of a preset can be listed.

use crate::resize;
use candle_core::{DType, Device, Result, Tensor, Var};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

/// Named tensors and a label for messages (the file they came from).
pub struct NamedTensors {
    pub label: String,
    pub tensors: BTreeMap<String, Tensor>,
}

impl NamedTensors {
    /// The tensor under `key`, as f32 on `device`.
    pub fn get_f32(&self, key: &str, device: &Device) -> Result<Option<Tensor>> {
        match self.tensors.get(key) {
            None => Ok(None),
            Some(t) => Ok(Some(t.to_dtype(DType::F32)?.to_device(device)?)),
        }
    }
}

pub enum Source {
    Tensors(NamedTensors),
    /// Zeros without allocation (a broadcast scalar): for listing keys and shapes.
    Zeros,
    /// Normal(0, std) values from a seeded generator: for benchmarks and tests.
    Random {
        std: f32,
    },
}

struct Inner {
    source: Source,
    device: Device,
    requested: RefCell<BTreeMap<String, Vec<usize>>>,
    rng: RefCell<u64>,
    /// Trainable tensors (adapters) by key; `Var`s when `train` is set.
    trainable: RefCell<BTreeMap<String, Var>>,
    /// Module buffers (not parameters) by key.
    buffers: RefCell<BTreeMap<String, Tensor>>,
    train: bool,
    /// Every parameter trains (full fine-tuning), not only adapters.
    train_all: bool,
}

/// How a trainable tensor starts when the checkpoint does not hold it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    /// PyTorch's default for nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    Uniform {
        fan_in: usize,
    },
}

/// A handle on a parameter source under a key prefix (`image_encoder.blocks.0.`), reading
/// frozen tensors in the handle's dtype.
#[derive(Clone)]
pub struct Params {
    inner: Rc<Inner>,
    prefix: String,
    /// The dtype frozen tensors are read in (`frozen_in`); f32 unless asked.
    frozen_dtype: DType,
}

/// How a table whose grid differs from the model's is brought to the model's size.
#[derive(Debug, Clone, Copy)]
pub enum Resize {
    /// (1, h, w, C) absolute position embedding: bicubic over (h, w).
    PosEmbed,
    /// (2L-1, C) relative-position table: linear over rows.
    RelPos,
}

impl Params {
    pub fn new(source: Source, device: &Device) -> Self {
        Self::with_options(source, device, false, 0)
    }

    /// `train`: trainable tensors become `Var`s; `seed` drives their initialisation.
    pub fn with_options(source: Source, device: &Device, train: bool, seed: u64) -> Self {
        Self::build(source, device, train, false, seed)
    }

    /// Full fine-tuning: every parameter becomes a trainable `Var`.
    pub fn train_all(source: Source, device: &Device, seed: u64) -> Self {
        Self::build(source, device, true, true, seed)
    }

    fn build(source: Source, device: &Device, train: bool, train_all: bool, seed: u64) -> Self {
        Self {
            inner: Rc::new(Inner {
                source,
                device: device.clone(),
                requested: RefCell::new(BTreeMap::new()),
                rng: RefCell::new(0x9E37_79B9_7F4A_7C15 ^ seed),
                trainable: RefCell::new(BTreeMap::new()),
                buffers: RefCell::new(BTreeMap::new()),
                train,
                train_all,
            }),
            prefix: String::new(),
            frozen_dtype: DType::F32,
        }
    }

    /// A trainable tensor: taken from the checkpoint when it holds the key, else initialised.
    pub fn trainable(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let key = self.key(name);
        let t = if self.has(name) {
            // Read as stored (f32): a trainable tensor never takes the encoder's precision.
            self.get_inner(name, shape, None)?
        } else {
            self.init_tensor(shape, init)?
        };
        let var = Var::from_tensor(&t)?;
        let out = if self.inner.train {
            var.as_tensor().clone()
        } else {
            t
        };
        self.inner.trainable.borrow_mut().insert(key, var);
        Ok(out)
    }

    fn init_tensor(&self, shape: &[usize], init: Init) -> Result<Tensor> {
        let device = &self.inner.device;
        match init {
            Init::Zeros => Tensor::zeros(shape, DType::F32, device),
            Init::Ones => Tensor::ones(shape, DType::F32, device),
            Init::Uniform { fan_in } => {
                let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
                let n: usize = shape.iter().product();
                let mut state = self.inner.rng.borrow_mut();
                let values = (0..n)
                    .map(|_| ((2.0 * splitmix_unit(&mut state) - 1.0) * bound) as f32)
                    .collect();
                Tensor::from_vec(values, shape, device)
            }
        }
    }

    /// Every trainable tensor created so far, by key.
    pub fn trainables(&self) -> BTreeMap<String, Var> {
        self.inner.trainable.borrow().clone()
    }

    pub fn device(&self) -> &Device {
        &self.inner.device
    }

    /// The same source one level down: `p.pp("blocks.0")`.
    pub fn pp(&self, name: &str) -> Self {
        Self {
            inner: self.inner.clone(),
            prefix: format!("{}{name}.", self.prefix),
            frozen_dtype: self.frozen_dtype,
        }
    }

    /// The same handle, reading frozen tensors in `dtype` (the encoder's `--precision`);
    /// trainable tensors stay f32, and under full fine-tuning every tensor trains.
    pub fn frozen_in(&self, dtype: DType) -> Self {
        Self {
            frozen_dtype: self.computes_in(dtype),
            ..self.clone()
        }
    }

    /// The dtype frozen tensors asked to be read in `dtype` are computed in: f32 under full
    /// fine-tuning, where none is frozen.
    pub fn computes_in(&self, dtype: DType) -> DType {
        match self.inner.train_all {
            true => DType::F32,
            false => dtype,
        }
    }

    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn has(&self, name: &str) -> bool {
        match &self.inner.source {
            Source::Tensors(c) => c.tensors.contains_key(&self.key(name)),
            _ => false,
        }
    }

    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.get_inner(name, shape, None)?;
        self.maybe_trainable(name, t)
    }

    /// A frozen tensor in the handle's dtype.
    fn in_frozen_dtype(&self, t: Tensor) -> Result<Tensor> {
        match self.frozen_dtype != t.dtype() {
            true => t.to_dtype(self.frozen_dtype),
            false => Ok(t),
        }
    }

    /// A module buffer in the PyTorch model (not a parameter): never trainable, even under
    /// full fine-tuning.
    pub fn buffer(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.in_frozen_dtype(self.get_inner(name, shape, None)?)?;
        self.inner
            .buffers
            .borrow_mut()
            .insert(self.key(name), t.clone());
        Ok(t)
    }

    /// A buffer that published files carry but that the model does not need (BatchNorm's
    /// `num_batches_tracked`): read when the source has it, listed among the expected keys,
    /// not an error when absent.
    pub fn optional_buffer(&self, name: &str, shape: &[usize]) -> Result<()> {
        if matches!(self.inner.source, Source::Tensors(_)) && !self.has(name) {
            return Ok(());
        }
        self.buffer(name, shape).map(|_| ())
    }

    /// The module buffers read so far, by key: a fully fine-tuned model's file needs them
    /// beside its trained tensors to load on its own.
    pub fn buffers(&self) -> BTreeMap<String, Tensor> {
        self.inner.buffers.borrow().clone()
    }

    /// Like `get`, but a table saved for another grid size is resized to `shape`.
    pub fn get_resized(&self, name: &str, shape: &[usize], how: Resize) -> Result<Tensor> {
        let t = self.get_inner(name, shape, Some(how))?;
        self.maybe_trainable(name, t)
    }

    /// Under full fine-tuning, a SAM weight becomes a `Var` too.
    fn maybe_trainable(&self, name: &str, t: Tensor) -> Result<Tensor> {
        if !self.inner.train_all {
            return self.in_frozen_dtype(t);
        }
        let var = Var::from_tensor(&t.contiguous()?)?;
        let out = var.as_tensor().clone();
        self.inner
            .trainable
            .borrow_mut()
            .insert(self.key(name), var);
        Ok(out)
    }

    fn get_inner(&self, name: &str, shape: &[usize], how: Option<Resize>) -> Result<Tensor> {
        let key = self.key(name);
        self.inner
            .requested
            .borrow_mut()
            .insert(key.clone(), shape.to_vec());
        let device = &self.inner.device;
        match &self.inner.source {
            Source::Zeros => Tensor::zeros((), DType::F32, device)?.broadcast_as(shape),
            Source::Random { std } => {
                let n: usize = shape.iter().product();
                let values = self.normal_values(n, *std);
                Tensor::from_vec(values, shape, device)
            }
            Source::Tensors(ckpt) => {
                let t = ckpt.get_f32(&key, device)?;
                let t = t.ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "{}: missing key `{key}` (expected shape {shape:?})",
                        ckpt.label
                    ))
                })?;
                fit_shape(ckpt, &key, t, shape, how)
            }
        }
    }

    /// Box–Muller over a splitmix64 stream: deterministic, dependency-free.
    fn normal_values(&self, n: usize, std: f32) -> Vec<f32> {
        let mut state = self.inner.rng.borrow_mut();
        let mut next = || splitmix_unit(&mut state);
        (0..n)
            .map(|_| {
                let u1 = next().max(1e-12);
                let u2 = next();
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32 * std
            })
            .collect()
    }

    /// Every key requested so far, with the shape the model expects.
    pub fn requested(&self) -> BTreeMap<String, Vec<usize>> {
        self.inner.requested.borrow().clone()
    }

    /// Checkpoint keys that no part of the model asked for.
    pub fn unused_keys(&self) -> Vec<String> {
        let requested = self.inner.requested.borrow();
        let trainable = self.inner.trainable.borrow();
        match &self.inner.source {
            Source::Tensors(c) => c
                .tensors
                .keys()
                .filter(|k| !requested.contains_key(*k) && !trainable.contains_key(*k))
                .cloned()
                .collect(),
            _ => vec![],
        }
    }

    /// The named tensors the parameters are read from, if that is the source.
    pub fn source_tensors(&self) -> Option<&NamedTensors> {
        match &self.inner.source {
            Source::Tensors(c) => Some(c),
            _ => None,
        }
    }
}

/// Uniform in [0, 1) from a splitmix64 state.
fn splitmix_unit(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

fn fit_shape(
    ckpt: &NamedTensors,
    key: &str,
    t: Tensor,
    shape: &[usize],
    how: Option<Resize>,
) -> Result<Tensor> {
    let found = t.dims().to_vec();
    if found == shape {
        return Ok(t);
    }
    let mismatch = || {
        candle_core::Error::Msg(format!(
            "{}: key `{key}`: expected shape {shape:?}, found {found:?}",
            ckpt.label
        ))
    };
    match how {
        Some(Resize::PosEmbed) if found.len() == 4 && found[0] == 1 && found[3] == shape[3] => {
            resize::pos_embed(&t, shape[1], shape[2])
        }
        Some(Resize::RelPos) if found.len() == 2 && found[1] == shape[1] => {
            resize::rel_pos_table(&t, shape[0])
        }
        _ => Err(mismatch()),
    }
}
