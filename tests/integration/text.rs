//! The sentence encoder against an independent NumPy reference (needs models).

use imgsearch::text::{SentenceEncoder, TextEncoder};

fn encoder() -> SentenceEncoder {
    let dir = SentenceEncoder::dir(&imgsearch::models::models_dir(None));
    SentenceEncoder::load(&dir).unwrap_or_else(|e| panic!("{e}: run `imgsearch models fetch` before the tests"))
}

#[test]
fn minilm_matches_the_numpy_reference_to_1e3() {
    // Made by scripts/reference_sentences.py.
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(crate::test_data("reference_minilm.json")).unwrap()).unwrap();
    let enc = encoder();
    let texts: Vec<&str> = reference.as_array().unwrap().iter().map(|r| r["text"].as_str().unwrap()).collect();
    let got = enc.encode(&texts).unwrap();
    for (r, g) in reference.as_array().unwrap().iter().zip(&got) {
        let want: Vec<f32> = r["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(g.vector.len(), 384);
        let worst = want.iter().zip(&g.vector).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-3, "{}: max difference {worst}", r["text"]);
        assert_eq!(g.truncated, r["tokens"].as_u64().unwrap() as usize >= imgsearch::text::MAX_TOKENS, "{}", r["text"]);
    }
    // One at a time gives the same vectors as in a batch.
    let single = enc.encode(&texts[2..3]).unwrap();
    let worst = single[0].vector.iter().zip(&got[2].vector).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-4, "{worst}");
}

#[test]
fn word_order_matters_and_empty_text_is_an_error() {
    let enc = encoder();
    let v = enc.encode(&["a man riding a horse", "a horse riding a man"]).unwrap();
    let cos: f32 = v[0].vector.iter().zip(&v[1].vector).map(|(a, b)| a * b).sum();
    // A word average gives exactly 1 here.
    assert!(cos < 0.99, "the two sentences differ: cos {cos}");
    assert!(matches!(enc.encode(&["  "]), Err(imgsearch::Error::EmptyQuery)));
}

/// The zero-shot side's classifier, softmax and top-10 mixing against NumPy
/// (`scripts/reference_zeroshot.py`), from the NumPy reference embeddings:
/// with one-hot class texts the projection is the mixing weights themselves.
#[test]
fn zero_shot_mixing_matches_the_numpy_reference() {
    use imgsearch::joint::zeroshot::{classifier, ZeroShot};
    use imgsearch::joint::Projection;
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_reader(std::fs::File::open(crate::test_data(name)).unwrap()).unwrap()
    };
    let (reference, embeddings) = (read("reference_zeroshot.json"), read("reference_lite0.json"));
    let models = imgsearch::models::models_dir(None);
    let lite0 = imgsearch::backbone::Backbone::Lite0;
    let weights = imgsearch::models::backbone_weights(&models, lite0);
    assert!(weights.exists(), "{} missing: run `imgsearch models fetch` first", weights.display());
    let (w, b) = classifier(&models, lite0).unwrap();
    assert_eq!((w.len(), b.len()), (1000 * 1280, 1000));
    let mut one_hot = vec![0f32; 1000 * 1000];
    (0..1000).for_each(|c| one_hot[c * 1000 + c] = 1.0);
    let zs = ZeroShot::new(&w, &b, &one_hot, 1000).unwrap();
    for i in 0..3 {
        // The reference embeddings are pooled features; ours are centred.
        let mut e: Vec<f32> = serde_json::from_value(embeddings["embeddings"][i].clone()).unwrap();
        imgsearch::backbone::centre_in_place(lite0, &mut e);
        let got = zs.project(&e).unwrap();
        let classes: Vec<usize> = serde_json::from_value(reference["classes"][i].clone()).unwrap();
        let want: Vec<f32> = serde_json::from_value(reference["weights"][i].clone()).unwrap();
        for (&c, &p) in classes.iter().zip(&want) {
            assert!((got[c] - p).abs() <= 1e-3 * p, "image {i}, class {c}: {} vs NumPy {p}", got[c]);
        }
        let others: f32 = got.iter().enumerate().filter(|(c, _)| !classes.contains(c)).map(|(_, v)| v.abs()).sum();
        assert_eq!(others, 0.0, "image {i}: only the top 10 classes are mixed");
    }
}
