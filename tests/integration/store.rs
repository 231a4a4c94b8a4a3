//! One store suite, two implementations: the embedded store and PostgreSQL
//! with pgvector. The PostgreSQL runs need a server: `IMGSEARCH_TEST_PG`
//! names one (an admin URL; each test makes its own database), and
//! `.ci/run` always starts one (`scripts/pg-test-server`). They are ignored
//! by default and fail, naming what is missing, when run without a server.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use imgsearch::store::postgres::PgStore;
use imgsearch::store::{Filter, ImageStore, NewImage, NewModel, NewVector, Projection, Store, StoreQuery, TextSide};

use crate::pascal_images;

fn image(path: &str, hash: &str, e: Vec<f32>) -> NewImage {
    NewImage {
        path: path.into(),
        hash: hash.into(),
        size: 1,
        mtime: 2,
        label: "cat".into(),
        vector: NewVector::Embedding(e),
        meta: Default::default(),
    }
}

/// The admin URL of the test server. These tests are ignored by default;
/// run with `--ignored`, they fail (never pass silently) without a server.
fn pg_admin(test: &str) -> String {
    match std::env::var("IMGSEARCH_TEST_PG") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "{test} needs PostgreSQL: start one with `scripts/pg-test-server start /tmp/pg` \
             and export the URL it prints as IMGSEARCH_TEST_PG"
        ),
    }
}

/// A fresh database on the test server; returns its URL.
fn fresh_database(admin: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!("imgsearch_test_{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    let mut client = postgres::Client::connect(admin, postgres::NoTls).expect("the test server answers");
    client.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).unwrap();
    client.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    let (base, _) = admin.rsplit_once('/').expect("URL with a database name");
    format!("{base}/{name}")
}

/// A toy projection into a 2-d text space: the first two of `in_dim`
/// coordinates (times `scale`, so two fingerprints differ).
struct FirstTwo {
    scale: f32,
    in_dim: usize,
}

impl FirstTwo {
    /// Of the suite's 3-d embeddings.
    fn of_3(scale: f32) -> Self {
        Self { scale, in_dim: 3 }
    }
}

impl Projection for FirstTwo {
    fn in_dim(&self) -> usize {
        self.in_dim
    }
    fn out_dim(&self) -> usize {
        2
    }
    fn fingerprint(&self) -> [u8; 16] {
        [self.scale as u8; 16]
    }
    fn project(&self, embeddings: &[f32]) -> imgsearch::Result<Vec<f32>> {
        Ok(embeddings.chunks_exact(self.in_dim).flat_map(|r| [r[0] * self.scale, r[1] * self.scale]).collect())
    }
}

/// The rest of the suite, on the store the first part left (`/moved/b.jpg`
/// along y, `/c.jpg` along x, `/copy.jpg` at (3, 4, 0)): class-weighted
/// search, text sides, models and uploads.
fn text_sides_models_and_uploads(mut s: Box<dyn ImageStore>) {
    let path = |hits: Vec<(imgsearch::store::ImageRecord, f32)>| hits[0].0.path.clone();
    // Weights that stress y move (1, 0.3, 0) from x towards (3, 4, 0).
    assert_eq!(path(s.search(&StoreQuery::Cnn(&[1.0, 0.3, 0.0]), 1, &Filter::default()).unwrap()), "/c.jpg");
    let weighted = StoreQuery::Weighted { embedding: &[1.0, 0.3, 0.0], weights: &[1.0, 10.0, 1.0] };
    assert_eq!(path(s.search(&weighted, 1, &Filter::default()).unwrap()), "/copy.jpg");
    assert_eq!(path(s.search(&StoreQuery::Cnn(&[0.0, 1.0, 0.0]), 1, &Filter::default()).unwrap()), "/moved/b.jpg");

    // A text side: every image gets its vector from the stored embeddings.
    let zero_shot = FirstTwo::of_3(1.0);
    let side = TextSide { name: "zero-shot", model_id: None, projection: &zero_shot };
    assert!(s.sync_text_side(&side, None).unwrap() >= 3, "every content projected");
    assert_eq!(s.sync_text_side(&side, None).unwrap(), 0, "nothing left to project");
    assert!(s.text_side_len(&side).unwrap() >= 3);
    let hits = s.search(&StoreQuery::Text { side, vector: &[0.6, 0.8] }, 3, &Filter::default()).unwrap();
    assert_eq!(hits[0].0.path, "/copy.jpg", "searched in the text side's own space");
    assert!(hits[0].1 < 1e-3, "distance {}", hits[0].1);

    // Models: none until one is saved; then it is current, with its side's vectors.
    assert_eq!(s.model_id().unwrap(), None);
    assert!(s.model().unwrap().is_none());
    let trained = FirstTwo::of_3(2.0);
    let new = NewModel { info: "{\"m\": 1}", weights: b"weights", report: "{}" };
    let saved = s.save_model(&new, &trained).unwrap();
    assert!(saved.rows >= 3 && !saved.location.is_empty(), "{saved:?}");
    assert_eq!(s.model_id().unwrap(), Some(saved.id));
    let model = s.model().unwrap().expect("the saved model");
    assert_eq!((model.id, model.info.as_str(), model.weights.as_slice()), (saved.id, "{\"m\": 1}", &b"weights"[..]));
    let side = TextSide { name: "trained", model_id: Some(saved.id), projection: &trained };
    assert_eq!(
        path(s.search(&StoreQuery::Text { side, vector: &[1.0, 0.0] }, 1, &Filter::default()).unwrap()),
        "/c.jpg"
    );

    // Uploads: kept with their bytes by a store that keeps them, refused by one that keeps files.
    let upload = image("db:uploads/cat/u.jpg", "hu", vec![1.0, 1.0, 1.0]);
    match s.keeps_uploads() {
        true => {
            let key = s.add_upload(&upload, b"jpeg bytes").unwrap();
            assert_eq!(s.by_key(key).unwrap().unwrap().path, "db:uploads/cat/u.jpg");
            assert_eq!(s.blob("hu").unwrap().as_deref(), Some(&b"jpeg bytes"[..]));
        }
        false => {
            let err = s.add_upload(&upload, b"jpeg bytes").unwrap_err().to_string();
            assert!(err.contains("keeps uploads as files"), "{err}");
        }
    }
}

/// Filters run inside the search: `k` results whenever `k` images pass,
/// on every search kind.
fn filters(mut s: Box<dyn ImageStore>) {
    use imgsearch::metadata::{unix_seconds, PhotoMeta};
    // 40 images around the x axis: under /f/a or /f/b, taken in 2022 or
    // 2023, by a Canon or an iPhone (or no camera).
    let images: Vec<NewImage> =
        (0..40)
            .map(|i| {
                let folder = if i % 2 == 0 { "a" } else { "b" };
                let year = if i % 4 < 2 { 2022 } else { 2023 };
                let camera = match i % 5 {
                    0 => Some("Canon EOS 5D".to_owned()),
                    1 | 2 => Some("Apple iPhone 12".to_owned()),
                    _ => None,
                };
                let meta = PhotoMeta { taken: Some(unix_seconds(year, 6, 1) + i), camera, width: None, height: None };
                NewImage {
                    label: folder.into(),
                    meta,
                    ..image(&format!("/f/{folder}/{i}.jpg"), &format!("f{i}"), vec![1.0, i as f32 * 0.01, 0.5])
                }
            })
            // Neighbours of /f/a that are not under it: a sibling with a longer
            // name, one just past "/f/a/" in byte order, one just before it.
            .chain(["/f/ab/40.jpg", "/f/a0/41.jpg", "/f/a.jpg"].into_iter().enumerate().map(|(j, path)| NewImage {
                label: "c".into(),
                ..image(path, &format!("g{j}"), vec![1.0, 0.001, 0.5])
            }))
            .collect();
    s.add_batch(&images).unwrap();
    let matches = |f: &Filter| images.iter().filter(|i| f.matches(&s.by_path(&i.path).unwrap().unwrap())).count();
    let filters = [
        Filter { under: Some("/f/a".into()), ..Default::default() },
        Filter { label: Some("b".into()), ..Default::default() },
        Filter { after: Some(unix_seconds(2023, 1, 1)), ..Default::default() },
        Filter { before: Some(unix_seconds(2023, 1, 1)), camera: Some("iphone".into()), ..Default::default() },
        Filter {
            under: Some("/f/b/".into()),
            after: Some(unix_seconds(2023, 1, 1)),
            camera: Some("CANON".into()),
            ..Default::default()
        },
        Filter { under: Some("/f/a".into()), label: Some("b".into()), ..Default::default() },
    ];
    let zero_shot = FirstTwo::of_3(1.0);
    let side = TextSide { name: "zero-shot", model_id: None, projection: &zero_shot };
    s.sync_text_side(&side, None).unwrap();
    let queries = [
        StoreQuery::Cnn(&[1.0, 0.0, 0.5]),
        StoreQuery::Weighted { embedding: &[1.0, 0.0, 0.5], weights: &[1.0, 2.0, 1.0] },
        StoreQuery::Text { side, vector: &[1.0, 0.1] },
    ];
    for f in &filters {
        let passing = matches(f);
        for q in &queries {
            let hits = s.search(q, 5, f).unwrap();
            assert_eq!(hits.len().min(5), passing.min(5), "{f:?}: {passing} pass");
            assert!(hits.iter().all(|(r, _)| f.matches(r)), "{f:?}: every hit passes");
            assert!(hits.windows(2).all(|w| w[0].1 <= w[1].1), "{f:?}: nearest first");
        }
    }
    // The nearest that pass, not any that pass: on x, /f/a/0.jpg (0, 0.5 off x) leads the folder.
    let nearest = s.search(&queries[0], 3, &filters[0]).unwrap();
    let paths: Vec<&str> = nearest.iter().take(3).map(|(r, _)| r.path.as_str()).collect();
    assert_eq!(paths, ["/f/a/0.jpg", "/f/a/2.jpg", "/f/a/4.jpg"]);
    assert_eq!(matches(&filters[5]), 0, "a folder and another label: nothing");
    assert_eq!(matches(&filters[4]), 2, "the narrow filter lets two through");
    // Listing by date taken, filtered, a page at a time: the same order as the whole list sorted.
    use imgsearch::store::{Cursor, Sort};
    let f = &filters[1];
    let want = imgsearch::store::list_records(s.all().unwrap(), Sort::Date, None, usize::MAX, f);
    assert_eq!(want.len(), 20);
    let (mut got, mut cursor) = (Vec::new(), None);
    loop {
        let page = s.list(Sort::Date, cursor, 7, f).unwrap();
        assert!(page.iter().all(|r| f.matches(r)));
        let Some(last) = page.last() else { break };
        cursor = Some(Cursor::after(last, Sort::Date));
        got.extend(page.iter().map(|r| r.key));
    }
    assert_eq!(got, want.iter().map(|r| r.key).collect::<Vec<_>>());
    assert!(want.windows(2).all(|w| w[0].meta.taken >= w[1].meta.taken), "newest taken first");
    // Photo facts are kept and can be filled in later.
    let key = s.by_path("/f/a/0.jpg").unwrap().unwrap().key;
    let later = PhotoMeta { taken: Some(7), camera: Some("Nikon D90".into()), width: Some(640), height: Some(480) };
    s.update_meta(&[(key, later.clone())]).unwrap();
    assert_eq!(s.by_key(key).unwrap().unwrap().meta, later);
    assert_eq!(s.by_path("/f/b/1.jpg").unwrap().unwrap().meta.camera.as_deref(), Some("Apple iPhone 12"));
}

/// What every store must do.
fn shared_suite(open: &dyn Fn(&str) -> imgsearch::Result<Box<dyn ImageStore>>) {
    let mut s = open("lite0").unwrap();
    assert!(s.is_empty().unwrap());
    let keys = s
        .add_batch(&[
            image("/a.jpg", "ha", vec![3.0, 4.0, 0.0]),
            image("/b.jpg", "hb", vec![0.0, 2.0, 0.0]),
            image("/c.jpg", "hc", vec![0.0, 0.0, 1.0]),
        ])
        .unwrap();
    assert_eq!(keys.len(), 3);
    let a = s.by_path("/a.jpg").unwrap().unwrap();
    assert_eq!(a.key, keys[0]);
    assert_eq!(s.by_key(keys[1]).unwrap().unwrap().path, "/b.jpg");
    assert!(s.by_key(-5).unwrap().is_none() && s.by_path("/nope.jpg").unwrap().is_none());
    let e = s.embedding(&a).unwrap();
    assert!(e.iter().zip([3.0, 4.0, 0.0]).all(|(x, y)| (x - y).abs() < 1e-5), "raw embedding back: {e:?}");

    // Identical content shares its vector.
    let copy = NewImage { vector: NewVector::SameAs { row: a.row, norm: a.norm }, ..image("/copy.jpg", "ha", vec![]) };
    s.add_batch(&[copy]).unwrap();
    assert_eq!(s.by_hash("ha").unwrap().len(), 2);
    assert_eq!(s.len().unwrap(), 4);
    assert!(s.vector_rows().unwrap() >= 3, "one vector per content at least");
    assert_eq!(s.blob("ha").unwrap(), None, "no upload was stored");

    // Nearest first, by angular distance; the copy ties with its original.
    let hits = s.nearest(&[1.0, 1.0, 0.0], 3).unwrap();
    let paths: Vec<&str> = hits.iter().map(|(r, _)| r.path.as_str()).collect();
    assert_eq!(paths[..2].iter().filter(|p| ["/a.jpg", "/copy.jpg"].contains(p)).count(), 2, "{paths:?}");
    assert_eq!(paths[2], "/b.jpg");
    let want = (2.0f32 - 2.0 * (0.6 + 0.8) / 2f32.sqrt()).sqrt();
    assert!((hits[0].1 - want).abs() < 1e-3, "angular distance {} vs {want}", hits[0].1);
    assert!(hits.windows(2).all(|w| w[0].1 <= w[1].1));
    assert!(s.nearest(&[0.0, 0.0, 0.0], 3).unwrap().is_empty(), "a zero query has no direction");

    // A move keeps the key; re-adding a known path replaces its content.
    let b = s.by_path("/b.jpg").unwrap().unwrap();
    s.update_location(b.key, "/moved/b.jpg", 1, 3, "dog").unwrap();
    let moved = s.by_path("/moved/b.jpg").unwrap().unwrap();
    assert_eq!((moved.key, moved.label.as_str()), (b.key, "dog"));
    let again = s.add_batch(&[image("/c.jpg", "hc2", vec![1.0, 0.0, 0.0])]).unwrap();
    assert_eq!(again, [keys[2]], "same path, same key");
    assert_eq!(s.nearest(&[1.0, 0.0, 0.0], 1).unwrap()[0].0.path, "/c.jpg");

    // Deleting the original keeps the copy's vector.
    s.delete(&[a.key]).unwrap();
    let copy = s.by_path("/copy.jpg").unwrap().unwrap();
    assert!((s.embedding(&copy).unwrap()[1] - 4.0).abs() < 1e-5);
    assert_eq!(s.len().unwrap(), 3);
    drop(s);

    // It persists, and another backbone is refused.
    let s = open("lite0").unwrap();
    assert_eq!(
        s.all().unwrap().iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        ["/moved/b.jpg", "/c.jpg", "/copy.jpg"]
    );
    // Browsing pages newest first, the last key seen as the cursor.
    let paths = |v: Vec<imgsearch::store::ImageRecord>| v.into_iter().map(|r| r.path).collect::<Vec<_>>();
    let first = s.recent(None, 2).unwrap();
    assert_eq!(paths(first.clone()), ["/copy.jpg", "/c.jpg"]);
    assert_eq!(paths(s.recent(Some(first[1].key), 2).unwrap()), ["/moved/b.jpg"]);
    assert!(s.recent(Some(b.key), 2).unwrap().is_empty());
    drop(s);
    text_sides_models_and_uploads(open("lite0").unwrap());
    filters(open("lite0").unwrap());
    let err = open("lite2").err().expect("another backbone is refused").to_string();
    assert!(err.contains("--backbone lite0"), "{err}");
}

#[test]
fn memory_store_passes_the_shared_suite() {
    let place = imgsearch::store::memory::MemoryPlace::default();
    shared_suite(&|backbone| Ok(Box::new(imgsearch::store::memory::MemoryStore::open(&place, backbone, 3)?)));
}

#[test]
fn embedded_store_passes_the_shared_suite() {
    let dir = tempfile::tempdir().unwrap();
    shared_suite(&|backbone| Ok(Box::new(Store::open(dir.path(), backbone, 3)?)));
}

#[test]
#[ignore = "needs PostgreSQL (IMGSEARCH_TEST_PG, see scripts/pg-test-server); CI runs it with --ignored"]
fn postgres_store_passes_the_shared_suite() {
    let admin = pg_admin("postgres_store_passes_the_shared_suite");
    let url = fresh_database(&admin);
    shared_suite(&|backbone| Ok(Box::new(PgStore::open(&url, backbone, 3)?)));
}

#[test]
#[ignore = "needs PostgreSQL (IMGSEARCH_TEST_PG, see scripts/pg-test-server); CI runs it with --ignored"]
fn postgres_processes_share_one_database_without_duplicates() {
    let admin = pg_admin("postgres_processes_share_one_database_without_duplicates");
    let url = fresh_database(&admin);
    // Two writers over overlapping files, at once.
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut s = PgStore::open(&url, "lite0", 3).unwrap();
                for round in 0..10 {
                    let batch: Vec<NewImage> = (0..20)
                        .map(|i| {
                            let n = (round * 20 + i + w * 100) % 300;
                            image(&format!("/shared/{n}.jpg"), &format!("h{}", n % 150), vec![1.0, n as f32, 0.5])
                        })
                        .collect();
                    s.add_batch(&batch).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut count = |sql: &str| client.query_one(sql, &[]).unwrap().get::<_, i64>(0);
    assert_eq!(count("SELECT COUNT(*) FROM images"), count("SELECT COUNT(DISTINCT path) FROM images"));
    assert_eq!(
        count("SELECT COUNT(*) FROM vectors"),
        count("SELECT COUNT(DISTINCT hash) FROM images"),
        "one vector per content"
    );

    // What one process adds and deletes, another sees.
    let mut a = PgStore::open(&url, "lite0", 3).unwrap();
    let b = PgStore::open(&url, "lite0", 3).unwrap();
    let key = a.add_batch(&[image("/new.jpg", "fresh", vec![0.0, 0.0, 9.0])]).unwrap()[0];
    assert_eq!(b.nearest(&[0.0, 0.0, 1.0], 1).unwrap()[0].0.key, key);
    a.delete(&[key]).unwrap();
    assert!(b.by_key(key).unwrap().is_none());
}

#[test]
#[ignore = "needs PostgreSQL (IMGSEARCH_TEST_PG, see scripts/pg-test-server); CI runs it with --ignored"]
fn postgres_narrow_filters_rank_on_half_precision_and_answer_exactly() {
    let admin = pg_admin("postgres_narrow_filters_rank_on_half_precision_and_answer_exactly");
    let url = fresh_database(&admin);
    let dim = 16;
    let mut next = {
        let mut state = 0x2545F4914F6CDD1D_u64;
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        }
    };
    // 400 images, a tenth under /few: a filter that narrow is scored on
    // the images' own rows, not walked.
    let vectors: Vec<Vec<f32>> = (0..400).map(|_| (0..dim).map(|_| next()).collect()).collect();
    let images: Vec<NewImage> = (0..400)
        .map(|i| {
            let folder = if i % 10 == 3 { "few" } else { "many" };
            image(&format!("/{folder}/{i}.jpg"), &format!("h{i}"), vectors[i].clone())
        })
        .collect();
    let mut s = PgStore::open(&url, "lite0", dim).unwrap();
    s.add_batch(&images).unwrap();
    // The planner learns the tables' sizes at once, not a minute later.
    s.upkeep().unwrap();
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut rows = |table: &str| -> f32 {
        client.query_one("SELECT reltuples FROM pg_class WHERE relname = $1", &[&table]).unwrap().get(0)
    };
    assert_eq!(rows("images"), 400.0, "analyzed");
    // So is a text side when it is filled.
    let first_two = FirstTwo { scale: 1.0, in_dim: dim };
    let side = TextSide { name: "zero-shot", model_id: None, projection: &first_two };
    assert_eq!(s.sync_text_side(&side, None).unwrap(), 400);
    let stats: i64 = client
        .query_one("SELECT COUNT(*) FROM pg_stats WHERE tablename = 'text_vectors' AND attname = 'fingerprint'", &[])
        .unwrap()
        .get(0);
    assert_eq!(stats, 1, "text side analyzed (its row count alone comes with its index)");
    let few = Filter { under: Some("/few".into()), ..Default::default() };
    let many = Filter { under: Some("/many".into()), ..Default::default() };
    let weights: Vec<f32> = (0..dim).map(|d| 0.5 + d as f32 / dim as f32).collect();
    let same_as_exact = |s: &PgStore, what: &str| {
        for q in 0..20 {
            let query = &vectors[q * 7];
            let side = TextSide { name: "zero-shot", model_id: None, projection: &first_two };
            for sq in [
                StoreQuery::Cnn(query),
                StoreQuery::Weighted { embedding: query, weights: &weights },
                StoreQuery::Text { side, vector: &query[..2] },
            ] {
                // k = 3: the half-precision ranking keeps 12 of the 40 passing.
                let found = s.search(&sq, 3, &few).unwrap();
                s.set_exact(true);
                let truth = s.search(&sq, 3, &few).unwrap();
                s.set_exact(false);
                let keys =
                    |hits: &[(imgsearch::store::ImageRecord, f32)]| hits.iter().map(|(r, _)| r.key).collect::<Vec<_>>();
                assert_eq!(keys(&found), keys(&truth), "{what}: query {q}");
                for ((_, d), (_, t)) in found.iter().zip(&truth) {
                    assert!((d - t).abs() < 1e-6, "{what}: full-precision distances ({d} vs {t})");
                }
                assert!(found.iter().all(|(r, _)| r.path.starts_with("/few/")));
            }
            // A broad filter walks the index (the images' own, for the
            // image side, checked on each row it reaches); at 400 rows
            // the walk's list of 100 finds the true nearest.
            let side = TextSide { name: "zero-shot", model_id: None, projection: &first_two };
            for sq in [StoreQuery::Cnn(query), StoreQuery::Text { side, vector: &query[..2] }] {
                let found = s.search(&sq, 5, &many).unwrap();
                s.set_exact(true);
                let truth = s.search(&sq, 5, &many).unwrap();
                s.set_exact(false);
                assert_eq!(found.len(), 5, "{what}: query {q}");
                for ((r, d), (t, e)) in found.iter().zip(&truth) {
                    assert_eq!(r.key, t.key, "{what}: query {q}, walked");
                    assert!((d - e).abs() < 1e-6, "{what}: full-precision distances ({d} vs {e})");
                    assert!(r.path.starts_with("/many/"));
                }
            }
        }
    };
    same_as_exact(&s, "fresh store");
    // A server keeps the vectors it scores: the same answers, ranked in
    // its own int8 copy and scored again by the database.
    let kept = PgStore::open(&url, "lite0", dim).unwrap();
    kept.keep_vectors();
    same_as_exact(&kept, "vectors kept");
    same_as_exact(&kept, "vectors kept, second round");
    // Another process adds an image under /few: the next search sees it
    // (which images pass always comes from the database).
    let mut other = PgStore::open(&url, "lite0", dim).unwrap();
    let fresh = vectors[7].iter().map(|x| x * 2.0).collect();
    let key = other.add_batch(&[image("/few/new.jpg", "fresh", fresh)]).unwrap()[0];
    let hits = kept.search(&StoreQuery::Cnn(&vectors[7]), 2, &few).unwrap();
    assert_eq!(hits.iter().map(|(r, _)| r.key).filter(|k| *k == key).count(), 1, "the new image found");
    other.delete(&[key]).unwrap();
    assert!(kept.search(&StoreQuery::Cnn(&vectors[7]), 3, &few).unwrap().iter().all(|(r, _)| r.key != key));
    // A store from before schema 9 kept a 64-digit hash out of line (a
    // TOAST read each time); the migration brings it back into the row.
    // These rows are narrow (16-d): a 2 KB label kept in the row makes
    // this one as wide as a 1280-d row is to PostgreSQL.
    client
        .batch_execute(
            "ALTER TABLE images ALTER COLUMN hash SET STORAGE EXTENDED, ALTER COLUMN label SET STORAGE PLAIN",
        )
        .unwrap();
    let long = NewImage {
        label: "x".repeat(2100),
        ..image("/many/long.jpg", &"0123456789abcdef".repeat(4), vectors[9].clone())
    };
    s.add_batch(&[long]).unwrap();
    let out_of_line = |client: &mut postgres::Client| -> i64 {
        client
            .query_one("SELECT COUNT(*) FROM images WHERE pg_column_toast_chunk_id(hash) IS NOT NULL", &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(out_of_line(&mut client), 1, "a long hash in a wide row goes out of line");
    // A store from before schema 6 gets its half-precision column filled
    // (and, at 7, its index built again) when opened.
    drop(s);
    client
        .batch_execute(
            "ALTER TABLE images DROP COLUMN half, DROP COLUMN content; DROP INDEX IF EXISTS images_label;
             DELETE FROM schema_version WHERE version >= 6;",
        )
        .unwrap();
    let s = PgStore::open(&url, "lite0", dim).unwrap();
    let missing: i64 = client.query_one("SELECT COUNT(*) FROM images WHERE half IS NULL", &[]).unwrap().get(0);
    assert_eq!(missing, 0, "every row migrated");
    // At 10, the image search's index is over the images' own rows (and
    // the one over `vectors`, built again at 7, is gone).
    let index: Vec<(String, String)> = client
        .query("SELECT indexname::text, indexdef FROM pg_indexes WHERE indexdef LIKE '%USING hnsw%'", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get(1)))
        .filter(|(name, _)| !name.starts_with("text_hnsw"))
        .collect();
    assert!(
        index.len() == 1
            && index[0].0 == "images_half_hnsw"
            && index[0].1.contains("halfvec_cosine_ops")
            && index[0].1.contains("ef_construction='128'"),
        "one HNSW index for images, over their rows: {index:?}"
    );
    // At 9, the contents' index covers what filters read (and replaces the plain one).
    let indexes: Vec<String> = client
        .query("SELECT indexdef FROM pg_indexes WHERE tablename = 'images' AND indexdef LIKE '%(hash)%'", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        indexes.len() == 1 && indexes[0].contains("INCLUDE (path, label, taken, camera)"),
        "one covering index by content: {indexes:?}"
    );
    // ... and the text columns stay in the row (a 64-digit hash out of line cost a TOAST read).
    let main: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'images'::regclass
             AND attname IN ('path', 'hash', 'label', 'camera') AND attstorage = 'm'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(main, 4, "path, hash, label and camera kept in the row");
    assert_eq!(out_of_line(&mut client), 0, "the rows stored before brought back in");
    same_as_exact(&s, "migrated store");
}

#[test]
#[ignore = "needs PostgreSQL (IMGSEARCH_TEST_PG, see scripts/pg-test-server); CI runs it with --ignored"]
fn postgres_faults_are_named_and_survived() {
    // A server that is not there: the error names the host.
    let err = PgStore::open("postgres://nobody@127.0.0.1:9/db", "lite0", 3).err().unwrap().to_string();
    assert!(err.contains("127.0.0.1:9") && err.contains("running"), "{err}");

    let admin = pg_admin("postgres_faults_are_named_and_survived");
    let url = fresh_database(&admin);
    let mut s = PgStore::open(&url, "lite0", 3).unwrap();
    s.add_batch(&[image("/1.jpg", "h1", vec![1.0, 0.0, 0.0])]).unwrap();
    // The server drops every connection of this database mid-run.
    let dbname = url.rsplit('/').next().unwrap();
    let mut killer = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
    let killed = killer
        .query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", &[&dbname])
        .unwrap()
        .len();
    assert!(killed >= 1, "the pool held a connection");
    s.add_batch(&[image("/2.jpg", "h2", vec![0.0, 1.0, 0.0]), image("/1.jpg", "h1", vec![1.0, 0.0, 0.0])]).unwrap();
    assert_eq!(s.len().unwrap(), 2, "resumed after reconnecting, nothing lost or doubled");
    drop(s);

    // A schema from a newer imgsearch is refused, naming both versions.
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client.execute("INSERT INTO schema_version VALUES (99)", &[]).unwrap();
    let err = PgStore::open(&url, "lite0", 3).err().unwrap().to_string();
    assert!(
        err.contains("version 99") && err.contains(&format!("version {}", imgsearch::store::postgres::SCHEMA_VERSION)),
        "{err}"
    );
}

#[test]
#[ignore = "needs PostgreSQL (IMGSEARCH_TEST_PG, see scripts/pg-test-server); CI runs it with --ignored"]
fn postgres_keeps_models_joint_embeddings_and_uploads() {
    let admin = pg_admin("postgres_keeps_models_joint_embeddings_and_uploads");
    let url = fresh_database(&admin);
    let mut s = PgStore::open(&url, "lite0", 3).unwrap();
    s.add_batch(&[
        image("/a.jpg", "ha", vec![3.0, 4.0, 0.0]),
        image("/b.jpg", "hb", vec![0.0, 2.0, 0.0]),
        image("/c.jpg", "hc", vec![1.0, 0.0, 5.0]),
    ])
    .unwrap();
    assert!(s.model_id().unwrap().is_none() && s.model().unwrap().is_none());

    // Class weights: (1, 1, 0) hides the third component, so c (1, 0, 5) is
    // the nearest to (1, 0, 0), though unweighted a is.
    let paths =
        |hits: Vec<(imgsearch::store::ImageRecord, f32)>| hits.into_iter().map(|(r, _)| r.path).collect::<Vec<_>>();
    assert_eq!(paths(s.nearest(&[1.0, 0.0, 0.0], 3).unwrap()), ["/a.jpg", "/c.jpg", "/b.jpg"]);
    let weighted = s.nearest_weighted(&[1.0, 0.0, 0.0], &[1.0, 1.0, 0.0], 3, &Default::default()).unwrap();
    assert_eq!(paths(weighted.clone()), ["/c.jpg", "/a.jpg", "/b.jpg"]);
    assert!(weighted[0].1.abs() < 1e-3, "c is (1, 0) once weighted: {}", weighted[0].1);

    // A model: the joint space is the first two components of the raw embedding.
    let first_two =
        |x: &[f32]| -> imgsearch::Result<Vec<f32>> { Ok(x.chunks_exact(3).flat_map(|r| [r[0], r[1]]).collect()) };
    let (id, rows) = s.save_model("{\"m\": 1}", b"weights", "{}", 2, &first_two).unwrap();
    assert_eq!((s.model_id().unwrap(), rows, s.joint_len().unwrap()), (Some(id), 3, 3));
    let m = s.model().unwrap().unwrap();
    assert_eq!((m.id, m.info.as_str(), m.weights.as_slice()), (id, "{\"m\": 1}", b"weights".as_slice()));
    let joint = s.nearest_joint(id, &[1.0, 0.0], 3, &Default::default()).unwrap();
    assert_eq!(paths(joint.clone()), ["/c.jpg", "/a.jpg", "/b.jpg"]);
    assert!(joint[0].1.abs() < 1e-3);

    // An image added later gets its joint embedding from whoever adds it; once.
    s.add_batch(&[image("/d.jpg", "hd", vec![-1.0, 0.0, 0.0])]).unwrap();
    assert_eq!(s.sync_joint(id, 2, Some(&["hd".to_owned()]), &first_two).unwrap(), 1);
    assert_eq!(s.sync_joint(id, 2, None, &first_two).unwrap(), 0);
    assert_eq!(s.nearest_joint(id, &[-1.0, 0.0], 1, &Default::default()).unwrap()[0].0.path, "/d.jpg");

    // Retraining replaces every joint embedding at once; a process still on
    // the old model cannot add rows to the new space.
    let all_three = |x: &[f32]| -> imgsearch::Result<Vec<f32>> { Ok(x.to_vec()) };
    let (id2, rows) = s.save_model("{}", b"w2", "{}", 3, &all_three).unwrap();
    assert!(id2 > id && rows == 4);
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let left: i64 = client.query_one("SELECT COUNT(*) FROM joint WHERE model = $1", &[&id]).unwrap().get(0);
    assert_eq!((left, s.joint_len().unwrap()), (0, 4), "the old model's rows are gone");
    assert_eq!(s.nearest_joint(id2, &[0.0, 0.0, 1.0], 1, &Default::default()).unwrap()[0].0.path, "/c.jpg");
    s.add_batch(&[image("/e.jpg", "he", vec![0.0, -1.0, 0.0])]).unwrap();
    assert_eq!(s.sync_joint(id, 2, None, &first_two).unwrap(), 0, "a stale model writes nothing");
    assert_eq!(s.sync_joint(id2, 3, None, &all_three).unwrap(), 1);

    // An upload keeps its bytes in the database until its image goes.
    let up = NewImage { path: "db:uploads/cat/1234.jpg".into(), ..image("", "hup", vec![0.5, 0.5, 0.5]) };
    let key = s.add_upload(&up, b"jpeg bytes").unwrap();
    assert_eq!(s.by_key(key).unwrap().unwrap().path, "db:uploads/cat/1234.jpg");
    assert_eq!(s.blob("hup").unwrap().as_deref(), Some(b"jpeg bytes".as_slice()));
    assert_eq!(s.add_upload(&up, b"jpeg bytes").unwrap(), key, "the same upload again is the same image");
    assert_eq!(s.sync_joint(id2, 3, None, &all_three).unwrap(), 1);
    let before = s.joint_len().unwrap();
    s.delete(&[key]).unwrap();
    assert!(s.blob("hup").unwrap().is_none());
    assert_eq!(s.joint_len().unwrap(), before - 1, "its joint embedding went with it");
}

/// Runs the binary with `--db db`; its stdout, or a failure naming stderr.
fn run(db: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_imgsearch")).args(["--db", db]).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A folder of label folders with a few Pascal photos.
fn small_collection(per_label: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for label in ["cat", "bottle"] {
        let mut files: Vec<_> =
            std::fs::read_dir(pascal_images().join(label)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        std::fs::create_dir_all(dir.path().join(label)).unwrap();
        for f in files.iter().take(per_label) {
            std::fs::copy(f, dir.path().join(label).join(f.file_name().unwrap())).unwrap();
        }
    }
    dir
}

/// A quick, seeded training recipe on the word vectors.
const QUICK_TRAIN: &[&str] = &["--encoder", "glove", "--no-captions", "--epochs", "5", "--hidden", "64", "--json"];

#[test]
#[ignore = "needs PostgreSQL (IMGSEARCH_TEST_PG, see scripts/pg-test-server); CI runs it with --ignored"]
fn every_command_runs_on_postgres_with_the_embedded_store_s_answers() {
    // Needs models.
    let admin = pg_admin("every_command_runs_on_postgres_with_the_embedded_store_s_answers");
    let url = fresh_database(&admin);
    let dir = small_collection(4);
    let embedded = tempfile::tempdir().unwrap();
    let embedded = embedded.path().join("db");
    let local = embedded.to_str().unwrap();
    let folder = dir.path().to_str().unwrap();
    assert!(run(&url, &["index", folder]).contains("indexed 8 new"));
    assert!(run(&url, &["index", folder]).contains("indexed 0 new, 8 unchanged"));
    run(local, &["index", folder]);
    let json = |s: String| -> serde_json::Value { serde_json::from_str(&s).unwrap() };
    // The same answers from both stores, for every kind of search.
    let same = |args: &[&str]| {
        let (pg, emb) = (json(run(&url, args)), json(run(local, args)));
        let (pg, emb) = (pg["results"].as_array().unwrap(), emb["results"].as_array().unwrap());
        assert_eq!(pg.len(), emb.len(), "{args:?}");
        for (p, e) in pg.iter().zip(emb) {
            assert!(
                (p["distance"].as_f64().unwrap() - e["distance"].as_f64().unwrap()).abs() < 1e-3,
                "{args:?}: {p} vs {e}"
            );
        }
        // Paths may only differ among ties.
        let paths = |v: &[serde_json::Value]| {
            v.iter().map(|r| r["path"].as_str().unwrap().to_owned()).collect::<std::collections::BTreeSet<_>>()
        };
        assert_eq!(paths(pg), paths(emb), "{args:?}");
        pg.clone()
    };
    let query = dir.path().join("cat").read_dir().unwrap().next().unwrap().unwrap().path().canonicalize().unwrap();
    let q = query.to_str().unwrap();
    let hits = same(&["search", "--image", q, "-k", "8", "--json"]);
    assert_eq!(hits[0]["path"].as_str().unwrap(), q);
    same(&["search", "--image", q, "--class", "tabby", "-k", "8", "--json"]);
    same(&["search", "--image", q, "--exact", "-k", "8", "--json"]);
    // Near-duplicates through each store's own nearest-neighbour search: the same groups.
    let groups = |db: &str| {
        let v = json(run(db, &["duplicates", "--max-distance", "0.9", "--json"]));
        v["groups"].as_array().unwrap().iter().map(|g| g["images"].as_array().unwrap().len()).collect::<Vec<_>>()
    };
    assert_eq!(groups(&url), groups(local));

    // Before training, text search and tags answer zero-shot on both, alike.
    same(&["search", "--text", "a cat", "-k", "8", "--json"]);
    let zero_shot = |db: &str| json(run(db, &["tag", q, "-k", "5", "--json"]));
    let (pg_zs, emb_zs) = (zero_shot(&url), zero_shot(local));
    assert_eq!(pg_zs["side"], "zero-shot");
    assert_eq!(pg_zs["words"], emb_zs["words"]);
    let out = Command::new(env!("CARGO_BIN_EXE_imgsearch"))
        .args(["--db", &url, "search", "--text", "cat", "--text-side", "trained"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("imgsearch train"), "{err}");

    // Train on both (same seed, same embeddings): the model lands in the database.
    let mut train = vec!["train", "--data", folder];
    train.extend_from_slice(QUICK_TRAIN);
    let report = json(run(&url, &train));
    assert_eq!(report["joint_vectors"], 8);
    assert!(report["model"].as_str().unwrap().contains("(model 1)"), "{report}");
    run(local, &train);
    // Every text side, the default (fused) included, gives the same answers on both.
    same(&["search", "--text", "cat", "-k", "8", "--json"]);
    same(&["search", "--text", "cat", "-k", "8", "--text-side", "zero-shot", "--json"]);
    same(&["search", "--text", "cat", "-k", "8", "--text-side", "trained", "--json"]);
    same(&["search", "--image", q, "--space", "joint", "-k", "8", "--text-side", "trained", "--json"]);
    let tags = |db: &str| json(run(db, &["tag", q, "-k", "5", "--text-side", "trained", "--json"]));
    let (pg_tags, emb_tags) = (tags(&url), tags(local));
    for (p, e) in pg_tags["words"].as_array().unwrap().iter().zip(emb_tags["words"].as_array().unwrap()) {
        assert_eq!(p["word"], e["word"]);
    }
    assert_eq!(pg_tags["classes"], emb_tags["classes"]);

    // Images indexed after training get their joint embedding.
    let extra = dir.path().join("cat").join("copy-of-bottle.jpg");
    let bottle = dir.path().join("bottle").read_dir().unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&bottle).unwrap();
    bytes.extend_from_slice(b"trailing bytes: new content, same picture");
    std::fs::write(&extra, bytes).unwrap();
    let out = run(&url, &["index", folder]);
    assert!(out.contains("indexed 1 new") && out.contains("joint embeddings: 9 vectors"), "{out}");
}

/// One HTTP/1.1 exchange with a local server: the status and body.
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("a full answer");
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = answer[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&raw[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + n]);
        raw = &raw[eol + 4 + n..];
    }
}

/// A `serve` process; killed when dropped.
pub(crate) struct Replica {
    pub(crate) child: std::process::Child,
    pub(crate) addr: String,
    /// What it wrote to stderr after "serving on", once it exits.
    log: Option<std::thread::JoinHandle<String>>,
}

impl Replica {
    fn start(db: &str, folders: &[&str]) -> Self {
        let mut args = vec!["--token", "secret"];
        args.extend_from_slice(folders);
        Self::serve(std::path::Path::new(db), &args)
    }

    /// `imgsearch --db <db> serve --addr 127.0.0.1:0 <args>`, once it serves.
    pub(crate) fn serve(db: &std::path::Path, args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_imgsearch"))
            .arg("--db")
            .arg(db)
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(args)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("serve exited before serving").unwrap();
            if let Some(url) = line.strip_prefix("serving on http://") {
                break url.trim_end_matches('/').to_owned();
            }
        };
        // Keep draining stderr so the server never blocks on it.
        let log = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>().join("\n"));
        Self { child, addr, log: Some(log) }
    }

    /// Waits for the process to exit: its status and log.
    pub(crate) fn wait(&mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        (status, self.log.take().map(|l| l.join().unwrap()).unwrap_or_default())
    }

    fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, body) = http(&self.addr, "GET", path, &[], b"");
        (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs PostgreSQL (IMGSEARCH_TEST_PG, see scripts/pg-test-server); CI runs it with --ignored"]
fn two_serve_replicas_on_one_database_see_each_other_s_changes() {
    // Needs models.
    let admin = pg_admin("two_serve_replicas_on_one_database_see_each_other_s_changes");
    let url = fresh_database(&admin);
    let dir = small_collection(3);
    // A indexes the folder and serves it; B only serves.
    let a = Replica::start(&url, &[dir.path().to_str().unwrap()]);
    let b = Replica::start(&url, &[]);
    assert_eq!(b.get("/api/status").1["images"], 6);

    // Add through A (an upload), find through B, with the picture.
    let dog = pascal_images().join("dog").read_dir().unwrap().next().unwrap().unwrap().path();
    let photo = std::fs::read(&dog).unwrap();
    let (ct, body) = crate::server::multipart(Some(("dog.jpg", &photo)), &[("label", "dog")]);
    let (status, answer) =
        http(&a.addr, "POST", "/api/images", &[("Content-Type", &ct), ("Authorization", "Bearer secret")], &body);
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
    let key = serde_json::from_slice::<serde_json::Value>(&answer).unwrap()["key"].as_i64().unwrap();
    let (status, found) = b.get(&format!("/api/search?key={key}&k=1"));
    assert_eq!((status, found["results"][0]["key"].as_i64()), (200, Some(key)), "{found}");
    assert_eq!(http(&b.addr, "GET", &format!("/api/images/{key}/original"), &[], b""), (200, photo.clone()));
    assert_eq!(http(&b.addr, "GET", &format!("/api/images/{key}/thumbnail"), &[], b"").0, 200);

    // Before any training, text search answers zero-shot through either replica.
    let (status, answer) = b.get("/api/search?text=cat&k=7");
    assert_eq!((status, answer["text_side"].as_str()), (200, Some("zero-shot")), "{answer}");
    assert_eq!(answer["results"].as_array().map(Vec::len), Some(7), "the upload through A is there: {answer}");
    // A model trained by another process is used by both, without a restart.
    let mut train = vec!["train", "--data", dir.path().to_str().unwrap()];
    train.extend_from_slice(QUICK_TRAIN);
    run(&url, &train);
    let (status, answer) = b.get("/api/search?text=cat&k=7");
    assert_eq!((status, answer["results"].as_array().map(Vec::len)), (200, Some(7)), "{answer}");
    assert_eq!(answer["text_side"], "fused", "{answer}");
    // An upload after training gets a joint embedding B can search.
    let mut cats: Vec<_> = pascal_images().join("cat").read_dir().unwrap().map(|e| e.unwrap().path()).collect();
    cats.sort();
    let cat = &cats[10]; // not in the collection
    let (ct, body) = crate::server::multipart(Some(("cat.jpg", &std::fs::read(cat).unwrap())), &[]);
    let (_, answer) =
        http(&a.addr, "POST", "/api/images", &[("Content-Type", &ct), ("Authorization", "Bearer secret")], &body);
    let key2 = serde_json::from_slice::<serde_json::Value>(&answer).unwrap()["key"].as_i64().unwrap();
    let (_, found) = b.get(&format!("/api/search?key={key2}&space=joint&k=1"));
    assert_eq!(found["results"][0]["key"].as_i64(), Some(key2), "{found}");
    assert_eq!(a.get(&format!("/api/tags?key={key2}&k=3")).0, 200);

    // A deletion through B is seen by A.
    let (status, _) =
        http(&b.addr, "DELETE", &format!("/api/images/{key}"), &[("Authorization", "Bearer secret")], b"");
    assert_eq!(status, 204);
    assert_eq!(a.get(&format!("/api/images/{key}")).0, 404);
    assert_eq!(http(&a.addr, "GET", &format!("/api/images/{key}/original"), &[], b"").0, 404);
    let (_, found) = a.get(&format!("/api/search?key={key2}&k=20"));
    assert!(found["results"].as_array().unwrap().iter().all(|r| r["key"].as_i64() != Some(key)));
    assert_eq!(a.get("/api/status").1["images"], 7);

    // Ctrl-C stops a replica cleanly (its pool is closed off the async threads).
    let mut a = a;
    unsafe { libc::kill(a.child.id() as i32, libc::SIGINT) };
    let status = a.child.wait().unwrap();
    assert!(status.success(), "serve on PostgreSQL exits cleanly on Ctrl-C: {status}");
}

/// Regression: two writers on one embedded store once gave images another
/// image's vector and rows past the end of `vectors.f32`. Now every write
/// takes the store's lock and assigns rows from the committed count.
#[test]
fn two_writers_on_one_embedded_store_keep_every_image_s_own_vector() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    Store::open(&db, "lite0", 8).unwrap();
    let vector = |w: usize, i: usize| -> Vec<f32> { (0..8).map(|d| ((w * 1000 + i) * 8 + d) as f32 + 1.0).collect() };
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut s = Store::open(&db, "lite0", 8).unwrap();
                for batch in 0..20 {
                    let images: Vec<NewImage> = (0..5)
                        .map(|j| {
                            let i = batch * 5 + j;
                            image(&format!("/w{w}/{i}.jpg"), &format!("h{w}-{i}"), vector(w, i))
                        })
                        .collect();
                    s.add_batch(&images).unwrap();
                }
            })
        })
        .collect();
    for t in writers {
        t.join().unwrap();
    }
    let s = Store::open(&db, "lite0", 8).unwrap();
    assert_eq!(s.len().unwrap(), 200);
    assert_eq!(s.rows(), 200, "one row per new content, none lost or doubled");
    for r in s.all().unwrap() {
        let (w, i) = r.path.trim_end_matches(".jpg").trim_start_matches("/w").split_once('/').unwrap();
        let want = vector(w.parse().unwrap(), i.parse().unwrap());
        let got = s.embedding(&r);
        assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-2), "{}: {got:?} vs {want:?}", r.path);
        // Searching with its own vector finds it at distance ~0.
        let hit = &ImageStore::nearest(&s, &want, 1).unwrap()[0];
        assert!(hit.1 < 1e-3, "{} nearest at {}", r.path, hit.1);
    }
}

/// A long-lived reader sees what another writer committed after a refresh, and never a row it has not mapped.
#[test]
fn a_reader_picks_up_another_writer_s_rows_on_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut reader: Box<dyn ImageStore> = Box::new(Store::open(&db, "lite0", 3).unwrap());
    let mut writer = Store::open(&db, "lite0", 3).unwrap();
    writer.add_batch(&[image("/a.jpg", "ha", vec![1.0, 0.0, 0.0])]).unwrap();
    assert!(reader.is_stale().unwrap());
    assert!(reader.refresh().unwrap());
    assert!(!reader.is_stale().unwrap());
    let a = reader.by_path("/a.jpg").unwrap().unwrap();
    assert_eq!(reader.embedding(&a).unwrap(), vec![1.0, 0.0, 0.0]);
}

/// A reader (search, tag, verify) opens the store read-only: a missing store
/// is not created, an uncommitted tail is not cut, nothing is migrated or
/// written, and it still follows what a writer commits.
#[test]
fn a_read_only_open_changes_nothing_and_follows_the_writer() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let err = Store::open_read_only(&db, "lite0", 3).err().unwrap().to_string();
    assert!(err.contains("no index") && err.contains("imgsearch index"), "{err}");
    assert!(!db.exists(), "a reader created the store");
    let mut writer = Store::open(&db, "lite0", 3).unwrap();
    writer.add_batch(&[image("/a.jpg", "ha", vec![1.0, 0.0, 0.0])]).unwrap();
    drop(writer);
    // A batch that appended its rows but never committed.
    let vectors = db.join("vectors.f32");
    let committed = std::fs::metadata(&vectors).unwrap().len();
    std::fs::OpenOptions::new().append(true).open(&vectors).unwrap().write_all(&[7u8; 12]).unwrap();
    let before: Vec<(String, Vec<u8>)> =
        ["meta.sqlite", "vectors.f32"].iter().map(|f| (f.to_string(), std::fs::read(db.join(f)).unwrap())).collect();
    let mut reader = Store::open_read_only(&db, "lite0", 3).unwrap();
    let a = reader.by_path("/a.jpg").unwrap().unwrap();
    assert_eq!(reader.embedding(&a), vec![1.0, 0.0, 0.0]);
    let err = reader.delete(&[a.key]).err().unwrap().to_string();
    assert!(err.contains("reading only"), "{err}");
    for (f, bytes) in &before {
        assert_eq!(&std::fs::read(db.join(f)).unwrap(), bytes, "{f} changed under a reader");
    }
    assert_eq!(std::fs::metadata(&vectors).unwrap().len(), committed + 12, "the tail is cut only by a writer");
    let mut writer = Store::open(&db, "lite0", 3).unwrap();
    writer.add_batch(&[image("/b.jpg", "hb", vec![0.0, 1.0, 0.0])]).unwrap();
    assert!(ImageStore::refresh(&mut reader).unwrap());
    let b = reader.by_path("/b.jpg").unwrap().unwrap();
    assert_eq!(reader.embedding(&b), vec![0.0, 1.0, 0.0]);
}

/// A TCP forwarder to the test server that can be cut and restored: a
/// database outage without stopping the shared server.
struct Proxy {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    fn start(upstream: &str) -> Self {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let (up2, links2, upstream) = (up.clone(), links.clone(), upstream.to_owned());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: refused, as by a server that is down
                }
                let Ok(server) = std::net::TcpStream::connect(&upstream) else { continue };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server.try_clone().unwrap(), client.try_clone().unwrap()),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
                links2.lock().unwrap().extend([client, server]);
            }
        });
        Self { port, up, links }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            let _ = link.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Regression: while PostgreSQL was down, requests hung ~63 s and then
/// answered 500 while `/healthz` said 200, and an indexer gave up. Now the
/// store says it is unavailable within seconds (503, `/readyz` 503), and
/// `index` waits for the database and finishes once it is back.
#[test]
#[ignore = "needs PostgreSQL (IMGSEARCH_TEST_PG, see scripts/pg-test-server); CI runs it with --ignored"]
fn a_database_outage_is_a_quick_503_and_index_waits_for_it() {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;
    let admin = pg_admin("a_database_outage_is_a_quick_503_and_index_waits_for_it");
    let url = fresh_database(&admin);
    let upstream = url.split('@').nth(1).unwrap().split('/').next().unwrap().to_owned();
    let proxy = Proxy::start(&upstream);
    let url = url.replace(&upstream, &format!("127.0.0.1:{}", proxy.port));

    let state = crate::server::state_for(std::path::Path::new(&url), vec![], 2 << 20);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let status = |uri: &'static str| {
        let req = Request::get(uri).body(Body::empty()).unwrap();
        let start = std::time::Instant::now();
        let code = rt.block_on(imgsearch::server::app(state.clone()).oneshot(req)).unwrap().status().as_u16();
        (code, start.elapsed())
    };
    assert_eq!(status("/readyz").0, 200);
    proxy.cut();
    for uri in ["/readyz", "/api/status"] {
        let (code, took) = status(uri);
        assert_eq!(code, 503, "{uri}");
        assert!(took < std::time::Duration::from_secs(15), "{uri} took {took:?}");
    }
    assert_eq!(status("/healthz").0, 200, "liveness is not readiness");
    proxy.restore();
    assert_eq!(status("/readyz").0, 200, "ready again once the database is back");
    drop(rt);
    drop(state);

    // An indexer that meets the outage waits, then finishes without loss.
    let photos = tempfile::tempdir().unwrap();
    crate::index::generated_photos(photos.path(), 3);
    let mut store = PgStore::open(&url, "lite0", 1280).unwrap();
    proxy.cut();
    let up = proxy.up.clone();
    let restorer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(4));
        up.store(true, Ordering::SeqCst);
    });
    let report =
        imgsearch::indexer::index_folders(&mut store, &crate::lite0(), &[photos.path().to_path_buf()], |_, _| {});
    restorer.join().unwrap();
    assert_eq!(report.unwrap().embedded, 3);
    assert_eq!(store.len().unwrap(), 3);
}

/// The library facade over the in-memory store: what the CLI and the
/// server call works on a backend that is one file under `store/`.
#[test]
fn the_library_searches_any_store_through_the_facade() {
    use imgsearch::library::{Library, Settings};
    use imgsearch::query::{Assembled, Query, Space};
    let place = imgsearch::store::memory::MemoryPlace::default();
    let store = imgsearch::store::memory::MemoryStore::open(&place, "lite0", 3).unwrap();
    let settings = Settings {
        db: "memory".into(),
        models: imgsearch::models::models_dir(None),
        backbone: imgsearch::backbone::Backbone::Lite0,
        words_file: None,
    };
    let mut library = Library::with_store(Box::new(store), settings);
    library
        .store_mut()
        .add_batch(&[image("/x.jpg", "hx", vec![1.0, 0.0, 0.0]), image("/y.jpg", "hy", vec![0.0, 1.0, 0.0])])
        .unwrap();
    let upkeep = library.after_add(None).unwrap();
    assert_eq!(upkeep.graph_rows, None, "a memory store scans exactly");
    let query = |v: Vec<f32>| Assembled { query: Query::Cnn(v), space: Space::Cnn, side: None, note: None };
    let found = library.search(&query(vec![0.9, 0.1, 0.0]), 2, None, &Filter::default()).unwrap();
    assert_eq!(found.iter().map(|f| (f.rank, f.path.as_str())).collect::<Vec<_>>(), [(1, "/x.jpg"), (2, "/y.jpg")]);
    let near = library.search(&query(vec![0.9, 0.1, 0.0]), 2, Some(0.5), &Filter::default()).unwrap();
    assert_eq!(near.len(), 1, "max_distance drops the far one");
    let x = library.store().by_path("/x.jpg").unwrap().unwrap();
    assert_eq!(library.image_embedding(&x.key.to_string(), |_| unreachable!()).unwrap(), [1.0, 0.0, 0.0]);
    assert!(library.image(-1).unwrap_err().to_string().contains("no image with key -1"));
}

/// 1280-d pooled features as an older imgsearch stored them (non-negative).
fn pooled(i: usize) -> Vec<f32> {
    (0..1280).map(|j| ((i * 7 + j * 3) % 13) as f32 * 0.1).collect()
}

/// What the store must hold for [`pooled`] once moved: it minus the centre.
fn assert_centred(s: &dyn ImageStore, path: &str, i: usize) {
    let centre = imgsearch::backbone::centre(imgsearch::backbone::Backbone::Lite0);
    let got = s.embedding(&s.by_path(path).unwrap().unwrap()).unwrap();
    let off = got.iter().zip(pooled(i)).zip(centre).map(|((g, p), c)| (g - (p - c)).abs()).fold(0f32, f32::max);
    assert!(off < 1e-4, "{path}: off the centred embedding by {off}");
}

/// A store an older imgsearch wrote (uncentred vectors, no `embedding`
/// setting) is moved to centred embeddings by the first writer's open,
/// without the network; a reader before that is told what to run.
#[test]
fn an_embedded_store_from_before_centred_embeddings_is_moved_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = Store::open(dir.path(), "lite0", 1280).unwrap();
        s.add_batch(&[image("/a.jpg", "ha", pooled(0)), image("/b.jpg", "hb", pooled(1))]).unwrap();
        s.add_batch(&[image("/c.jpg", "hc", pooled(2))]).unwrap();
    }
    let meta = rusqlite::Connection::open(dir.path().join("meta.sqlite")).unwrap();
    meta.execute("DELETE FROM settings WHERE name = 'embedding'", []).unwrap();
    drop(meta);
    // An earlier attempt's staged rows, whose transaction never committed.
    std::fs::write(dir.path().join("vectors.f32.centred"), b"half written").unwrap();
    let err = Store::open_read_only(dir.path(), "lite0", 1280).err().expect("a reader cannot move it").to_string();
    assert!(err.contains("imgsearch index") && err.contains("centred"), "{err}");

    let s = Store::open(dir.path(), "lite0", 1280).unwrap();
    for (path, i) in [("/a.jpg", 0), ("/b.jpg", 1), ("/c.jpg", 2)] {
        assert_centred(&s, path, i);
    }
    assert!(!dir.path().join("vectors.f32.centred").exists());
    let checked = s.verify(&[]).unwrap();
    assert!(checked.damaged.is_empty(), "the batches' checksums follow the moved rows: {:?}", checked.damaged);
    let mut q = pooled(1);
    imgsearch::backbone::centre_in_place(imgsearch::backbone::Backbone::Lite0, &mut q);
    let hits = s.search(&StoreQuery::Cnn(&q), 1, &Filter::default()).unwrap();
    assert_eq!(hits[0].0.path, "/b.jpg");
    assert!(hits[0].1 < 1e-3, "the moved row is the query's: distance {}", hits[0].1);
    drop(s);
    // Moved once: a second open and a reader see the same rows.
    let again = Store::open_read_only(dir.path(), "lite0", 1280).unwrap();
    assert_centred(&again, "/c.jpg", 2);
}

#[test]
#[ignore = "needs PostgreSQL (IMGSEARCH_TEST_PG, see scripts/pg-test-server); CI runs it with --ignored"]
fn a_postgres_database_from_before_centred_embeddings_is_moved_on_open() {
    let admin = pg_admin("a_postgres_database_from_before_centred_embeddings_is_moved_on_open");
    let url = fresh_database(&admin);
    {
        let mut s = PgStore::open(&url, "lite0", 1280).unwrap();
        s.add_batch(&[image("/a.jpg", "ha", pooled(0)), image("/b.jpg", "hb", pooled(1))]).unwrap();
    }
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client.batch_execute("DELETE FROM settings WHERE name = 'embedding'").unwrap();
    let s = PgStore::open(&url, "lite0", 1280).unwrap();
    assert_centred(&s, "/a.jpg", 0);
    assert_centred(&s, "/b.jpg", 1);
    // The half-precision copies (narrow filters rank on them) moved too.
    let stale: i64 = client
        .query_one(
            "SELECT COUNT(*) FROM images i JOIN vectors v ON v.hash = i.hash
             WHERE (i.half <=> v.embedding::halfvec(1280)) > 1e-3",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(stale, 0);
    // ... and their index, dropped for the move, is built again.
    let index: i64 =
        client.query_one("SELECT COUNT(*) FROM pg_indexes WHERE indexname = 'images_half_hnsw'", &[]).unwrap().get(0);
    assert_eq!(index, 1, "the images' HNSW index built again");
    let mut q = pooled(1);
    imgsearch::backbone::centre_in_place(imgsearch::backbone::Backbone::Lite0, &mut q);
    let hits = s.search(&StoreQuery::Cnn(&q), 1, &Filter::default()).unwrap();
    assert_eq!(hits[0].0.path, "/b.jpg");
    // Moved once: opening again leaves the rows as they are.
    drop(s);
    assert_centred(&PgStore::open(&url, "lite0", 1280).unwrap(), "/b.jpg", 1);
}
