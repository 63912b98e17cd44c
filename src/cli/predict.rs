//! `msa predict`: masks from a user's clicks and box, no ground truth anywhere.

use super::ModelArgs;
use crate::infer::{Prediction, Predictor};
use crate::io::image::{load_rgb, overlay, save_mask};
use crate::io::prompt::UserPrompt;
use crate::model::MaskSelection;
use crate::weights::save_safetensors;
use anyhow::{bail, Context, Result};
use image::RgbImage;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// PNG, JPEG or TIFF; 8 or 16 bit; gray or RGB.
    #[arg(long)]
    pub image: PathBuf,
    /// A click `x,y[,label]` in original-image pixels; label 1 (default) or 0 for background.
    #[arg(long = "point", value_parser = parse_point)]
    pub points: Vec<(f32, f32, i64)>,
    /// A box `x0,y0,x1,y1` in original-image pixels.
    #[arg(long = "box", value_parser = parse_box)]
    pub bbox: Option<[f32; 4]>,
    /// A prompt file, as `msa serve`'s page saves it: `{"points": [[x, y, label], ...],
    /// "box": [x0, y0, x1, y1] or null}`; --point and --box add to it.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Return SAM's three candidate masks instead of one.
    #[arg(long, conflicts_with = "classes")]
    pub multimask: bool,
    /// One mask per class from the first N mask tokens (adapters trained on N classes,
    /// e.g. 2 for REFUGE's disc and cup); files are `NAME_<class>.png`.
    #[arg(long)]
    pub classes: Option<usize>,
    /// Mask PNG (0/255) at the original size; with --multimask, `NAME_<i>.png` per mask.
    #[arg(long)]
    pub out: PathBuf,
    /// The image with the mask drawn on it (the best-scoring mask with --multimask).
    #[arg(long)]
    pub overlay: Option<PathBuf>,
    /// Safetensors with `low_res_logits`, `iou` and `masks_logits` (float32).
    #[arg(long)]
    pub logits: Option<PathBuf>,
}

pub fn parse_point(s: &str) -> Result<(f32, f32, i64), String> {
    let v: Vec<&str> = s.split(',').map(str::trim).collect();
    let num = |t: &str| {
        t.parse::<f32>()
            .map_err(|_| format!("`{t}` in point `{s}` is not a number"))
    };
    match v.as_slice() {
        [x, y] => Ok((num(x)?, num(y)?, 1)),
        [x, y, l] => {
            let label = l
                .parse::<i64>()
                .map_err(|_| format!("label `{l}` in point `{s}` is not an integer"))?;
            if label != 0 && label != 1 {
                return Err(format!(
                    "label in point `{s}` must be 1 (foreground) or 0 (background)"
                ));
            }
            Ok((num(x)?, num(y)?, label))
        }
        _ => Err(format!("point `{s}` must be `x,y` or `x,y,label`")),
    }
}

pub fn parse_box(s: &str) -> Result<[f32; 4], String> {
    let v: Vec<f32> = s
        .split(',')
        .map(|t| {
            t.trim()
                .parse::<f32>()
                .map_err(|_| format!("`{t}` in box `{s}` is not a number"))
        })
        .collect::<Result<_, _>>()?;
    match v.as_slice() {
        [x0, y0, x1, y1] if x1 > x0 && y1 > y0 => Ok([*x0, *y0, *x1, *y1]),
        [_, _, _, _] => Err(format!("box `{s}` must have x0 < x1 and y0 < y1")),
        _ => Err(format!("box `{s}` must be `x0,y0,x1,y1`")),
    }
}

pub fn run(args: &PredictArgs) -> Result<()> {
    let device = crate::runtime::device::default_device()?;
    let loaded = args.model.load(&device)?;
    super::warn_unused_depth(&loaded.sam, "a 2D image");
    let img = load_rgb(&args.image)?;
    let mut prompt = match &args.prompts {
        Some(path) => crate::io::prompt::PromptFile::load(path)?,
        None => UserPrompt::default(),
    };
    prompt.points.extend(args.points.iter().copied());
    if args.bbox.is_some() {
        prompt.bbox = args.bbox;
    }
    if prompt.points.is_empty() && prompt.bbox.is_none() {
        bail!("no prompt: give --point, --box or --prompts");
    }
    let files = Outputs {
        mask: args.out.clone(),
        overlay: args.overlay.clone(),
        logits: args.logits.clone(),
    };
    let tokens = loaded.sam.config.num_mask_tokens();
    let selection = match args.classes {
        Some(n) if n == 0 || n > tokens => {
            bail!("--classes {n}: this model has {tokens} mask tokens, so 1 to {tokens} classes")
        }
        Some(n) => MaskSelection::Classes(n),
        None => MaskSelection::Sam {
            multimask: args.multimask,
        },
    };
    predict_and_write(&loaded.sam, &img, &prompt, selection, &files)?;
    Ok(())
}

pub struct Outputs {
    pub mask: PathBuf,
    pub overlay: Option<PathBuf>,
    pub logits: Option<PathBuf>,
}

/// Runs one prompt set and writes masks, overlay and logits; prints each mask's IoU.
pub fn predict_and_write(
    sam: &crate::model::Sam,
    img: &RgbImage,
    prompt: &UserPrompt,
    selection: MaskSelection,
    files: &Outputs,
) -> Result<Prediction> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    prompt.check_inside(w, h)?;
    let mut predictor = Predictor::new(sam);
    predictor.set_image(img)?;
    let mut preds = predictor.predict_selected(std::slice::from_ref(prompt), selection)?;
    let pred = preds.remove(0);
    let ious = pred.iou_values()?;
    let paths = mask_paths(&files.mask, ious.len());
    for (m, path) in paths.iter().enumerate() {
        ensure_parent(path)?;
        save_mask(&pred.binary_mask(m)?, w, h, path)?;
        println!(
            "mask {m}: predicted IoU {:.4} -> {}",
            ious[m],
            path.display()
        );
    }
    if let Some(path) = &files.overlay {
        let best = (0..ious.len())
            .max_by(|&a, &b| ious[a].total_cmp(&ious[b]))
            .unwrap_or(0);
        ensure_parent(path)?;
        overlay(img, &pred.binary_mask(best)?, [255, 40, 40])
            .save(path)
            .with_context(|| format!("cannot write overlay {}", path.display()))?;
        println!("overlay (mask {best}) -> {}", path.display());
    }
    if let Some(path) = &files.logits {
        ensure_parent(path)?;
        write_logits(path, &pred)?;
        println!("logits -> {}", path.display());
    }
    Ok(pred)
}

/// `mask.png` for one mask; `mask_0.png`, `mask_1.png`, ... for several.
pub fn mask_paths(out: &Path, n: usize) -> Vec<PathBuf> {
    if n == 1 {
        return vec![out.to_path_buf()];
    }
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "mask".into());
    let ext = out
        .extension()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "png".into());
    (0..n)
        .map(|i| out.with_file_name(format!("{stem}_{i}.{ext}")))
        .collect()
}

fn ensure_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(())
}

/// (N=1, M, ...) tensors as the `--logits` contract gives them.
fn write_logits(path: &Path, pred: &Prediction) -> Result<()> {
    let mut t = BTreeMap::new();
    t.insert(
        "low_res_logits".to_string(),
        pred.low_res_logits.unsqueeze(0)?,
    );
    t.insert("iou".to_string(), pred.iou.unsqueeze(0)?);
    t.insert("masks_logits".to_string(), pred.masks_logits.unsqueeze(0)?);
    let mut meta = HashMap::new();
    meta.insert(
        "producer".to_string(),
        format!("msa {}", env!("CARGO_PKG_VERSION")),
    );
    save_safetensors(path, &t, Some(meta))
}
