//! Raw CT and MRI values to the 0..255 gray levels SAM expects (MSA-SPEC 1.4): CT is
//! windowed in Hounsfield units, MRI is scaled per volume between two percentiles.

use super::volume::Volume;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// How a volume's values become gray levels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Intensity {
    /// Clip to [lo, hi] (CT, in HU) and scale to 0..255.
    Window { lo: f32, hi: f32 },
    /// Clip to the volume's lo-th and hi-th percentiles and scale to 0..255 (MRI).
    Percentiles { lo: f32, hi: f32 },
}

/// Named CT windows: (name, lower HU, upper HU), i.e. level -/+ width / 2.
pub const CT_WINDOWS: &[(&str, f32, f32)] = &[
    ("abdomen", -160.0, 240.0),
    ("lung", -1350.0, 150.0),
    ("bone", -500.0, 1300.0),
    ("brain", 0.0, 80.0),
];

/// Below this minimum a volume without a stated modality is taken for CT (air is -1000 HU).
const CT_MINIMUM: f32 = -500.0;

impl Intensity {
    /// MRI scaling: the 0.5th and 99.5th percentiles.
    pub const MRI: Intensity = Intensity::Percentiles { lo: 0.5, hi: 99.5 };
    /// The CT default: the abdomen window.
    pub const CT: Intensity = Intensity::Window {
        lo: -160.0,
        hi: 240.0,
    };

    /// `LO,HI` (a CT window in HU), a window name (`abdomen`, `lung`, `bone`, `brain`),
    /// or `mri` (percentile scaling).
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("mri") {
            return Ok(Self::MRI);
        }
        if let Some(&(_, lo, hi)) = CT_WINDOWS
            .iter()
            .find(|(n, _, _)| n.eq_ignore_ascii_case(s))
        {
            return Ok(Self::Window { lo, hi });
        }
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        if let [lo, hi] = parts[..] {
            if let (Ok(lo), Ok(hi)) = (lo.parse::<f32>(), hi.parse::<f32>()) {
                if lo < hi {
                    return Ok(Self::Window { lo, hi });
                }
                bail!("window `{s}`: the lower bound must be below the upper one");
            }
        }
        let names: Vec<&str> = CT_WINDOWS.iter().map(|(n, _, _)| *n).collect();
        bail!(
            "window `{s}`: expected LO,HI in HU (e.g. -160,240), one of {}, or mri",
            names.join(", ")
        )
    }

    /// The default for a volume: CT or MRI as `modality` (from dataset.json) names it,
    /// else CT when the volume's minimum is below -500, else MRI scaling. Returns the
    /// choice and why, to print and record.
    pub fn choose(modality: Option<&str>, vol: &Volume) -> (Self, String) {
        if let Some(m) = modality {
            return Self::for_modality(m);
        }
        let (min, _) = vol.min_max();
        if min < CT_MINIMUM {
            let why =
                format!("no modality given and minimum {min} < {CT_MINIMUM}: CT abdomen window");
            (Self::CT, why)
        } else {
            let why = format!(
                "no modality given and minimum {min} >= {CT_MINIMUM}: MRI percentile scaling"
            );
            (Self::MRI, why)
        }
    }

    /// The default for a modality named in dataset.json (`CT`, else MRI scaling), and why.
    pub fn for_modality(m: &str) -> (Self, String) {
        if m.trim().eq_ignore_ascii_case("ct") {
            (
                Self::CT,
                format!("modality `{m}` in dataset.json: CT abdomen window"),
            )
        } else {
            (
                Self::MRI,
                format!("modality `{m}` in dataset.json: MRI percentile scaling"),
            )
        }
    }

    /// The values mapped to 0 and 255 for this volume.
    pub fn range(&self, vol: &Volume) -> (f32, f32) {
        match *self {
            Self::Window { lo, hi } => (lo, hi),
            Self::Percentiles { lo, hi } => {
                let values: Vec<f32> = vol.data.iter().copied().filter(|v| v.is_finite()).collect();
                percentiles(values, lo, hi)
            }
        }
    }

    /// Gray levels of `values` for the range (lo, hi): clipped, scaled, rounded.
    pub fn to_gray(values: &[f32], (lo, hi): (f32, f32)) -> Vec<u8> {
        let span = (hi - lo).max(f32::EPSILON);
        values
            .iter()
            .map(|&v| {
                let t = if v.is_finite() { (v - lo) / span } else { 0.0 };
                (t.clamp(0.0, 1.0) * 255.0).round() as u8
            })
            .collect()
    }
}

/// The p-th and q-th percentiles (0..100) with linear interpolation between order
/// statistics, as numpy's default.
fn percentiles(mut v: Vec<f32>, p: f32, q: f32) -> (f32, f32) {
    (percentile(&mut v, p), percentile(&mut v, q))
}

fn percentile(v: &mut [f32], p: f32) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    let pos = p.clamp(0.0, 100.0) as f64 / 100.0 * (v.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos - pos.floor());
    let (_, &mut below, upper) = v.select_nth_unstable_by(i, f32::total_cmp);
    if frac == 0.0 || upper.is_empty() {
        return below;
    }
    let above = upper.iter().copied().fold(f32::INFINITY, f32::min);
    (below as f64 + frac * (above - below) as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v: Vec<f32> = (0..11).map(|i| i as f32 * 10.0).collect();
        // numpy.percentile(arange(0, 110, 10), [0.5, 99.5, 50]) = 0.5, 99.5, 50
        let (lo, hi) = percentiles(v.clone(), 0.5, 99.5);
        assert!(
            (lo - 0.5).abs() < 1e-5 && (hi - 99.5).abs() < 1e-4,
            "{lo} {hi}"
        );
        assert_eq!(percentiles(v, 50.0, 100.0), (50.0, 100.0));
    }

    #[test]
    fn windows_parse_by_value_and_name() {
        assert_eq!(Intensity::parse("-160,240").unwrap(), Intensity::CT);
        assert_eq!(
            Intensity::parse("Lung").unwrap(),
            Intensity::Window {
                lo: -1350.0,
                hi: 150.0
            }
        );
        assert_eq!(Intensity::parse("mri").unwrap(), Intensity::MRI);
        let err = Intensity::parse("240,-160").unwrap_err().to_string();
        assert!(err.contains("lower bound"), "{err}");
        let err = Intensity::parse("soft").unwrap_err().to_string();
        assert!(err.contains("abdomen") && err.contains("-160,240"), "{err}");
    }

    #[test]
    fn gray_levels_clip_and_scale() {
        let g = Intensity::to_gray(
            &[-1000.0, -160.0, 40.0, 240.0, 3000.0, f32::NAN],
            (-160.0, 240.0),
        );
        assert_eq!(g, vec![0, 0, 128, 255, 255, 0]);
    }
}
