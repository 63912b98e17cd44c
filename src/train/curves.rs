//! `curves.png`: training loss and validation Dice against epochs.

use crate::io::atomic::write_atomically;
use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSansMono.ttf");

/// Makes the embedded font available to plotters as "sans-serif".
pub(crate) fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded font always parses; a failure would only leave the text out.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// One row of metrics.csv.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_dice: Option<f64>,
    pub val_iou: Option<f64>,
}

const SIZE: (u32, u32) = (1000, 420);

/// Two panels side by side: loss per epoch, and validation Dice/IoU where measured. Written
/// through a temporary file, so a killed run never leaves half a picture.
pub fn plot(path: &Path, rows: &[EpochMetrics]) -> Result<()> {
    let mut rgb = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    draw(&mut rgb, rows)?;
    let img = image::RgbImage::from_raw(SIZE.0, SIZE.1, rgb)
        .context("the plot buffer has the picture's size")?;
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png)?;
    write_atomically(path, png.get_ref())
}

fn draw(rgb: &mut [u8], rows: &[EpochMetrics]) -> Result<()> {
    register_font();
    let root = BitMapBackend::with_buffer(rgb, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(500);
    let max_epoch = rows.iter().map(|r| r.epoch).max().unwrap_or(1).max(1) as f64;
    let max_loss = rows
        .iter()
        .map(|r| r.train_loss)
        .fold(0.0, f64::max)
        .max(1e-6)
        * 1.1;
    let mut loss = ChartBuilder::on(&left)
        .caption("training loss", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..max_epoch, 0.0..max_loss)
        .map_err(|e| anyhow!("{e}"))?;
    loss.configure_mesh()
        .x_desc("epoch")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    loss.draw_series(LineSeries::new(
        rows.iter().map(|r| (r.epoch as f64, r.train_loss)),
        &BLUE,
    ))
    .map_err(|e| anyhow!("{e}"))?;
    let mut dice = ChartBuilder::on(&right)
        .caption("validation", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0.0..max_epoch, 0.0..1.0)
        .map_err(|e| anyhow!("{e}"))?;
    dice.configure_mesh()
        .x_desc("epoch")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let series = |f: fn(&EpochMetrics) -> Option<f64>| -> Vec<(f64, f64)> {
        rows.iter()
            .filter_map(|r| f(r).map(|v| (r.epoch as f64, v)))
            .collect()
    };
    dice.draw_series(LineSeries::new(series(|r| r.val_dice), &RED))
        .map_err(|e| anyhow!("{e}"))?
        .label("Dice")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    dice.draw_series(LineSeries::new(series(|r| r.val_iou), &GREEN))
        .map_err(|e| anyhow!("{e}"))?
        .label("IoU")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    dice.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
