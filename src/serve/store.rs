//! Uploaded images and volumes, held in memory only: at most `max_images` of them (the
//! least recently used goes first), each dropped after `ttl` without use, each with the
//! embeddings computed for it so far.

use crate::infer::Embedded;
use crate::io::dicom::SeriesSource;
use crate::io::nifti::NiftiVolume;
use crate::io::orientation::Reorientation;
use crate::io::volume::slice_image;
use image::RgbImage;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub enum Content {
    Image(RgbImage),
    Volume {
        /// The volume in the canonical frame of axial slices: what is shown and segmented.
        volume: Box<NiftiVolume>,
        /// Intensity range mapped to 0..255 for the model and the display.
        range: (f32, f32),
        intensity: String,
        /// How the upload's grid turned into `volume`'s; downloads are turned back.
        turn: Reorientation,
        /// The upload's own grid (its header and geometry; no voxels kept).
        grid: Box<NiftiVolume>,
        /// For a DICOM upload, its files and where its slices came from (for DICOM SEG).
        dicom: Option<Box<DicomUpload>>,
    },
}

/// An uploaded DICOM series, its files kept while the upload is.
pub struct DicomUpload {
    pub files: tempfile::TempDir,
    pub source: SeriesSource,
}

impl Content {
    /// (width, height, slices); a volume's slice k is `data[:, :, k]`, x along its width.
    pub fn size(&self) -> (usize, usize, usize) {
        match self {
            Content::Image(img) => (img.width() as usize, img.height() as usize, 1),
            Content::Volume { volume, .. } => {
                let [nx, ny, nz] = volume.volume.dims;
                (nx, ny, nz)
            }
        }
    }

    /// Slice k as the 8-bit RGB image the model sees (the image itself in 2D).
    pub fn slice_rgb(&self, k: usize) -> anyhow::Result<RgbImage> {
        match self {
            Content::Image(img) => Ok(img.clone()),
            Content::Volume { volume, range, .. } => slice_image(&volume.volume, k, *range),
        }
    }
}

pub struct ImageEntry {
    pub content: Content,
    embeddings: HashMap<(String, usize), Embedded>,
    order: VecDeque<(String, usize)>,
    max_embeddings: usize,
    /// The last propagated label volume (x-fastest, as the volume's data).
    pub labels: Option<Vec<u8>>,
}

impl ImageEntry {
    pub fn embedding(&self, model: &str, slice: usize) -> Option<Embedded> {
        self.embeddings.get(&(model.to_string(), slice)).cloned()
    }

    /// Keeps an embedding, dropping the oldest beyond the per-image bound.
    pub fn keep_embedding(&mut self, model: &str, slice: usize, e: Embedded) {
        let key = (model.to_string(), slice);
        if self.embeddings.insert(key.clone(), e).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > self.max_embeddings {
            if let Some(old) = self.order.pop_front() {
                self.embeddings.remove(&old);
            }
        }
    }
}

struct Slot {
    entry: Arc<Mutex<ImageEntry>>,
    last_used: Instant,
}

pub struct ImageStore {
    slots: Mutex<HashMap<String, Slot>>,
    max_images: usize,
    max_embeddings: usize,
    ttl: Duration,
    counter: AtomicU64,
}

impl ImageStore {
    pub fn new(max_images: usize, max_embeddings: usize, ttl: Duration) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            max_images: max_images.max(1),
            max_embeddings: max_embeddings.max(1),
            ttl,
            counter: AtomicU64::new(0),
        }
    }

    /// Stores `content` under a new id, dropping the least recently used beyond the bound.
    pub fn insert(&self, content: Content) -> String {
        let id = self.new_id();
        let entry = ImageEntry {
            content,
            embeddings: HashMap::new(),
            order: VecDeque::new(),
            max_embeddings: self.max_embeddings,
            labels: None,
        };
        let mut slots = self.lock();
        while slots.len() >= self.max_images {
            let oldest = slots
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => slots.remove(&k),
                None => break,
            };
        }
        slots.insert(
            id.clone(),
            Slot {
                entry: Arc::new(Mutex::new(entry)),
                last_used: Instant::now(),
            },
        );
        id
    }

    /// The entry under `id`, marked as used now.
    pub fn get(&self, id: &str) -> Option<Arc<Mutex<ImageEntry>>> {
        let mut slots = self.lock();
        let slot = slots.get_mut(id)?;
        slot.last_used = Instant::now();
        Some(slot.entry.clone())
    }

    pub fn remove(&self, id: &str) -> bool {
        self.lock().remove(id).is_some()
    }

    /// Drops entries unused for longer than the time-out; returns how many.
    pub fn expire(&self) -> usize {
        let mut slots = self.lock();
        let before = slots.len();
        slots.retain(|_, s| s.last_used.elapsed() < self.ttl);
        before - slots.len()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A map poisoned by a panicking request is still consistent (every change above is
    /// a single insert or remove), so it is used as it is.
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// 16 hex digits that a client cannot guess from other ids.
    fn new_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut h = Sha256::new();
        h.update(n.to_le_bytes());
        h.update(std::process::id().to_le_bytes());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        h.update(now.as_nanos().to_le_bytes());
        h.update((self as *const Self as usize).to_le_bytes());
        h.finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Locks an entry; one poisoned by a panic is still usable (its parts are replaced whole).
pub fn lock_entry(entry: &Mutex<ImageEntry>) -> MutexGuard<'_, ImageEntry> {
    entry.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Content {
        Content::Image(RgbImage::new(4, 3))
    }

    #[test]
    fn the_least_recently_used_image_goes_first() {
        let store = ImageStore::new(2, 4, Duration::from_secs(60));
        let a = store.insert(image());
        std::thread::sleep(Duration::from_millis(2));
        let b = store.insert(image());
        std::thread::sleep(Duration::from_millis(2));
        assert!(store.get(&a).is_some());
        let c = store.insert(image());
        assert!(store.get(&b).is_none(), "b was least recently used");
        assert!(store.get(&a).is_some() && store.get(&c).is_some());
        assert_ne!(a, c);
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn idle_images_expire() {
        let store = ImageStore::new(4, 4, Duration::from_millis(20));
        store.insert(image());
        assert_eq!(store.expire(), 0);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(store.expire(), 1);
        assert!(store.is_empty());
    }
}
