//! Vectors on the bottom floor: norms, unit vectors, and the one distance
//! every answer reports.
//!
//! **Distance** (image results, words, tags, `--max-distance`): the angular
//! distance between unit vectors, `sqrt(2 - 2 cos)` — their Euclidean
//! distance: 0 for the same direction, `sqrt(2)` (1.414) for unrelated
//! (orthogonal) ones, 2 for opposite ones. The page shows it as the cosine
//! similarity people read, `1 - d² / 2`, as a percentage.

/// Euclidean norm.
pub fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// Scales `v` to unit length in place and returns its former norm; a zero
/// vector stays zero.
pub fn normalize(v: &mut [f32]) -> f32 {
    let n = norm(v);
    if n > 0.0 {
        let inv = 1.0 / n;
        v.iter_mut().for_each(|x| *x *= inv);
    }
    n
}

/// `v` at unit length (zero stays zero).
pub fn unit(v: &[f32]) -> Vec<f32> {
    let mut u = v.to_vec();
    normalize(&mut u);
    u
}

/// The distance for a cosine similarity: `sqrt(2 - 2 cos)`. A damaged
/// vector (NaN) is as far as can be, never "identical".
///
/// A cosine within the f32 rounding of a 1280-d dot product of 1 is the
/// same direction, distance 0: the square root would blow that rounding up
/// (a unit vector's dot with itself can come out at `1 - 6e-7`, distance
/// 0.0011, for an image searched with itself).
pub fn distance(cos: f32) -> f32 {
    if cos.is_nan() {
        return f32::INFINITY;
    }
    let gap = 2.0 - 2.0 * cos;
    if gap < SAME_DIRECTION {
        return 0.0;
    }
    gap.sqrt()
}

/// `2 - 2 cos` below this is rounding, not an angle: `cos` within 2e-6 of 1
/// (distances under 0.002).
const SAME_DIRECTION: f32 = 4e-6;

/// The cosine similarity a [`distance`] stands for.
pub fn similarity(distance: f32) -> f32 {
    1.0 - distance * distance / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_and_similarity_invert_each_other() {
        assert_eq!(distance(1.0), 0.0);
        assert_eq!(distance(1.0 - 6e-7), 0.0, "a dot product's rounding is no angle");
        assert!(distance(0.99999) > 0.004, "a real angle is kept");
        assert!((distance(0.0) - 2f32.sqrt()).abs() < 1e-6);
        assert_eq!(distance(-1.0), 2.0);
        assert_eq!(distance(f32::NAN), f32::INFINITY);
        for cos in [-0.9f32, -0.2, 0.0, 0.3, 0.77, 0.999] {
            assert!((similarity(distance(cos)) - cos).abs() < 1e-5, "{cos}");
        }
    }

    #[test]
    fn unit_vectors_have_length_one_and_zero_stays_zero() {
        let mut v = vec![3.0, 4.0];
        assert_eq!(normalize(&mut v), 5.0);
        assert_eq!(v, [0.6, 0.8]);
        assert_eq!(unit(&[0.0, 0.0]), [0.0, 0.0]);
        assert!((norm(&unit(&[1.0, 2.0, 3.0])) - 1.0).abs() < 1e-6);
    }
}
