//! One store suite, two implementations: the embedded store and PostgreSQL
//! with pgvector. The PostgreSQL runs need a server: `IMGSEARCH_TEST_PG`
//! names one (an admin URL; each test makes its own database), and
//! `.ci/run` always starts one (`scripts/pg-test-server`). Without it they
//! are skipped, loudly.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use imgsearch::store::postgres::PgStore;
use imgsearch::store::{ImageStore, NewImage, NewVector, Store};

use crate::pascal_images;

fn image(path: &str, hash: &str, e: Vec<f32>) -> NewImage {
    NewImage { path: path.into(), hash: hash.into(), size: 1, mtime: 2, label: "cat".into(), vector: NewVector::Embedding(e) }
}

/// The admin URL of the test server, or `None` after a loud notice.
fn pg_admin(test: &str) -> Option<String> {
    match std::env::var("IMGSEARCH_TEST_PG") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "\n*** SKIPPED {test}: IMGSEARCH_TEST_PG is unset, so the PostgreSQL store is not tested. \
                 Start one with `scripts/pg-test-server start /tmp/pg` and export the URL it prints. ***\n"
            );
            None
        }
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

/// What every store must do.
fn shared_suite(open: &dyn Fn(&str) -> imgsearch::Result<Box<dyn ImageStore>>) {
    let mut s = open("lite0").unwrap();
    assert!(s.is_empty().unwrap());
    let keys = s
        .add_batch(&[image("/a.jpg", "ha", vec![3.0, 4.0, 0.0]), image("/b.jpg", "hb", vec![0.0, 2.0, 0.0]), image("/c.jpg", "hc", vec![0.0, 0.0, 1.0])])
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
    assert_eq!(s.all().unwrap().iter().map(|r| r.path.as_str()).collect::<Vec<_>>(), ["/moved/b.jpg", "/c.jpg", "/copy.jpg"]);
    drop(s);
    let err = open("lite2").err().expect("another backbone is refused").to_string();
    assert!(err.contains("--backbone lite0"), "{err}");
}

#[test]
fn embedded_store_passes_the_shared_suite() {
    let dir = tempfile::tempdir().unwrap();
    shared_suite(&|backbone| Ok(Box::new(Store::open(dir.path(), backbone, 3)?)));
}

#[test]
fn postgres_store_passes_the_shared_suite() {
    let Some(admin) = pg_admin("postgres_store_passes_the_shared_suite") else { return };
    let url = fresh_database(&admin);
    shared_suite(&|backbone| Ok(Box::new(PgStore::open(&url, backbone, 3)?)));
}

#[test]
fn postgres_processes_share_one_database_without_duplicates() {
    let Some(admin) = pg_admin("postgres_processes_share_one_database_without_duplicates") else { return };
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
    assert_eq!(count("SELECT COUNT(*) FROM vectors"), count("SELECT COUNT(DISTINCT hash) FROM images"), "one vector per content");

    // What one process adds and deletes, another sees.
    let mut a = PgStore::open(&url, "lite0", 3).unwrap();
    let b = PgStore::open(&url, "lite0", 3).unwrap();
    let key = a.add_batch(&[image("/new.jpg", "fresh", vec![0.0, 0.0, 9.0])]).unwrap()[0];
    assert_eq!(b.nearest(&[0.0, 0.0, 1.0], 1).unwrap()[0].0.key, key);
    a.delete(&[key]).unwrap();
    assert!(b.by_key(key).unwrap().is_none());
}

#[test]
fn postgres_faults_are_named_and_survived() {
    // A server that is not there: the error names the host.
    let err = PgStore::open("postgres://nobody@127.0.0.1:9/db", "lite0", 3).err().unwrap().to_string();
    assert!(err.contains("127.0.0.1:9") && err.contains("running"), "{err}");

    let Some(admin) = pg_admin("postgres_faults_are_named_and_survived") else { return };
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
    assert!(err.contains("version 99") && err.contains(&format!("version {}", imgsearch::store::postgres::SCHEMA_VERSION)), "{err}");
}

#[test]
fn index_and_search_run_on_postgres_end_to_end() {
    // Needs models.
    let Some(admin) = pg_admin("index_and_search_run_on_postgres_end_to_end") else { return };
    let url = fresh_database(&admin);
    let dir = tempfile::tempdir().unwrap();
    for (label, file) in [("cat", "2008_000116.jpg"), ("cat", "2008_000182.jpg"), ("bottle", "2008_000112.jpg")] {
        std::fs::create_dir_all(dir.path().join(label)).unwrap();
        std::fs::copy(pascal_images().join(label).join(file), dir.path().join(label).join(file)).unwrap();
    }
    let embedded = tempfile::tempdir().unwrap();
    let embedded = embedded.path().join("db");
    let run = |db: &str, args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_imgsearch")).args(["--db", db]).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let folder = dir.path().to_str().unwrap();
    assert!(run(&url, &["index", folder]).contains("indexed 3 new"));
    assert!(run(&url, &["index", folder]).contains("indexed 0 new, 3 unchanged"));
    run(embedded.to_str().unwrap(), &["index", folder]);
    // The same answers from both stores.
    let query = dir.path().join("cat/2008_000116.jpg");
    let search = |db: &str| -> serde_json::Value {
        serde_json::from_str(&run(db, &["search", "--image", query.to_str().unwrap(), "-k", "3", "--json"])).unwrap()
    };
    let (pg, local) = (search(&url), search(embedded.to_str().unwrap()));
    assert_eq!(pg[0]["path"].as_str().unwrap(), query.canonicalize().unwrap().to_str().unwrap());
    assert!(pg[0]["distance"].as_f64().unwrap() < 1e-3);
    for i in 0..3 {
        assert_eq!(pg[i]["path"], local[i]["path"]);
        assert!((pg[i]["distance"].as_f64().unwrap() - local[i]["distance"].as_f64().unwrap()).abs() < 1e-4);
    }
    // What the database cannot do yet says so.
    let out = Command::new(env!("CARGO_BIN_EXE_imgsearch")).args(["--db", &url, "tag", "1"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("embedded store"));
}
