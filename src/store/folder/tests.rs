//! The folder store's own tests (the shared suite is `tests/integration/store.rs`).

use super::*;

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

#[test]
fn batch_round_trips_with_unit_vectors_and_norms() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), "lite0", 2).unwrap();
    let keys = s.add_batch(&[image("a.jpg", "h1", vec![3.0, 4.0]), image("b.jpg", "h2", vec![0.0, 2.0])]).unwrap();
    assert_eq!(keys.len(), 2);
    drop(s);
    let s = Store::open(dir.path(), "lite0", 2).unwrap();
    let a = s.by_path("a.jpg").unwrap().unwrap();
    assert_eq!(s.vector(a.row), &[0.6, 0.8]);
    assert_eq!(a.norm, 5.0);
    assert_eq!(s.len().unwrap(), 2);
}

#[test]
fn uncommitted_vector_rows_are_cut_off_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), "lite0", 2).unwrap();
    s.add_batch(&[image("a.jpg", "h1", vec![1.0, 0.0])]).unwrap();
    drop(s);
    // A crash after appending a batch's vectors, before its transaction.
    let mut f = std::fs::OpenOptions::new().append(true).open(dir.path().join("vectors.f32")).unwrap();
    f.write_all(&[0u8; 8 * 3]).unwrap();
    drop(f);
    let s = Store::open(dir.path(), "lite0", 2).unwrap();
    assert_eq!(s.vectors().len(), 2);
    assert_eq!(std::fs::metadata(dir.path().join("vectors.f32")).unwrap().len(), 64 + 8);
}

#[test]
fn truncated_vector_file_is_reported_as_damage() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), "lite0", 2).unwrap();
    s.add_batch(&[image("a.jpg", "h1", vec![1.0, 0.0])]).unwrap();
    drop(s);
    std::fs::OpenOptions::new().write(true).open(dir.path().join("vectors.f32")).unwrap().set_len(66).unwrap();
    let err = Store::open(dir.path(), "lite0", 2).err().unwrap().to_string();
    assert!(err.contains("damaged") && err.contains("vectors.f32"), "{err}");
}

/// Regression: a zero-byte `meta.sqlite`, a missing `rows` setting or
/// one below the rows images use truncated `vectors.f32` to its header.
#[test]
fn opening_damaged_metadata_never_cuts_the_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let vectors = dir.path().join("vectors.f32");
    let meta = dir.path().join("meta.sqlite");
    let fresh = || {
        let _ = std::fs::remove_file(&meta);
        let mut s = Store::open(dir.path(), "lite0", 2).unwrap();
        s.add_batch(&[image("a.jpg", "h1", vec![1.0, 0.0]), image("b.jpg", "h2", vec![0.0, 1.0])]).unwrap();
    };
    let damage: [(&str, &dyn Fn()); 3] = [
        ("zero-byte meta.sqlite", &|| {
            for f in ["meta.sqlite", "meta.sqlite-wal", "meta.sqlite-shm"] {
                let _ = std::fs::remove_file(dir.path().join(f));
            }
            std::fs::write(&meta, b"").unwrap();
        }),
        ("no rows setting", &|| {
            let c = Connection::open(&meta).unwrap();
            c.execute("DELETE FROM settings WHERE name = 'rows'", []).unwrap();
        }),
        ("rows below what images use", &|| {
            let c = Connection::open(&meta).unwrap();
            c.execute("UPDATE settings SET value = '1' WHERE name = 'rows'", []).unwrap();
        }),
    ];
    for (what, harm) in damage {
        let _ = std::fs::remove_file(&vectors);
        fresh();
        let before = std::fs::read(&vectors).unwrap();
        harm();
        let err = Store::open(dir.path(), "lite0", 2).err().unwrap_or_else(|| panic!("{what}: opened")).to_string();
        assert!(err.contains("meta.sqlite") && err.contains("damaged"), "{what}: {err}");
        assert_eq!(std::fs::read(&vectors).unwrap(), before, "{what}: vectors.f32 untouched");
    }
}

#[test]
fn another_backbone_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path(), "lite0", 2).unwrap());
    let err = Store::open(dir.path(), "lite2", 2).err().unwrap().to_string();
    assert!(err.contains("--backbone lite0"), "{err}");
}

#[test]
fn same_content_shares_a_row_and_delete_keeps_others() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), "lite0", 2).unwrap();
    s.add_batch(&[image("a.jpg", "h1", vec![1.0, 0.0])]).unwrap();
    let a = s.by_path("a.jpg").unwrap().unwrap();
    let copy = NewImage { vector: NewVector::SameAs { row: a.row, norm: a.norm }, ..image("copy.jpg", "h1", vec![]) };
    s.add_batch(&[copy]).unwrap();
    assert_eq!(s.vectors().len(), 2, "no new row for identical content");
    assert_eq!(s.by_hash("h1").unwrap().len(), 2);
    s.delete(&[a.key]).unwrap();
    assert_eq!(s.all().unwrap().iter().map(|r| r.path.as_str()).collect::<Vec<_>>(), ["copy.jpg"]);
}
