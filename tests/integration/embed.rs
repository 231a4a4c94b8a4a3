//! The backbone against an independent implementation and on real photos (needs models).

use imgsearch::backbone::{imagenet_classes, top_k};

use crate::{lite0, pascal_images, test_data};

/// Must match `synthetic_image` in scripts/reference_embeddings.py.
fn synthetic_image(i: usize, size: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(size * size * 3);
    for y in 0..size {
        for x in 0..size {
            for c in 0..3 {
                let (fi, fx, fy, fc) = (i as f64, x as f64, y as f64, c as f64);
                let v = 127.5
                    + 127.5 * (0.031 * (fi + 1.0) * fx * (fc + 1.0) + 0.017 * fy * (fi + 2.0) + 0.5 * fc + fi).sin();
                out.push(((v.floor() - 127.0) / 128.0) as f32);
            }
        }
    }
    out
}

/// Largest |ours - reference| relative to the largest |reference|.
fn max_relative_error(ours: &[f32], reference: &[f64]) -> f64 {
    let scale = reference.iter().fold(0f64, |m, v| m.max(v.abs()));
    ours.iter().zip(reference).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max) / scale
}

#[test]
fn lite0_matches_the_numpy_reference_to_1e_3() {
    let fixture: serde_json::Value =
        serde_json::from_reader(std::fs::File::open(test_data("reference_lite0.json")).unwrap()).unwrap();
    let embedder = lite0();
    let images: Vec<Vec<f32>> = (0..3).map(|i| synthetic_image(i, 224)).collect();
    let out = embedder.embed_tensors(&images).unwrap();
    for (i, e) in out.iter().enumerate() {
        let ref_emb: Vec<f64> = serde_json::from_value(fixture["embeddings"][i].clone()).unwrap();
        let ref_logits: Vec<f64> = serde_json::from_value(fixture["logits"][i].clone()).unwrap();
        assert_eq!(e.embedding.len(), 1280);
        // The reference is the pooled feature; ours is it minus the centre.
        let centre = imgsearch::backbone::centre(imgsearch::backbone::Backbone::Lite0);
        let pooled: Vec<f32> = e.embedding.iter().zip(centre).map(|(v, c)| v + c).collect();
        let emb_err = max_relative_error(&pooled, &ref_emb);
        let logit_err = max_relative_error(&e.logits, &ref_logits);
        assert!(emb_err < 1e-3, "image {i}: embedding off by {emb_err:.2e} (relative)");
        assert!(logit_err < 1e-3, "image {i}: logits off by {logit_err:.2e} (relative)");
    }
}

#[test]
fn batching_does_not_change_an_embedding() {
    let embedder = lite0();
    let images: Vec<Vec<f32>> = (0..3).map(|i| synthetic_image(i, 224)).collect();
    let batched = embedder.embed_tensors(&images).unwrap();
    let single = embedder.embed_tensors(&images[1..2]).unwrap();
    let diff = batched[1].embedding.iter().zip(&single[0].embedding).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-5, "batch of 3 vs 1 differ by {diff}");
}

#[test]
#[ignore = "needs the Pascal photos (../shared/datasets or IMGSEARCH_TEST_DATA); CI runs it with --ignored"]
fn a_dog_photo_is_classified_as_a_dog() {
    let e = lite0().embed_file(&pascal_images().join("dog/2008_000053.jpg")).unwrap();
    let top = top_k(&e.logits, 1)[0];
    assert!((151..=268).contains(&top), "top-1 is {top} {}", imagenet_classes()[top].name);
}

#[test]
#[ignore = "needs the Pascal photos (../shared/datasets or IMGSEARCH_TEST_DATA); CI runs it with --ignored"]
fn embed_files_reports_each_failure_and_embeds_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.jpg");
    std::fs::write(&empty, b"").unwrap();
    let paths = vec![
        pascal_images().join("cat/2008_000116.jpg"),
        empty.clone(),
        dir.path().join("missing.png"),
        pascal_images().join("bottle/2008_000112.jpg"),
    ];
    let mut results: Vec<Option<Result<usize, String>>> = vec![None; paths.len()];
    lite0().embed_files(&paths, |i, r| results[i] = Some(r.map(|e| e.embedding.len()).map_err(|e| e.to_string())));
    assert_eq!(results[0], Some(Ok(1280)));
    assert_eq!(results[3], Some(Ok(1280)));
    let err1 = results[1].clone().unwrap().unwrap_err();
    assert!(err1.contains("empty.jpg") && err1.contains("empty"), "{err1}");
    let err2 = results[2].clone().unwrap().unwrap_err();
    assert!(err2.contains("missing.png"), "{err2}");
}

/// `assets/centre_lite0.f32` is what `scripts/centre.py` derives from the
/// converted weights: per channel, the mean of ReLU6 over N(beta, gamma²)
/// of the head's batch norm.
#[test]
fn the_shipped_centre_is_the_head_batch_norm_s_expected_relu6() {
    let lite0 = imgsearch::backbone::Backbone::Lite0;
    let weights = imgsearch::models::backbone_weights(&imgsearch::models::models_dir(None), lite0);
    let t = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).expect("run `imgsearch models fetch`");
    let get = |name: &str| t[name].to_vec1::<f32>().unwrap();
    let (gamma, beta) = (get("_bn1.weight"), get("_bn1.bias"));
    // Abramowitz and Stegun 7.1.26 (error under 1.5e-7).
    let erf = |x: f64| {
        let t = 1.0 / (1.0 + 0.3275911 * x.abs());
        let y = 1.0
            - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592)
                * t
                * (-x * x).exp();
        y.copysign(x)
    };
    let cdf = |x: f64| 0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2));
    let pdf = |x: f64| (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let centre = imgsearch::backbone::centre(lite0);
    assert_eq!(centre.len(), gamma.len());
    for (c, (&g, &b)) in gamma.iter().zip(&beta).enumerate() {
        let (m, s) = (b as f64, (g as f64).abs());
        let (lo, hi) = (-m / s, (6.0 - m) / s);
        let want = m * (cdf(hi) - cdf(lo)) + s * (pdf(lo) - pdf(hi)) + 6.0 * (1.0 - cdf(hi));
        assert!((centre[c] as f64 - want).abs() < 1e-5, "channel {c}: shipped {}, derived {want}", centre[c]);
    }
}
