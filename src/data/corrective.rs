//! Corrective clicks (MSA-SPEC 3.1a): where the next click goes once a prediction is
//! compared with its target. Training simulates a user's corrections with it, and
//! `msa eval --clicks` places its clicks by the same rule.
#![allow(
    clippy::indexing_slicing,
    reason = "every public function checks that its masks hold width x height pixels; the \
              indices below stay under that, and the envelope's under its line's length + 1"
)]

/// The next click as (x, y, label): at the point of the largest error region farthest from
/// that region's border. Label 1 where the target was missed, 0 where the prediction spills
/// over it. None when prediction and target agree everywhere.
///
/// `pred` and `target` are row-major, `width` x `height`; the image border counts as the
/// region's border. Ties go to the first pixel in row-major order, so the click is a
/// function of the two masks alone.
pub fn next_click(
    pred: &[bool],
    target: &[bool],
    width: usize,
    height: usize,
) -> Option<(f32, f32, i64)> {
    if pred.len() != width * height || target.len() != width * height {
        return None;
    }
    let missed: Vec<bool> = pred.iter().zip(target).map(|(&p, &t)| t && !p).collect();
    let spilled: Vec<bool> = pred.iter().zip(target).map(|(&p, &t)| p && !t).collect();
    let a = largest_region(&missed, width, height);
    let b = largest_region(&spilled, width, height);
    let (region, label) = match (a, b) {
        (None, None) => return None,
        (Some(a), None) => (a, 1),
        (None, Some(b)) => (b, 0),
        (Some(a), Some(b)) => {
            match a.iter().filter(|&&x| x).count() >= b.iter().filter(|&&x| x).count() {
                true => (a, 1),
                false => (b, 0),
            }
        }
    };
    let dist = squared_distance_to_outside(&region, width, height);
    let mut best = 0;
    for (i, &d) in dist.iter().enumerate() {
        if d > dist[best] {
            best = i;
        }
    }
    Some(((best % width) as f32, (best / width) as f32, label))
}

/// The largest 4-connected region of `mask` (the first found among equals); None if empty.
pub fn largest_region(mask: &[bool], width: usize, height: usize) -> Option<Vec<bool>> {
    if mask.len() != width * height {
        return None;
    }
    let mut label = vec![0u32; mask.len()];
    let mut best: Option<(u32, usize)> = None;
    let mut next = 0u32;
    let mut stack = vec![];
    for start in 0..mask.len() {
        if !mask[start] || label[start] != 0 {
            continue;
        }
        next += 1;
        label[start] = next;
        stack.push(start);
        let mut size = 0;
        while let Some(i) = stack.pop() {
            size += 1;
            let (x, y) = (i % width, i / width);
            let neighbours = [
                (x > 0).then(|| i - 1),
                (x + 1 < width).then(|| i + 1),
                (y > 0).then(|| i - width),
                (y + 1 < height).then(|| i + width),
            ];
            for j in neighbours.into_iter().flatten() {
                if mask[j] && label[j] == 0 {
                    label[j] = next;
                    stack.push(j);
                }
            }
        }
        if best.is_none_or(|(_, s)| size > s) {
            best = Some((next, size));
        }
    }
    let (keep, _) = best?;
    Some(label.iter().map(|&l| l == keep).collect())
}

/// For each pixel of `region`, the squared Euclidean distance to the nearest pixel outside
/// it, the image's surroundings counting as outside; 0 outside. Exact: one pass of the
/// lower envelope of parabolas (Felzenszwalb and Huttenlocher) down the columns, one along
/// the rows.
pub fn squared_distance_to_outside(region: &[bool], width: usize, height: usize) -> Vec<f64> {
    if region.len() != width * height {
        return vec![0.0; region.len()];
    }
    // The first and last index of each line lie next to the outside.
    let far = ((width + height + 2) * (width + height + 2)) as f64;
    let mut d: Vec<f64> = region.iter().map(|&r| if r { far } else { 0.0 }).collect();
    let mut line = vec![];
    for x in 0..width {
        line.clear();
        line.push(0.0);
        line.extend((0..height).map(|y| d[y * width + x]));
        line.push(0.0);
        let t = lower_envelope(&line);
        for y in 0..height {
            d[y * width + x] = t[y + 1];
        }
    }
    for y in 0..height {
        line.clear();
        line.push(0.0);
        line.extend_from_slice(&d[y * width..(y + 1) * width]);
        line.push(0.0);
        let t = lower_envelope(&line);
        d[y * width..(y + 1) * width].copy_from_slice(&t[1..=width]);
    }
    d
}

/// min over q of (p - q)^2 + f(q), for every p (the 1D squared distance transform).
fn lower_envelope(f: &[f64]) -> Vec<f64> {
    let n = f.len();
    let mut out = vec![0.0; n];
    let mut v = vec![0usize; n];
    let mut z = vec![0.0f64; n + 1];
    let mut k = 0;
    z[0] = f64::NEG_INFINITY;
    z[1] = f64::INFINITY;
    let meet = |q: usize, r: usize| -> f64 {
        let (q, r) = (q as f64, r as f64);
        ((f[q as usize] + q * q) - (f[r as usize] + r * r)) / (2.0 * (q - r))
    };
    for q in 1..n {
        let mut s = meet(q, v[k]);
        while s <= z[k] {
            k -= 1;
            s = meet(q, v[k]);
        }
        k += 1;
        v[k] = q;
        z[k] = s;
        z[k + 1] = f64::INFINITY;
    }
    k = 0;
    for (p, o) in out.iter_mut().enumerate() {
        while z[k + 1] < p as f64 {
            k += 1;
        }
        let d = p as f64 - v[k] as f64;
        *o = d * d + f[v[k]];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect(w: usize, h: usize, x0: usize, y0: usize, x1: usize, y1: usize) -> Vec<bool> {
        (0..w * h)
            .map(|i| (x0..x1).contains(&(i % w)) && (y0..y1).contains(&(i / w)))
            .collect()
    }

    #[test]
    fn distance_matches_brute_force() {
        let (w, h) = (13, 9);
        let region: Vec<bool> = (0..w * h).map(|i| (i * 7 + i / 5) % 4 != 0).collect();
        let d = squared_distance_to_outside(&region, w, h);
        for i in 0..w * h {
            let (x, y) = ((i % w) as i64, (i / w) as i64);
            let mut best = i64::MAX;
            // Outside: pixels not in the region, and the ring just beyond the image.
            for yy in -1..=h as i64 {
                for xx in -1..=w as i64 {
                    let inside = xx >= 0 && yy >= 0 && xx < w as i64 && yy < h as i64;
                    if inside && region[(yy as usize) * w + xx as usize] {
                        continue;
                    }
                    best = best.min((xx - x).pow(2) + (yy - y).pow(2));
                }
            }
            let want = if region[i] { best as f64 } else { 0.0 };
            assert_eq!(d[i], want, "pixel ({x}, {y})");
        }
    }

    #[test]
    fn click_goes_to_the_middle_of_the_larger_error() {
        let (w, h) = (40, 30);
        let target = rect(w, h, 5, 5, 25, 25);
        // The prediction misses the target's right half and spills a small patch.
        let mut pred = rect(w, h, 5, 5, 15, 25);
        for i in rect(w, h, 30, 2, 33, 5)
            .iter()
            .enumerate()
            .filter(|(_, &v)| v)
        {
            pred[i.0] = true;
        }
        let (x, y, label) = next_click(&pred, &target, w, h).unwrap();
        assert_eq!(label, 1);
        // The missed strip is 10 px wide: its deepest points lie on its middle columns,
        // and the first of them in row-major order wins.
        assert_eq!((x, y), (19.0, 9.0));
        // Over-segmentation only: a negative click inside the spill.
        let spill = rect(w, h, 0, 0, 40, 30);
        let (x, y, label) = next_click(&spill, &target, w, h).unwrap();
        assert_eq!(label, 0);
        assert!(!target[y as usize * w + x as usize]);
        assert_eq!(next_click(&target, &target, w, h), None);
    }

    #[test]
    fn largest_region_is_four_connected() {
        let (w, h) = (5, 5);
        let mut m = vec![false; 25];
        // A diagonal pair (two regions under 4-connectivity) and a run of three.
        m[0] = true;
        m[6] = true;
        m[20] = true;
        m[21] = true;
        m[22] = true;
        let r = largest_region(&m, w, h).unwrap();
        assert_eq!(r.iter().filter(|&&v| v).count(), 3);
        assert!(r[21] && !r[0]);
        assert!(largest_region(&[false; 4], 2, 2).is_none());
    }
}
