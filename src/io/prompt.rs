//! Prompts as a user gives them, in original-image pixels, and the JSON prompt file that
//! `msa predict --prompts` reads and the server's page saves.

use anyhow::{bail, Result};

/// Prompts in original-image pixels, as a user gives them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserPrompt {
    /// (x, y, label): label 1 foreground, 0 background.
    pub points: Vec<(f32, f32, i64)>,
    /// x0, y0, x1, y1.
    pub bbox: Option<[f32; 4]>,
}

impl UserPrompt {
    /// A prompt from `[x, y, label]` points and an optional box as JSON gives them, with
    /// labels and box corners checked.
    pub fn from_parts(points: &[[f32; 3]], bbox: Option<[f32; 4]>) -> Result<Self> {
        let mut out = Vec::with_capacity(points.len());
        for &[x, y, l] in points {
            if l != 0.0 && l != 1.0 {
                bail!(
                    "point ({x}, {y}) has label {l}; labels are 1 (foreground) or 0 (background)"
                );
            }
            out.push((x, y, l as i64));
        }
        if let Some([x0, y0, x1, y1]) = bbox {
            if !(x1 > x0 && y1 > y0) {
                bail!("box ({x0}, {y0}, {x1}, {y1}) needs x0 < x1 and y0 < y1");
            }
        }
        Ok(Self { points: out, bbox })
    }

    /// Points and boxes must lie on the w x h image: an outside click is almost always
    /// swapped x/y.
    pub fn check_inside(&self, w: usize, h: usize) -> Result<()> {
        let inside = |x: f32, y: f32| x >= 0.0 && y >= 0.0 && x <= w as f32 && y <= h as f32;
        for &(x, y, _) in &self.points {
            if !inside(x, y) {
                bail!(
                    "point ({x}, {y}) lies outside the {w}x{h} image (points are x,y: column, row)"
                );
            }
        }
        if let Some([x0, y0, x1, y1]) = self.bbox {
            if !inside(x0, y0) || !inside(x1, y1) {
                bail!("box ({x0}, {y0}, {x1}, {y1}) reaches outside the {w}x{h} image");
            }
        }
        Ok(())
    }
}

/// `{"points": [[x, y, label], ...], "box": [x0, y0, x1, y1] or null}` in original-image
/// pixels: the prompt file `msa predict --prompts` reads and the server's page saves.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PromptFile {
    #[serde(default)]
    pub points: Vec<[f32; 3]>,
    #[serde(default, rename = "box")]
    pub bbox: Option<[f32; 4]>,
}

impl PromptFile {
    pub fn load(path: &std::path::Path) -> Result<UserPrompt> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read prompts {}", path.display()))?;
        let file: Self = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: expected {{\"points\": [[x, y, label], ...], \"box\": [x0, y0, x1, y1] or null}}",
                path.display()
            )
        })?;
        UserPrompt::from_parts(&file.points, file.bbox)
            .with_context(|| format!("prompts {}", path.display()))
    }
}
