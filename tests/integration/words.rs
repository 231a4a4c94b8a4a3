//! Word vectors on the real default GloVe 6B 50d (needs models), and the
//! user-file path (converted once, cached).

use imgsearch::words::{self, WordVectors};
use imgsearch::Error;

fn glove() -> WordVectors {
    let models = imgsearch::models::models_dir(None);
    words::open(&models, None).unwrap_or_else(|e| panic!("{e}: run `imgsearch models fetch`"))
}

fn top(wv: &WordVectors, text: &str, k: usize) -> Vec<String> {
    wv.nearest_to_text(text, k).unwrap().into_iter().map(|n| n.word).collect()
}

#[test]
fn default_vocabulary_is_glove_6b_50d() {
    let wv = glove();
    assert_eq!((wv.len(), wv.dim()), (400_000, 50));
    assert_eq!(wv.word(0), "the");
}

#[test]
fn said_is_nearest_to_itself_then_told() {
    let wv = glove();
    let n = wv.nearest_to_text("said", 10).unwrap();
    assert_eq!(n[0].word, "said");
    assert!(n[0].distance.abs() < 1e-3);
    assert!(n[..3].iter().any(|x| x.word == "told"), "{n:?}");
    assert!(n.windows(2).all(|w| w[0].distance <= w[1].distance), "nearest first");
}

#[test]
fn known_neighbours_of_a_few_words() {
    let wv = glove();
    assert!(top(&wv, "cat", 10).contains(&"dog".to_string()));
    assert!(top(&wv, "boat", 10).iter().any(|w| w == "boats" || w == "ship"));
    // Case-insensitive lookup.
    assert_eq!(top(&wv, "Said", 1), ["said"]);
}

#[test]
fn several_words_are_averaged_and_labels_split_on_underscore() {
    let wv = glove();
    let t = top(&wv, "dining_table", 10);
    assert!(t.contains(&"table".to_string()) && t.contains(&"dining".to_string()), "{t:?}");
    assert_eq!(top(&wv, "dining_table", 10), top(&wv, "dining table", 10));
}

#[test]
fn negative_terms_subtract() {
    let wv = glove();
    let t = top(&wv, "king -man woman", 5);
    assert!(t.contains(&"queen".to_string()), "{t:?}");
}

#[test]
fn unknown_word_names_it_and_suggests_close_entries() {
    let wv = glove();
    match wv.nearest_to_text("cat elephnat", 5) {
        Err(e @ Error::UnknownWord { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("'elephnat'") && msg.contains("elephant"), "{msg}");
        }
        other => panic!("expected UnknownWord, got {other:?}"),
    }
}

#[test]
fn empty_query_is_an_error_not_an_empty_answer() {
    assert!(matches!(glove().nearest_to_text("   ", 5), Err(Error::EmptyQuery)));
}

#[test]
fn a_user_glove_text_file_is_converted_once_and_cached() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny.300d.txt");
    std::fs::write(&file, "cat 1 0 0\ndog 0.9 0.1 0\ncar 0 0 1\n").unwrap();
    let models = dir.path().join("models");
    let wv = words::open(&models, Some(&file)).unwrap();
    assert_eq!(wv.len(), 3);
    assert_eq!(top(&wv, "cat", 2), ["cat", "dog"]);
    let cached: Vec<_> = std::fs::read_dir(models.join("words-cache")).unwrap().collect();
    assert_eq!(cached.len(), 1);
    // A second open reads the cache (the source can even be gone).
    let cache_path = wv.path().to_path_buf();
    drop(wv);
    assert_eq!(words::open(&models, Some(&cache_path)).unwrap().len(), 3);
}

#[test]
fn malformed_user_file_is_rejected_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.txt");
    std::fs::write(&file, "cat 1 0 0\ndog 0.9 oops 0\n").unwrap();
    let err = words::open(&dir.path().join("models"), Some(&file)).err().unwrap().to_string();
    assert!(err.contains("broken.txt") && err.contains("line 2") && err.contains("'oops'"), "{err}");
}
