//! The HTTP API against `app()` (no socket; needs models): every endpoint,
//! its errors, uploads, auth, and paths that must not escape the index.

use imgsearch::library::{Access, Library};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use imgsearch::server::{app, Options, State};
use tower::ServiceExt;

use crate::index::copy_images;
use crate::lite0_as_served;

const TOKEN: &str = "s3cret";

/// A small index (cat, dog, boat, bottle; 8 each) with a trained model, built once.
struct Fixture {
    _dir: tempfile::TempDir,
    photos: PathBuf,
    db: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let photos = dir.path().join("photos");
        copy_images(&photos, &["cat", "dog", "boat", "bottle"], 8);
        let db = dir.path().join("db");
        let out = Command::new(env!("CARGO_BIN_EXE_imgsearch"))
            .arg("--db")
            .arg(&db)
            .args(["train", "--epochs", "20", "--batch-size", "8", "--data"])
            .arg(&photos)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Fixture { _dir: dir, photos, db }
    })
}

pub(crate) fn state_for(db: &Path, roots: Vec<PathBuf>, max_upload: usize) -> Arc<State> {
    let words = imgsearch::words::open(&imgsearch::models::models_dir(None), None).unwrap();
    let options = Options {
        roots,
        token: Some(TOKEN.into()),
        max_upload,
        queue: 8,
        backbone: imgsearch::backbone::Backbone::Lite0,
        ..Default::default()
    };
    let library = Library::open(options.settings(db), Access::Write).unwrap();
    Arc::new(State::load(library, lite0_as_served(), words, options).unwrap())
}

fn shared_state() -> Arc<State> {
    static S: OnceLock<Arc<State>> = OnceLock::new();
    S.get_or_init(|| {
        let f = fixture();
        state_for(&f.db, vec![f.photos.clone()], 2 << 20)
    })
    .clone()
}

/// A fresh index of `per_label` images of each label, in a temp dir.
fn indexed_copy(labels: &[&str], per_label: usize) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    copy_images(&photos, labels, per_label);
    let db = dir.path().join("db");
    let out =
        Command::new(env!("CARGO_BIN_EXE_imgsearch")).arg("--db").arg(&db).arg("index").arg(&photos).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (dir, photos, db)
}

struct Answer {
    status: StatusCode,
    content_type: String,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap().to_owned()
    }
}

async fn send(state: Arc<State>, req: Request<Body>) -> Answer {
    let resp = app(state).oneshot(req).await.unwrap();
    let status = resp.status();
    let content_type =
        resp.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
    Answer { status, content_type, headers, body }
}

async fn get(uri: &str) -> Answer {
    send(shared_state(), Request::get(uri).body(Body::empty()).unwrap()).await
}

/// A multipart body: an optional image and text fields.
pub(crate) fn multipart(image: Option<(&str, &[u8])>, fields: &[(&str, &str)]) -> (String, Vec<u8>) {
    let boundary = "imgsearchtestboundary";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
        );
    }
    if let Some((file, bytes)) = image {
        body.extend(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{file}\"\r\nContent-Type: application/octet-stream\r\n\r\n")
                .as_bytes(),
        );
        body.extend(bytes);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn post_form(uri: &str, image: Option<(&str, &[u8])>, fields: &[(&str, &str)], token: Option<&str>) -> Request<Body> {
    let (ct, body) = multipart(image, fields);
    let mut req = Request::post(uri).header(header::CONTENT_TYPE, ct);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    req.body(Body::from(body)).unwrap()
}

fn labels(v: &serde_json::Value) -> Vec<String> {
    v["results"].as_array().unwrap().iter().map(|r| r["label"].as_str().unwrap().to_owned()).collect()
}

fn photo(label: &str) -> Vec<u8> {
    let f = fixture();
    let mut files: Vec<PathBuf> = std::fs::read_dir(f.photos.join(label)).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    std::fs::read(&files[0]).unwrap()
}

#[tokio::test]
#[ignore = "needs the Pascal photos (../shared/datasets or IMGSEARCH_TEST_DATA); CI runs it with --ignored"]
async fn text_search_finds_the_word_and_key_search_finds_the_image() {
    let dog = get("/api/search?text=dog&k=5").await;
    assert_eq!(dog.status, StatusCode::OK);
    let v = dog.json();
    assert_eq!(v["space"], "joint");
    assert!(labels(&v).iter().filter(|l| *l == "dog").count() >= 4, "{v}");
    let first = &v["results"][0];
    assert_eq!(first["rank"], 1);
    let key = first["key"].as_i64().unwrap();
    assert_eq!(first["thumbnail"], format!("/api/images/{key}/thumbnail"));

    let like = get(&format!("/api/search?key={key}&k=3")).await.json();
    assert_eq!(like["results"][0]["key"], key);
    assert_eq!(like["space"], "cnn");
    assert!(like["tags"].is_null(), "tags only when asked for");
    let tagged = get(&format!("/api/search?key={key}&k=3&tags=true")).await.json();
    assert!(tagged["tags"]["words"].as_array().is_some_and(|t| t.len() == 8), "{tagged}");
    assert_eq!(tagged["tags"]["side"], "fused", "a trained store fuses by default");
    let text = get("/api/search?text=cat&k=3").await.json();
    assert_eq!(text["text_side"], "fused", "{text}");
    assert!((text["fusion_weight"].as_f64().unwrap() - 0.35).abs() < 1e-6, "recorded with the results: {text}");
    // Class-weighted, max_distance, image + text combined, negatives.
    let weighted = get(&format!("/api/search?key={key}&class=Siamese%20cat&k=4")).await;
    assert_eq!(weighted.status, StatusCode::OK);
    let near = get(&format!("/api/search?key={key}&k=20&max_distance=0.5")).await.json();
    assert!(near["results"].as_array().unwrap().iter().all(|r| r["distance"].as_f64().unwrap() <= 0.5));
    let both = get(&format!("/api/search?key={key}&text=boat&k=3")).await.json();
    assert_eq!(both["space"], "joint");
    let cat_not_dog = get("/api/search?text=cat%20-dog&k=4").await.json();
    assert!(labels(&cat_not_dog).iter().all(|l| l == "cat"), "{cat_not_dog}");
}

#[tokio::test]
#[ignore = "needs the Pascal photos (../shared/datasets or IMGSEARCH_TEST_DATA); CI runs it with --ignored"]
async fn bad_search_requests_say_what_was_wrong() {
    for (uri, status, says) in [
        ("/api/search?text=dog&k=0", 400, "k must be between 1 and 1000"),
        ("/api/search?text=dog&k=5000", 400, "k must be between 1 and 1000"),
        ("/api/search", 400, "empty query"),
        ("/api/search?text=%20%20", 400, "empty query"),
        ("/api/search?key=1&class=siamse%20kat", 400, "Siamese cat"),
        ("/api/search?key=999999", 404, "no image with key 999999"),
        ("/api/search?key=1&space=pixels", 400, "space must be cnn or joint"),
        ("/api/search?text=cat&class=284", 400, "class reweights"),
        ("/api/search?key=1&max_distance=3", 400, "max_distance"),
    ] {
        let a = get(uri).await;
        assert_eq!(a.status.as_u16(), status, "{uri}: {}", String::from_utf8_lossy(&a.body));
        assert!(a.error().contains(says), "{uri}: {}", a.error());
    }
    // Text past the model's 256 tokens is cut, and the answer says so.
    let long = "dog%20".repeat(300);
    let cut = get(&format!("/api/search?text={long}&k=2")).await.json();
    assert!(cut["note"].as_str().is_some_and(|n| n.contains("256 tokens")), "{cut}");
    assert!(get("/api/search?text=dog&k=2").await.json()["note"].is_null());
    // The sentence encoder takes any text, misspelt or not.
    assert_eq!(get("/api/search?text=dgo%20%E6%9D%B1%E4%BA%AC%20%F0%9F%9A%B2").await.status, StatusCode::OK);
    // A malformed parameter is a 400 from the extractor, not a crash.
    assert_eq!(get("/api/search?key=abc").await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
#[ignore = "needs the Pascal photos (../shared/datasets or IMGSEARCH_TEST_DATA); CI runs it with --ignored"]
async fn uploads_are_searched_and_tagged_and_bad_ones_refused() {
    let cat = photo("cat");
    let a =
        send(shared_state(), post_form("/api/search", Some(("cat.jpg", &cat)), &[("k", "3"), ("tags", "true")], None))
            .await;
    assert_eq!(a.status, StatusCode::OK, "{}", String::from_utf8_lossy(&a.body));
    let v = a.json();
    assert_eq!(v["results"][0]["label"], "cat");
    assert!(v["results"][0]["distance"].as_f64().unwrap() < 1e-3, "the same picture is indexed: {v}");
    assert_eq!(v["tags"]["words"].as_array().unwrap().len(), 8);
    let tags = send(shared_state(), post_form("/api/tags", Some(("cat.jpg", &cat)), &[("k", "5")], None)).await.json();
    let words = tags["words"].as_array().unwrap();
    assert_eq!(words.len(), 5);
    assert!(words[0]["index"].is_u64() && words[0]["word"].is_string());
    let classes: Vec<&str> = tags["classes"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert!(classes.iter().any(|c| c.contains("cat")), "a cat photo's top classes: {classes:?}");

    let bad = send(shared_state(), post_form("/api/search", Some(("notes.txt", b"not an image")), &[], None)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.error().contains("notes.txt") && bad.error().contains("cannot decode"), "{}", bad.error());
    let truncated =
        send(shared_state(), post_form("/api/search", Some(("half.jpg", &cat[..cat.len() / 3])), &[], None)).await;
    // The JPEG decoder fills in a truncated scan; either way it is an answer, not a crash.
    assert!(matches!(truncated.status, StatusCode::OK | StatusCode::BAD_REQUEST), "{}", truncated.status);
    let corrupt = [&cat[..200], &[0xAB; 400][..]].concat();
    let corrupt = send(shared_state(), post_form("/api/search", Some(("corrupt.jpg", &corrupt)), &[], None)).await;
    assert_eq!(corrupt.status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&corrupt.body));
    // A 30000 x 30000 BMP header: refused from the header, before decoding.
    let mut bmp = b"BM".to_vec();
    for v in [54u32, 0, 54, 40, 30000, 30000] {
        bmp.extend(v.to_le_bytes());
    }
    bmp.extend(1u16.to_le_bytes());
    bmp.extend(24u16.to_le_bytes());
    bmp.extend([0; 24]);
    let huge = send(shared_state(), post_form("/api/search", Some(("huge.bmp", &bmp)), &[], None)).await;
    assert_eq!(huge.status, StatusCode::BAD_REQUEST);
    assert!(huge.error().contains("pixels"), "{}", huge.error());
    // Over the body limit (2 MB here): 413.
    let big = vec![0u8; 3 << 20];
    let over = send(shared_state(), post_form("/api/search", Some(("big.jpg", &big)), &[], None)).await;
    assert_eq!(over.status, StatusCode::PAYLOAD_TOO_LARGE);
    let none = send(shared_state(), post_form("/api/tags", None, &[], None)).await;
    assert_eq!(none.status, StatusCode::BAD_REQUEST);
    assert!(none.error().contains("\"image\""));
}

#[tokio::test]
#[ignore = "needs the Pascal photos (../shared/datasets or IMGSEARCH_TEST_DATA); CI runs it with --ignored"]
async fn tags_words_classes_status_health_metrics_and_openapi() {
    let key = get("/api/search?text=bottle&k=1").await.json()["results"][0]["key"].as_i64().unwrap();
    let tags = get(&format!("/api/tags?key={key}&k=10")).await.json();
    let words: Vec<&str> = tags["words"].as_array().unwrap().iter().map(|t| t["word"].as_str().unwrap()).collect();
    assert!(words.contains(&"bottle"), "{words:?}");
    assert_eq!(get("/api/tags?key=424242").await.status, StatusCode::NOT_FOUND);
    let said = get("/api/words?q=said&k=3").await.json();
    assert_eq!(said[0]["word"], "said");
    assert_eq!(get("/api/words?q=zzqqxx").await.status, StatusCode::BAD_REQUEST);
    let classes = get("/api/classes?q=siam&n=3").await.json();
    assert_eq!(classes[0]["name"], "Siamese cat");
    assert_eq!(classes[0]["index"], 284);
    let status = get("/api/status").await.json();
    assert!(status["images"].as_u64().unwrap() >= 32);
    assert_eq!(status["joint_labels"].as_array().unwrap().len(), 4);
    assert_eq!(get("/healthz").await.body, b"ok");
    let metrics = get("/metrics").await;
    assert!(metrics.content_type.starts_with("text/plain"));
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(text.contains("imgsearch_images ") && text.contains("imgsearch_request_duration_seconds_bucket"), "{text}");
    let spec = get("/api/openapi.json").await.json();
    for path in ["/api/search", "/api/tags", "/api/words", "/api/images", "/api/images/{key}/thumbnail", "/metrics"] {
        assert!(spec["paths"][path].is_object(), "{path} missing from the OpenAPI document");
    }
    let page = get("/").await;
    assert!(page.content_type.starts_with("text/html"));
    assert!(String::from_utf8(page.body).unwrap().contains("imgsearch"));
}

#[tokio::test]
#[ignore = "needs the Pascal photos (../shared/datasets or IMGSEARCH_TEST_DATA); CI runs it with --ignored"]
async fn thumbnails_and_originals_by_key_only() {
    let key = get("/api/search?text=boat&k=1").await.json()["results"][0]["key"].as_i64().unwrap();
    let thumb = get(&format!("/api/images/{key}/thumbnail")).await;
    assert_eq!(thumb.status, StatusCode::OK);
    assert_eq!(thumb.content_type, "image/jpeg");
    let img = image::load_from_memory(&thumb.body).unwrap();
    assert!(img.width().max(img.height()) == 256 || img.width().max(img.height()) < 256);
    let again = get(&format!("/api/images/{key}/thumbnail")).await;
    assert_eq!(again.body, thumb.body, "served from the cache");
    let orig = get(&format!("/api/images/{key}/original")).await;
    assert_eq!(orig.content_type, "image/jpeg");
    let info = get(&format!("/api/images/{key}")).await.json();
    let on_disk =
        std::fs::read(fixture().photos.join(info["label"].as_str().unwrap()).join(info["file"].as_str().unwrap()))
            .unwrap();
    assert_eq!(orig.body, on_disk);
    // Paths never address files.
    for uri in [
        "/api/images/..%2F..%2Fetc%2Fpasswd/original",
        "/api/images/%2Fetc%2Fpasswd/original",
        "/api/images/../../etc/passwd",
        "/api/images/-1/original",
    ] {
        let a = get(uri).await;
        assert!(a.status == StatusCode::BAD_REQUEST || a.status == StatusCode::NOT_FOUND, "{uri}: {}", a.status);
        assert!(!String::from_utf8_lossy(&a.body).contains("root:"), "{uri}");
    }
}

#[tokio::test]
#[ignore = "needs the Pascal photos (../shared/datasets or IMGSEARCH_TEST_DATA); CI runs it with --ignored"]
async fn adding_and_deleting_need_the_token_and_update_the_index_live() {
    // A separate index: this test changes it.
    let (dir, photos, db) = indexed_copy(&["cat", "dog"], 3);
    let state = state_for(&db, vec![photos.clone()], 2 << 20);
    let mut horses: Vec<PathBuf> =
        std::fs::read_dir(crate::pascal_images().join("horse")).unwrap().map(|e| e.unwrap().path()).collect();
    horses.sort();
    let horse = std::fs::read(&horses[0]).unwrap();
    let no_token =
        send(state.clone(), post_form("/api/images", Some(("h.jpg", &horse)), &[("label", "horse")], None)).await;
    assert_eq!(no_token.status, StatusCode::UNAUTHORIZED);
    let wrong =
        send(state.clone(), post_form("/api/images", Some(("h.jpg", &horse)), &[("label", "horse")], Some("nope")))
            .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let added =
        send(state.clone(), post_form("/api/images", Some(("h.jpg", &horse)), &[("label", "../horse")], Some(TOKEN)))
            .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&added.body));
    let added = added.json();
    assert_eq!(added["label"], "___horse", "the label cannot climb out of the uploads folder");
    let key = added["key"].as_i64().unwrap();
    let status = send(state.clone(), Request::get("/api/status").body(Body::empty()).unwrap()).await.json();
    assert_eq!(status["images"], 7);
    let found = send(state.clone(), Request::get(format!("/api/search?key={key}&k=1")).body(Body::empty()).unwrap())
        .await
        .json();
    assert_eq!(found["results"][0]["key"], key);
    let bad = send(state.clone(), post_form("/api/images", Some(("x.txt", b"hello")), &[], Some(TOKEN))).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    // By path: only under the indexed folders.
    let by_path = |path: String, token: Option<&str>| {
        let mut req = Request::post("/api/images/by-path").header(header::CONTENT_TYPE, "application/json");
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        req.body(Body::from(serde_json::json!({ "path": path }).to_string())).unwrap()
    };
    let inside = photos.join("dog/new.jpg");
    std::fs::write(&inside, &horse).unwrap();
    let outside_copy = dir.path().join("outside.jpg");
    std::fs::write(&outside_copy, &horse).unwrap();
    for path in [
        outside_copy.to_string_lossy().into_owned(),
        "/etc/passwd".into(),
        format!("{}/../outside.jpg", photos.display()),
        format!("{}/dog/../../outside.jpg", photos.display()),
    ] {
        let a = send(state.clone(), by_path(path.clone(), Some(TOKEN))).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(
        send(state.clone(), by_path(inside.to_string_lossy().into_owned(), None)).await.status,
        StatusCode::UNAUTHORIZED
    );
    let ok = send(state.clone(), by_path(inside.to_string_lossy().into_owned(), Some(TOKEN))).await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&ok.body));
    assert_eq!(ok.json()["label"], "dog");

    // Delete: token, then gone; an uploaded file goes with it, the user's files stay.
    let del = |key: i64, token: Option<&str>| {
        let mut req = Request::delete(format!("/api/images/{key}"));
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        req.body(Body::empty()).unwrap()
    };
    assert_eq!(send(state.clone(), del(key, None)).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(send(state.clone(), del(key, Some(TOKEN))).await.status, StatusCode::NO_CONTENT);
    assert_eq!(send(state.clone(), del(key, Some(TOKEN))).await.status, StatusCode::NOT_FOUND);
    let gone = send(state.clone(), Request::get(format!("/api/images/{key}")).body(Body::empty()).unwrap()).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let dog_key = ok.json()["key"].as_i64().unwrap();
    assert_eq!(send(state.clone(), del(dog_key, Some(TOKEN))).await.status, StatusCode::NO_CONTENT);
    assert!(inside.exists(), "a file in the user's folder is never deleted");
}

#[tokio::test]
#[ignore = "needs the Pascal photos (../shared/datasets or IMGSEARCH_TEST_DATA); CI runs it with --ignored"]
async fn text_search_and_tags_answer_zero_shot_without_a_model() {
    let (_dir, _photos, db) = indexed_copy(&["cat", "boat"], 4);
    let state = state_for(&db, vec![], 2 << 20);
    // Never trained: the zero-shot side answers text and tags.
    let a = send(state.clone(), Request::get("/api/search?text=a%20cat&k=4").body(Body::empty()).unwrap()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.error());
    let a = a.json();
    assert_eq!(a["text_side"], "zero-shot");
    let labels: Vec<&str> = a["results"].as_array().unwrap().iter().map(|r| r["label"].as_str().unwrap()).collect();
    assert!(labels.iter().filter(|l| **l == "cat").count() >= 3, "{labels:?}");
    let t = send(state.clone(), Request::get("/api/tags?key=1&k=5").body(Body::empty()).unwrap()).await.json();
    assert_eq!((t["side"].as_str(), t["words"].as_array().map(Vec::len)), (Some("zero-shot"), Some(5)), "{t}");
    assert_eq!(t["classes"].as_array().unwrap().len(), 5);
    // The sides that need a model say how to train one; an unknown side lists the valid ones.
    let trained =
        send(state.clone(), Request::get("/api/search?text=cat&text_side=trained").body(Body::empty()).unwrap()).await;
    assert_eq!(trained.status, StatusCode::CONFLICT);
    assert!(trained.error().contains("imgsearch train"), "{}", trained.error());
    let bad =
        send(state.clone(), Request::get("/api/search?text=cat&text_side=magic").body(Body::empty()).unwrap()).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.error().contains("zero-shot, trained, fused"), "{}", bad.error());
    let status = send(state.clone(), Request::get("/api/status").body(Body::empty()).unwrap()).await.json();
    assert_eq!(status["text_side"], "zero-shot");
    assert!(status["joint_labels"].is_null());
    // Image search carries no tags unless asked.
    let s = send(state, Request::get("/api/search?key=1&k=2&tags=false").body(Body::empty()).unwrap()).await.json();
    assert_eq!(s["results"].as_array().unwrap().len(), 2);
    assert!(s["tags"].is_null());
}

#[test]
fn serving_beyond_loopback_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_imgsearch"))
        .arg("--db")
        .arg(dir.path().join("db"))
        .args(["serve", "--addr", "0.0.0.0:0"])
        .env_remove("IMGSEARCH_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs a token") && err.contains("--token"), "{err}");
}

/// A store of `n` generated photos (no shared data needed), indexed by the
/// binary, and the service's state over it.
struct Generated {
    tmp: tempfile::TempDir,
    photos: PathBuf,
    db: PathBuf,
    files: Vec<PathBuf>,
    state: Arc<State>,
}

fn generated(n: usize) -> Generated {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    let files = crate::index::generated_photos(&photos, n);
    let db = tmp.path().join("db");
    let out = Command::new(env!("CARGO_BIN_EXE_imgsearch")).arg("--db").arg(&db).arg("index").arg(&photos).output();
    assert!(out.unwrap().status.success());
    let state = state_for(&db, vec![photos.clone()], 2 << 20);
    Generated { tmp, photos, db, files, state }
}

/// Regression: `/original` and `/thumbnail` served whatever sat at the
/// stored path, so an indexed photo swapped for a link to another file
/// leaked that file. Now a file that is not what was indexed is a 404.
#[tokio::test]
async fn an_indexed_file_swapped_for_a_link_is_not_served() {
    let Generated { tmp, photos, db, files, state } = generated(2);
    let get = |uri: String| send(state.clone(), Request::get(uri).body(Body::empty()).unwrap());
    let key = |name: &str| {
        let db = imgsearch::store::Store::open(&db, "lite0", 1280).unwrap();
        db.by_path(photos.join(name).canonicalize().unwrap().to_str().unwrap()).unwrap().unwrap().key
    };
    let (k0, k1) = (key("photo0.png"), key("photo1.png"));
    assert_eq!(get(format!("/api/images/{k0}/original")).await.status, StatusCode::OK);
    assert_eq!(get(format!("/api/images/{k0}/thumbnail")).await.status, StatusCode::OK);
    // Swap photo0 for a link to a secret; its thumbnail cache is no excuse either.
    let secret = tmp.path().join("secret.txt");
    std::fs::write(&secret, b"not for the web").unwrap();
    std::fs::remove_file(&files[0]).unwrap();
    std::os::unix::fs::symlink(&secret, &files[0]).unwrap();
    let original = get(format!("/api/images/{k0}/original")).await;
    assert_eq!(original.status, StatusCode::NOT_FOUND);
    assert!(!String::from_utf8_lossy(&original.body).contains("not for the web"));
    assert_eq!(get(format!("/api/images/{k0}/thumbnail")).await.status, StatusCode::NOT_FOUND);
    // A file rewritten in place (other size) is refused too; the untouched one is served.
    std::fs::write(&files[1], b"changed").unwrap();
    assert_eq!(get(format!("/api/images/{k1}/original")).await.status, StatusCode::NOT_FOUND);
}

/// Regression: any web page could drive a loopback server (a cross-site
/// upload or DELETE went through, and DNS rebinding read the photos through
/// a foreign `Host`), and one huge text cost seconds of CPU and gigabytes.
#[tokio::test]
async fn cross_site_writes_foreign_hosts_and_huge_texts_are_refused() {
    let Generated { tmp, photos, db: _db, files: _files, state } = generated(2);
    let with = |method: &str, uri: &str, headers: &[(&str, &str)]| {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        send(state.clone(), req.body(Body::empty()).unwrap())
    };
    let bearer = format!("Bearer {TOKEN}");
    // A foreign Host (DNS rebinding) is refused on reads too; this machine's names are fine.
    let rebound = with("GET", "/api/status", &[("host", "evil.example:8080")]).await;
    assert_eq!(rebound.status, StatusCode::MISDIRECTED_REQUEST);
    assert!(rebound.error().contains("--allow-host"), "{}", rebound.error());
    for host in ["127.0.0.1:8080", "localhost:8080", "[::1]:8080"] {
        assert_eq!(with("GET", "/api/status", &[("host", host)]).await.status, StatusCode::OK, "{host}");
    }
    // A write from another site is refused even with the token; from the page itself it goes through.
    let cross = [("host", "127.0.0.1:8080"), ("origin", "http://evil.example"), ("authorization", bearer.as_str())];
    assert_eq!(with("DELETE", "/api/images/1", &cross).await.status, StatusCode::FORBIDDEN);
    let fetch_meta = [("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site"), ("authorization", bearer.as_str())];
    assert_eq!(with("DELETE", "/api/images/1", &fetch_meta).await.status, StatusCode::FORBIDDEN);
    let (ct, body) = multipart(Some(("x.png", &std::fs::read(photos.join("photo0.png")).unwrap())), &[]);
    let upload = Request::post("/api/images")
        .header("host", "127.0.0.1:8080")
        .header("origin", "http://evil.example")
        .header("content-type", ct)
        .header("authorization", bearer.as_str())
        .body(Body::from(body))
        .unwrap();
    assert_eq!(send(state.clone(), upload).await.status, StatusCode::FORBIDDEN);
    // Regression: an over-long label was a 500 naming a server path; it is cut to a folder name.
    let long = "x".repeat(5000);
    let fresh = crate::index::generated_photos(&tmp.path().join("more"), 6).pop().unwrap();
    let (ct, body) = multipart(Some(("x.png", &std::fs::read(fresh).unwrap())), &[("label", &long)]);
    let upload = Request::post("/api/images")
        .header("content-type", ct)
        .header("authorization", bearer.as_str())
        .body(Body::from(body))
        .unwrap();
    let added = send(state.clone(), upload).await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&added.body));
    assert_eq!(added.json()["label"].as_str().map(str::len), Some(64));
    let own = [("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080"), ("authorization", bearer.as_str())];
    assert_eq!(with("DELETE", "/api/images/1", &own).await.status, StatusCode::NO_CONTENT);
    // A text far beyond what the encoder reads is refused before any work.
    let huge = "word ".repeat(400_000);
    let (ct, body) = multipart(None, &[("text", huge.as_str())]);
    let start = std::time::Instant::now();
    let answer =
        send(state.clone(), Request::post("/api/search").header("content-type", ct).body(Body::from(body)).unwrap())
            .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.error().contains("at most 4096 bytes"), "{}", answer.error());
    assert!(start.elapsed() < std::time::Duration::from_secs(2), "{:?}", start.elapsed());
}

/// HTTP as browsers and tools expect it: pages of the collection, `ETag`
/// revalidation (304) on thumbnails and originals, `Last-Modified`, byte
/// ranges on originals, HiDPI thumbnails, and gzip.
#[tokio::test]
async fn browsing_caching_ranges_and_compression() {
    let g = generated(3);
    let get = |uri: &str, headers: &[(&str, &str)]| {
        let mut req = Request::get(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        send(g.state.clone(), req.body(Body::empty()).unwrap())
    };
    // Newest first, a cursor to the next page.
    let first = get("/api/images?limit=2", &[]).await.json();
    assert_eq!(first["total"], 3);
    let keys: Vec<i64> = first["images"].as_array().unwrap().iter().map(|i| i["key"].as_i64().unwrap()).collect();
    assert_eq!(keys, [3, 2]);
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let rest = get(&format!("/api/images?limit=2&cursor={cursor}"), &[]).await.json();
    assert_eq!(rest["images"][0]["key"], 1);
    assert!(rest["next_cursor"].is_null());
    // By date taken (the files' times here: photo2 is newest), filtered, paged.
    let by_date = get("/api/images?limit=1&sort=date", &[]).await.json();
    assert_eq!(by_date["images"][0]["key"], 3, "{by_date}");
    let cursor = by_date["next_cursor"].as_str().unwrap().to_owned();
    let next = get(&format!("/api/images?limit=5&sort=date&cursor={cursor}"), &[]).await.json();
    let keys: Vec<i64> = next["images"].as_array().unwrap().iter().map(|i| i["key"].as_i64().unwrap()).collect();
    assert_eq!(keys, [2, 1]);
    let none = get("/api/images?sort=date&before=1971", &[]).await.json();
    assert!(none["images"].as_array().unwrap().is_empty(), "nothing was taken before 1971: {none}");
    assert_eq!(get("/api/images?sort=date&after=someday", &[]).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(get("/api/images?sort=date&cursor=12", &[]).await.status, StatusCode::BAD_REQUEST);
    // Searches take the same filters: nothing before 1971, everything after it.
    assert_eq!(get("/api/search?key=1&before=1971", &[]).await.json()["results"].as_array().unwrap().len(), 0);
    assert_eq!(get("/api/search?key=1&after=1971&k=5", &[]).await.json()["results"].as_array().unwrap().len(), 3);
    assert_eq!(get("/api/images?limit=0", &[]).await.status, StatusCode::BAD_REQUEST);
    let info = get("/api/images/1", &[]).await.json();
    assert_eq!(info["path"].as_str().unwrap(), g.files[0].canonicalize().unwrap().to_str().unwrap());
    assert_eq!(info["file"], "photo0.png");

    // Thumbnails: two sizes, each with its own tag; a current copy is a 304.
    let thumb = get("/api/images/1/thumbnail", &[]).await;
    let tag = thumb.headers["etag"].to_str().unwrap().to_owned();
    let again = get("/api/images/1/thumbnail", &[("if-none-match", &tag)]).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    let big = get("/api/images/1/thumbnail?size=512", &[]).await;
    assert_eq!(big.status, StatusCode::OK);
    assert_ne!(big.headers["etag"], tag);
    let bad = get("/api/images/1/thumbnail?size=100", &[]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.error().contains("256"), "{}", bad.error());

    // Originals: validators, ranges, and 416 past the end.
    let file = std::fs::read(&g.files[0]).unwrap();
    let whole = get("/api/images/1/original", &[]).await;
    assert_eq!(whole.body, file);
    assert_eq!(whole.headers["accept-ranges"], "bytes");
    assert!(whole.headers.contains_key("last-modified"));
    let tag = whole.headers["etag"].to_str().unwrap().to_owned();
    assert_eq!(get("/api/images/1/original", &[("if-none-match", &tag)]).await.status, StatusCode::NOT_MODIFIED);
    let part = get("/api/images/1/original", &[("range", "bytes=0-9")]).await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.body, file[..10]);
    assert_eq!(part.headers["content-range"].to_str().unwrap(), format!("bytes 0-9/{}", file.len()));
    let tail = get("/api/images/1/original", &[("range", "bytes=-5")]).await;
    assert_eq!(tail.body, file[file.len() - 5..]);
    let past = get("/api/images/1/original", &[("range", &format!("bytes={}-", file.len()))]).await;
    assert_eq!(past.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(past.headers["content-range"].to_str().unwrap(), format!("bytes */{}", file.len()));

    // JSON and the page are compressed for a client that accepts it.
    let doc = get("/api/openapi.json", &[("accept-encoding", "gzip")]).await;
    assert_eq!(doc.headers["content-encoding"], "gzip");
    let mut plain = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&doc.body[..]), &mut plain).unwrap();
    assert!(plain.contains("/api/images/{key}/original"));
}

/// One query assembly for both: the CLI's `search --json` and the API's
/// `/api/search` give the same answer, in the same shape, for every kind of
/// query, image + text included; the same combinations are refused.
#[tokio::test]
async fn the_cli_and_the_api_answer_every_query_alike() {
    let g = generated(4);
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_imgsearch")).arg("--db").arg(&g.db).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (args, query) in [
        (vec!["--image", "2", "-k", "3"], "key=2&k=3"),
        (vec!["--image", "2", "--class", "284", "-k", "3"], "key=2&class=284&k=3"),
        (vec!["--text", "a red photo", "-k", "3"], "text=a%20red%20photo&k=3"),
        (vec!["--image", "2", "--text", "a red photo", "-k", "3"], "key=2&text=a%20red%20photo&k=3"),
        (vec!["--image", "2", "--space", "joint", "-k", "3"], "key=2&space=joint&k=3"),
    ] {
        let mut full = vec!["search", "--json"];
        full.extend(&args);
        let (ok, stdout, stderr) = cli(&full);
        assert!(ok, "{args:?}: {stderr}");
        let from_cli: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let from_api = send(g.state.clone(), Request::get(format!("/api/search?{query}")).body(Body::empty()).unwrap())
            .await
            .json();
        for field in ["space", "text_side", "fusion_weight"] {
            assert_eq!(from_cli[field], from_api[field], "{args:?}: {field}");
        }
        let (c, a) = (from_cli["results"].as_array().unwrap(), from_api["results"].as_array().unwrap());
        assert_eq!(c.len(), a.len(), "{args:?}");
        for (c, a) in c.iter().zip(a) {
            for field in ["rank", "key", "label", "file"] {
                assert_eq!(c[field], a[field], "{args:?}: {field}");
            }
            assert!((c["distance"].as_f64().unwrap() - a["distance"].as_f64().unwrap()).abs() < 1e-4, "{args:?}");
            assert!(c["path"].is_string() && a.get("path").is_none(), "paths in the CLI only");
        }
    }
    let joint =
        serde_json::from_str::<serde_json::Value>(&cli(&["search", "--json", "--image", "2", "--text", "red"]).1)
            .unwrap();
    assert_eq!(joint["space"], "joint", "image + text add up in the text space");
    for (args, query, says) in [
        (vec!["--text", "red", "--space", "cnn"], "text=red&space=cnn", "text space"),
        (vec!["--text", "red", "--class", "284"], "text=red&class=284", "class"),
    ] {
        let mut full = vec!["search"];
        full.extend(&args);
        let (ok, _, stderr) = cli(&full);
        assert!(!ok && stderr.contains(says), "{args:?}: {stderr}");
        let api =
            send(g.state.clone(), Request::get(format!("/api/search?{query}")).body(Body::empty()).unwrap()).await;
        assert_eq!(api.status, StatusCode::BAD_REQUEST);
        assert_eq!(stderr.trim().trim_start_matches("error: "), api.error(), "{args:?}: one message");
    }
}

/// `GET /api/duplicates`: an identical copy groups with its original, with
/// the space it takes; a nonsense distance is a 400.
#[tokio::test]
async fn duplicates_are_grouped_with_the_space_they_take() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    let files = crate::index::generated_photos(&photos, 3);
    std::fs::copy(&files[0], photos.join("copy of photo0.png")).unwrap();
    let db = tmp.path().join("db");
    let out = Command::new(env!("CARGO_BIN_EXE_imgsearch")).arg("--db").arg(&db).arg("index").arg(&photos).output();
    assert!(out.unwrap().status.success());
    let state = state_for(&db, vec![photos.clone()], 2 << 20);
    let get = |uri: &str| send(state.clone(), Request::get(uri).body(Body::empty()).unwrap());
    let answer = get("/api/duplicates").await.json();
    let group = answer["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["images"].as_array().unwrap().iter().any(|m| m["file"] == "copy of photo0.png"))
        .unwrap_or_else(|| panic!("the copy is in no group: {answer}"))
        .clone();
    let files_in: Vec<&str> = group["images"].as_array().unwrap().iter().map(|m| m["file"].as_str().unwrap()).collect();
    assert!(files_in.contains(&"photo0.png"), "{files_in:?}");
    let size = std::fs::metadata(&files[0]).unwrap().len();
    assert!(group["redundant_bytes"].as_u64().unwrap() >= size, "{group}");
    assert!(group["images"][0]["thumbnail"].as_str().unwrap().ends_with("/thumbnail"));
    assert_eq!(get("/api/duplicates?max_distance=3").await.status, StatusCode::BAD_REQUEST);
}

/// Keeping one of a group: `DELETE /api/images/{key}` leaves the file on
/// disk; with `delete_file=true` the file goes too, but only one under a
/// served folder: a file elsewhere is refused with 403 and nothing changes.
#[tokio::test]
async fn a_removed_copy_keeps_its_file_unless_asked_and_only_under_the_served_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let (photos, elsewhere) = (tmp.path().join("photos"), tmp.path().join("elsewhere"));
    let files = crate::index::generated_photos(&photos, 3);
    let outside = crate::index::generated_photos(&elsewhere, 1).pop().unwrap();
    let db = tmp.path().join("db");
    for folder in [&photos, &elsewhere] {
        let out = Command::new(env!("CARGO_BIN_EXE_imgsearch")).arg("--db").arg(&db).arg("index").arg(folder).output();
        assert!(out.unwrap().status.success());
    }
    // Served: the photos folder only.
    let state = state_for(&db, vec![photos.clone()], 2 << 20);
    let store = imgsearch::store::Store::open(&db, "lite0", 1280).unwrap();
    let key_of = |p: &Path| store.by_path(&p.canonicalize().unwrap().to_string_lossy()).unwrap().unwrap().key;
    let (kept, dropped, foreign) = (key_of(&files[0]), key_of(&files[1]), key_of(&outside));
    let bearer = format!("Bearer {TOKEN}");
    let delete = |uri: String| {
        send(state.clone(), Request::delete(uri).header("authorization", bearer.as_str()).body(Body::empty()).unwrap())
    };
    assert_eq!(delete(format!("/api/images/{kept}")).await.status, StatusCode::NO_CONTENT);
    assert!(files[0].exists(), "removed from the index, the file stays");
    assert_eq!(delete(format!("/api/images/{dropped}?delete_file=true")).await.status, StatusCode::NO_CONTENT);
    assert!(!files[1].exists(), "asked for: the file under the served folder is deleted");
    let refused = delete(format!("/api/images/{foreign}?delete_file=true")).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.error().contains("not a file under a folder this server serves"), "{}", refused.error());
    assert!(outside.exists(), "a file outside the served folders is never deleted");
    let left = send(state.clone(), Request::get("/api/images?limit=100").body(Body::empty()).unwrap()).await.json();
    let keys: Vec<i64> = left["images"].as_array().unwrap().iter().map(|i| i["key"].as_i64().unwrap()).collect();
    assert!(keys.contains(&foreign) && !keys.contains(&kept) && !keys.contains(&dropped), "{keys:?}");
}

/// `serve --private`: reads need the token too (header or the page's
/// cookie), the probes do not, and `/?token=` trades the token for a
/// same-site cookie.
#[tokio::test]
async fn a_private_server_needs_the_token_for_reads_and_the_page_keeps_it_in_a_cookie() {
    let g = generated(1);
    let words = imgsearch::words::open(&imgsearch::models::models_dir(None), None).unwrap();
    let options =
        Options { roots: vec![g.photos.clone()], token: Some(TOKEN.into()), private: true, ..Default::default() };
    let library = Library::open(options.settings(&g.db), Access::Write).unwrap();
    let state = Arc::new(State::load(library, lite0_as_served(), words, options).unwrap());
    let get = |uri: &str, headers: &[(&str, &str)]| {
        let mut req = Request::get(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        send(state.clone(), req.body(Body::empty()).unwrap())
    };
    for uri in ["/", "/api/status", "/api/search?q=dog", "/api/images/1/thumbnail", "/metrics"] {
        let refused = get(uri, &[]).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{uri}");
        assert!(refused.error().contains("?token="), "{}", refused.error());
    }
    assert_eq!(get("/api/status", &[("authorization", "Bearer wrong")]).await.status, StatusCode::UNAUTHORIZED);
    for uri in ["/healthz", "/readyz"] {
        assert_eq!(get(uri, &[]).await.status, StatusCode::OK, "{uri}");
    }
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(get("/api/status", &[("authorization", &bearer)]).await.status, StatusCode::OK);
    assert_eq!(get("/?token=wrong", &[]).await.status, StatusCode::UNAUTHORIZED);
    let entry = get(&format!("/?token={TOKEN}"), &[]).await;
    assert_eq!(entry.status, StatusCode::SEE_OTHER);
    assert_eq!(entry.headers["location"], "/");
    let cookie = entry.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_owned();
    for uri in ["/", "/api/status", "/api/images/1/thumbnail"] {
        assert_eq!(get(uri, &[("cookie", &pair)]).await.status, StatusCode::OK, "{uri} with the cookie");
    }
}

/// Regression: a half-sent request held its connection forever (1100 of
/// them locked everyone out), and SIGTERM killed `serve` without letting
/// requests finish. Now headers must arrive in time, idle connections are
/// closed, and SIGTERM drains and exits cleanly.
#[test]
fn slow_clients_are_cut_off_and_sigterm_shuts_down_cleanly() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    crate::index::generated_photos(&photos, 1);
    let mut server =
        crate::store::Replica::serve(&tmp.path().join("db"), &["--header-timeout", "1", photos.to_str().unwrap()]);
    let addr = server.addr.clone();
    // Half a request: the server hangs up once the header timeout passes.
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n").unwrap();
    slow.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let start = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(start.elapsed() < std::time::Duration::from_secs(8), "closed after {:?}", start.elapsed());
    // A whole request is answered meanwhile.
    let mut ok = std::net::TcpStream::connect(&addr).unwrap();
    ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    ok.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // SIGTERM: stop accepting, finish, exit 0.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let (status, log) = server.wait();
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("shutting down"), "{log}");
    // One log line per request, with its status and latency.
    assert!(log.lines().any(|l| l.contains("request") && l.contains("/healthz") && l.contains("status=200")), "{log}");
}

/// Every error is one JSON shape, also the ones the router makes itself;
/// the OpenAPI document declares query parameters in the query and the
/// bearer scheme (checked by openapi-spec-validator in `.ci/run`).
#[tokio::test]
async fn errors_are_json_everywhere_and_the_openapi_document_is_sound() {
    let Generated { tmp: _tmp, photos: _photos, db: _db, files: _files, state } = generated(1);
    for (method, uri, status) in [
        ("GET", "/no/such/route", StatusCode::NOT_FOUND),
        ("POST", "/api/status", StatusCode::METHOD_NOT_ALLOWED),
        ("GET", "/api/search?k=many", StatusCode::BAD_REQUEST),
        ("GET", "/api/words", StatusCode::BAD_REQUEST),
    ] {
        let a = send(state.clone(), Request::builder().method(method).uri(uri).body(Body::empty()).unwrap()).await;
        assert_eq!(a.status, status, "{method} {uri}");
        assert!(a.content_type.starts_with("application/json"), "{method} {uri}: {}", a.content_type);
        assert!(!a.error().is_empty());
    }
    let doc = send(state, Request::get("/api/openapi.json").body(Body::empty()).unwrap()).await.json();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for op in item.as_object().unwrap().values() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap();
                let place = if path.contains(&format!("{{{name}}}")) { "path" } else { "query" };
                assert_eq!(p["in"], place, "{path} {name}");
            }
        }
    }
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert!(doc["paths"]["/api/images"]["post"]["security"].is_array());
    if let Some(out) = std::env::var_os("IMGSEARCH_OPENAPI_OUT") {
        std::fs::write(out, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    }
}

/// Regression: the same file uploaded again got a second key (both came
/// back in every search) with 201, its name was lost, and 201 had no
/// Location. Now the same bytes are the same image (200, any new label
/// recorded), the original name is kept, and `Location` names the image.
#[tokio::test]
async fn uploads_are_deduplicated_by_content_and_keep_their_name() {
    let Generated { tmp, photos: _photos, db: _db, files: _files, state } = generated(1);
    let picture = std::fs::read(crate::index::generated_photos(&tmp.path().join("new"), 3).pop().unwrap()).unwrap();
    let upload = |label: &'static str| {
        let (ct, body) = multipart(Some(("Beach day.png", &picture)), &[("label", label)]);
        let req = Request::post("/api/images")
            .header("content-type", ct)
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Body::from(body))
            .unwrap();
        let state = state.clone();
        async move {
            let resp = app(state).oneshot(req).await.unwrap();
            let status = resp.status();
            let location = resp.headers().get(header::LOCATION).map(|v| v.to_str().unwrap().to_owned());
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, location, serde_json::from_slice::<serde_json::Value>(&body).unwrap())
        }
    };
    let (status, location, first) = upload("trip").await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let key = first["key"].as_i64().unwrap();
    assert_eq!(location.as_deref(), Some(format!("/api/images/{key}").as_str()));
    assert!(first["file"].as_str().unwrap().starts_with("Beach_day-"), "{first}");
    let (status, _, again) = upload("beach").await;
    assert_eq!((status, again["key"].as_i64()), (StatusCode::OK, Some(key)), "{again}");
    assert_eq!(again["label"], "beach", "the new label is recorded");
    let status = send(state.clone(), Request::get("/api/status").body(Body::empty()).unwrap()).await.json();
    assert_eq!(status["images"], 2, "one indexed photo and one upload, not two");
}
