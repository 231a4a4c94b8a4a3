//! The point each backbone's embeddings are measured from.
//!
//! The pooled ReLU6 features of every photo sit in the positive orthant
//! around one common offset; by cosine, that offset makes all photos look
//! alike. The embedding the rest of imgsearch sees is the pooled feature
//! minus its expected value, worked out from the network alone (no photos):
//! the head's batch norm gives each channel's mean and spread over
//! ImageNet, and the mean of a clipped normal follows
//! (`scripts/centre.py`, which writes `assets/centre_<backbone>.f32`).
//! Image->image precision@10 on the Pascal photos: 0.533 → 0.5495 (Lite0,
//! f32; 0.550 bf16), Lite2 0.572 → 0.592 (`imgsearch eval`).
//!
//! Stores written before (embedding version 1, uncentred) are moved by the
//! same vector when a writer opens them ([`crate::store`]); a joint model
//! trained on uncentred features gets it folded into its first layer's bias.

use std::sync::OnceLock;

use super::Backbone;

/// What stores record as the embedding version: 1 was the raw pooled
/// feature, 2 is it minus [`centre`].
pub const EMBEDDING_VERSION: u32 = 2;

const LITE0: &[u8] = include_bytes!("../../assets/centre_lite0.f32");
const LITE2: &[u8] = include_bytes!("../../assets/centre_lite2.f32");

/// The expected pooled feature of `backbone`, subtracted from every embedding.
pub fn centre(backbone: Backbone) -> &'static [f32] {
    static CENTRES: [OnceLock<Vec<f32>>; 2] = [OnceLock::new(), OnceLock::new()];
    let (slot, bytes) = match backbone {
        Backbone::Lite0 => (&CENTRES[0], LITE0),
        Backbone::Lite2 => (&CENTRES[1], LITE2),
    };
    slot.get_or_init(|| bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// `raw` (an uncentred embedding, version 1) moved to version 2, in place.
pub fn centre_in_place(backbone: Backbone, raw: &mut [f32]) {
    for (v, c) in raw.iter_mut().zip(centre(backbone)) {
        *v -= c;
    }
}

/// The backbone named `name`, when its centre fits a store's `dim`-d rows
/// (what moves rows written before centring); else why they cannot move.
pub fn centre_for_rows(name: &str, dim: usize) -> std::result::Result<Backbone, String> {
    match name.parse::<Backbone>() {
        Ok(b) if centre(b).len() == dim => Ok(b),
        _ => Err(format!(
            "its {dim}-d vectors of backbone {name} predate centred embeddings, and this imgsearch has no centre \
             for them"
        )),
    }
}

/// A stored row of version 1 (a unit vector and the embedding's norm) as
/// version 2: the unit vector of `unit * norm - centre`, and its norm.
pub fn recentre(backbone: Backbone, unit: &[f32], norm: f32) -> (Vec<f32>, f32) {
    let mut v: Vec<f32> = unit.iter().map(|u| u * norm).collect();
    centre_in_place(backbone, &mut v);
    let norm = crate::vector::normalize(&mut v);
    (v, norm)
}

/// `bias + weights · centre`: a linear layer over uncentred embeddings
/// (`weights` `[out, 1280]`, row-major) rewritten to read centred ones.
pub fn fold_into_bias(backbone: Backbone, weights: &[f32], bias: &mut [f32]) {
    let c = centre(backbone);
    for (b, row) in bias.iter_mut().zip(weights.chunks_exact(c.len())) {
        *b += row.iter().zip(c).map(|(w, c)| w * c).sum::<f32>();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_backbone_has_a_centre_of_plausible_expected_relu6_values() {
        for b in Backbone::ALL {
            let c = centre(b);
            assert_eq!(c.len(), 1280, "{b:?}");
            assert!(c.iter().all(|&v| v > 0.0 && v < 6.0), "{b:?}: a ReLU6 mean lies in (0, 6)");
            let mean = c.iter().sum::<f32>() / c.len() as f32;
            assert!((0.1..0.3).contains(&mean), "{b:?}: mean {mean}");
        }
        assert_ne!(centre(Backbone::Lite0), centre(Backbone::Lite2));
    }

    #[test]
    fn a_folded_bias_gives_the_same_output_on_centred_input() {
        let raw: Vec<f32> = (0..1280).map(|i| (i % 7) as f32 * 0.1).collect();
        let weights: Vec<f32> = (0..3 * 1280).map(|i| ((i * 31) % 11) as f32 * 0.01 - 0.05).collect();
        let bias = vec![0.5f32, -1.0, 2.0];
        let mut folded = bias.clone();
        fold_into_bias(Backbone::Lite0, &weights, &mut folded);
        let mut centred = raw.clone();
        centre_in_place(Backbone::Lite0, &mut centred);
        for o in 0..3 {
            let row = &weights[o * 1280..(o + 1) * 1280];
            let before = bias[o] + row.iter().zip(&raw).map(|(w, x)| w * x).sum::<f32>();
            let after = folded[o] + row.iter().zip(&centred).map(|(w, x)| w * x).sum::<f32>();
            assert!((before - after).abs() < 1e-3, "output {o}: {before} vs {after}");
        }
    }
}
