//! Near-duplicates: images whose CNN embeddings lie within a distance of
//! each other (a re-encoded, resized or cropped copy of a photo), grouped.
//!
//! The store finds the close pairs through its index
//! ([`ImageStore::near_pairs`]: a folder store reads its HNSW graph's
//! neighbour lists, PostgreSQL asks pgvector for each image's nearest), and
//! every pair within `max_distance` joins one group (union-find), so a
//! chain of copies is one group. No all-pairs comparison is written here;
//! identical files (one vector row) are at distance 0 and group too.

use std::collections::HashMap;

use crate::backbone::Backbone;
use crate::store::{ImageRecord, ImageStore};
use crate::Result;

/// The default distance (`sqrt(2 - 2 cos)` of centred embeddings) for a
/// backbone's embeddings, measured by `imgsearch eval [--backbone lite2]`
/// on the Pascal photos with a re-encoded, a half-size and a 90 %-crop
/// copy of 50 of them (see the README's figures):
/// - Lite0: 0.65, pair precision 0.997, recall 0.970 (at 0.70 precision
///   falls to 0.966, at 0.60 recall to 0.940);
/// - Lite2: 0.55, precision 0.983, recall 0.783. Its embeddings tell
///   copies from other photos of a scene less well: no distance reaches
///   0.95 on both, and Lite0's 0.65 let different photos group (precision
///   0.725). Precision goes first: a group is offered for deleting.
pub fn default_max_distance(backbone: Backbone) -> f32 {
    match backbone {
        Backbone::Lite0 => 0.65,
        Backbone::Lite2 => 0.55,
    }
}

/// One image of a group.
#[derive(Debug, Clone)]
pub struct Member {
    pub image: ImageRecord,
    /// Its distance to the nearest other member.
    pub distance: f32,
}

/// Images that are copies of one another, the earliest added first.
#[derive(Debug, Clone)]
pub struct Group {
    pub members: Vec<Member>,
}

impl Group {
    /// Bytes the copies take beyond the first image.
    pub fn redundant_bytes(&self) -> u64 {
        self.members.iter().skip(1).map(|m| m.image.size).sum()
    }
}

/// Groups of near-duplicates among every image of `store`, largest first.
pub fn groups(store: &dyn ImageStore, max_distance: f32) -> Result<Vec<Group>> {
    let images = store.all()?;
    let index: HashMap<i64, usize> = images.iter().enumerate().map(|(i, r)| (r.key, i)).collect();
    let pairs = store.near_pairs(max_distance)?;
    let mut parent: Vec<usize> = (0..images.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut nearest = vec![f32::INFINITY; images.len()];
    for (a, b, d) in pairs {
        let (Some(&i), Some(&j)) = (index.get(&a), index.get(&b)) else { continue };
        let (ri, rj) = (root(&mut parent, i), root(&mut parent, j));
        parent[ri.max(rj)] = ri.min(rj);
        nearest[i] = nearest[i].min(d);
        nearest[j] = nearest[j].min(d);
    }
    let mut by_root: HashMap<usize, Vec<usize>> = HashMap::new();
    for i in 0..images.len() {
        let r = root(&mut parent, i);
        by_root.entry(r).or_default().push(i);
    }
    let mut out: Vec<Group> = by_root
        .into_values()
        .filter(|m| m.len() > 1)
        .map(|mut m| {
            m.sort_by_key(|&i| images[i].key);
            Group {
                members: m.into_iter().map(|i| Member { image: images[i].clone(), distance: nearest[i] }).collect(),
            }
        })
        .collect();
    out.sort_by(|a, b| b.members.len().cmp(&a.members.len()).then(a.members[0].image.key.cmp(&b.members[0].image.key)));
    Ok(out)
}

/// Precision and recall of the pairs `groups` put together against the
/// pairs that are truly copies (`family` of each key: the original it was
/// made from; keys without one are their own family).
pub fn pair_scores(groups: &[Group], family: &HashMap<i64, i64>) -> (f64, f64) {
    let fam = |k: i64| *family.get(&k).unwrap_or(&k);
    let mut sizes: HashMap<i64, usize> = HashMap::new();
    for (&k, &f) in family {
        if k != f {
            *sizes.entry(f).or_default() += 1;
        }
    }
    // Each family: its original and its copies.
    let truth: usize = sizes.values().map(|&c| (c + 1) * c / 2).sum();
    let (mut predicted, mut right) = (0usize, 0usize);
    for g in groups {
        for (i, a) in g.members.iter().enumerate() {
            for b in &g.members[i + 1..] {
                predicted += 1;
                right += (fam(a.image.key) == fam(b.image.key)) as usize;
            }
        }
    }
    let precision = if predicted == 0 { 1.0 } else { right as f64 / predicted as f64 };
    let recall = if truth == 0 { 1.0 } else { right as f64 / truth as f64 };
    (precision, recall)
}

/// Pair precision and recall at one distance.
#[derive(Debug, Clone, Copy)]
pub struct PairScore {
    pub max_distance: f32,
    pub precision: f64,
    pub recall: f64,
}

/// What [`measure`] found.
#[derive(Debug, Clone)]
pub struct Measured {
    pub scores: Vec<PairScore>,
    /// Originals copied (three copies each).
    pub originals: usize,
}

/// What `eval` measures: for every `every`-th image of `paths` (whose
/// embeddings are given), three copies are made — re-encoded as JPEG at
/// quality 60, resized to half size, and cropped to 90 % of each side off
/// centre — and embedded; then all originals and copies are grouped at
/// each of `distances`.
pub fn measure(
    embedder: &crate::backbone::Embedder,
    paths: &[std::path::PathBuf],
    embeddings: &[Option<Vec<f32>>],
    every: usize,
    distances: &[f32],
) -> Result<Measured> {
    use crate::store::{NewImage, NewVector};
    let dim = embedder.model().config().embedding_dim();
    // A folder store, as `imgsearch duplicates` runs on by default: the
    // pairs come from its HNSW graph's links.
    let folder = tempfile::tempdir().map_err(|e| crate::Error::io(std::env::temp_dir(), e))?;
    let mut store = crate::store::Store::open(folder.path(), "eval", dim)?;
    let image = |path: String, vector: Vec<f32>| NewImage {
        hash: path.clone(),
        path,
        size: 0,
        mtime: 0,
        label: String::new(),
        vector: NewVector::Embedding(vector),
        meta: Default::default(),
    };
    let mut family = HashMap::new();
    let mut copied = 0;
    for (i, (path, e)) in paths.iter().zip(embeddings).enumerate() {
        let Some(e) = e else { continue };
        let original = store.add_batch(&[image(format!("{i}"), e.clone())])?[0];
        if i % every != 0 {
            continue;
        }
        let bytes = std::fs::read(path).map_err(|e| crate::Error::io(path, e))?;
        let rgb = crate::backbone::decode_rgb(&bytes, path, crate::backbone::DEFAULT_MAX_PIXELS)?;
        let (w, h) = rgb.dimensions();
        let encode = |img: &image::RgbImage, quality: u8| -> Result<Vec<u8>> {
            let mut out = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
                .encode_image(img)
                .map_err(|e| crate::Error::Msg(format!("{}: {e}", path.display())))?;
            Ok(out)
        };
        let half = image::imageops::resize(&rgb, (w / 2).max(1), (h / 2).max(1), image::imageops::FilterType::Triangle);
        let crop = image::imageops::crop_imm(&rgb, 0, h / 10, w * 9 / 10, h - h / 10).to_image();
        for (name, copy) in
            [("reencoded", encode(&rgb, 60)?), ("half", encode(&half, 95)?), ("crop", encode(&crop, 95)?)]
        {
            let v = embedder.embed_bytes(&copy, path)?.embedding;
            let key = store.add_batch(&[image(format!("{i}-{name}"), v)])?[0];
            family.insert(key, original);
        }
        copied += 1;
    }
    let mut scores = Vec::new();
    for &max_distance in distances {
        let (precision, recall) = pair_scores(&groups(&store, max_distance)?, &family);
        scores.push(PairScore { max_distance, precision, recall });
    }
    Ok(Measured { scores, originals: copied })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::{MemoryPlace, MemoryStore};
    use crate::store::{NewImage, NewVector};

    fn add(store: &mut MemoryStore, path: &str, v: Vec<f32>) -> i64 {
        let image = NewImage {
            path: path.into(),
            hash: path.into(),
            size: 100,
            mtime: 0,
            meta: Default::default(),
            label: String::new(),
            vector: NewVector::Embedding(v),
        };
        store.add_batch(&[image]).unwrap()[0]
    }

    #[test]
    fn copies_group_by_chains_within_the_distance_and_others_stay_alone() {
        let mut store = MemoryStore::open(&MemoryPlace::default(), "lite0", 3).unwrap();
        let a = add(&mut store, "/a.jpg", vec![1.0, 0.0, 0.0]);
        let a1 = add(&mut store, "/a-small.jpg", vec![1.0, 0.1, 0.0]);
        let a2 = add(&mut store, "/a-crop.jpg", vec![1.0, 0.2, 0.02]);
        let b = add(&mut store, "/b.jpg", vec![0.0, 1.0, 0.0]);
        let b1 = add(&mut store, "/b-copy.jpg", vec![0.0, 1.0, 0.05]);
        add(&mut store, "/c.jpg", vec![0.0, 0.0, 1.0]);
        let found = groups(&store, 0.15).unwrap();
        let keys: Vec<Vec<i64>> = found.iter().map(|g| g.members.iter().map(|m| m.image.key).collect()).collect();
        assert_eq!(keys, [vec![a, a1, a2], vec![b, b1]]);
        assert_eq!(found[0].redundant_bytes(), 200);
        assert!(found[0].members.iter().all(|m| m.distance <= 0.15));
        let family: HashMap<i64, i64> = [(a1, a), (a2, a), (b1, b)].into();
        assert_eq!(pair_scores(&found, &family), (1.0, 1.0));
        // Too tight a distance splits the chain: every pair found is right, some are missed.
        let (p, r) = pair_scores(&groups(&store, 0.09).unwrap(), &family);
        assert_eq!(p, 1.0);
        assert!(r < 1.0, "{r}");
        assert!(groups(&store, 0.01).unwrap().is_empty());
    }
}
