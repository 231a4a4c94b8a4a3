//! The binary end to end (needs models).

use std::process::Command;

use crate::pascal_images;

#[test]
fn embed_json_lists_top5_and_names_skipped_files() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("notes.txt");
    std::fs::write(&bad, "not an image").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_imgsearch"))
        .arg("embed")
        .arg("--json")
        .arg(pascal_images().join("cat/2008_000116.jpg"))
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a skipped file makes the exit status non-zero");
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reports[0]["dim"], 1280);
    assert_eq!(reports[0]["top5"].as_array().unwrap().len(), 5);
    assert!(reports[1]["error"].as_str().unwrap().contains("notes.txt"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of 2 images"));
}

#[test]
fn missing_models_say_how_to_fetch_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_imgsearch"))
        .args(["--models-dir"])
        .arg(dir.path())
        .arg("embed")
        .arg(pascal_images().join("cat/2008_000116.jpg"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("imgsearch models fetch"));
}

#[test]
fn models_fetch_is_a_no_op_when_present() {
    let out = Command::new(env!("CARGO_BIN_EXE_imgsearch")).args(["models", "fetch"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(log.matches("present").count(), 2, "{log}");
}
