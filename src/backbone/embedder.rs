//! The embedding pipeline: decode images on worker threads while the network
//! runs on full batches, so that decoding overlaps inference.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use super::{Config, EfficientNet, Preprocess};
use crate::Result;

/// One image's embedding and classifier output.
#[derive(Debug, Clone)]
pub struct Embedded {
    /// The 1280-d CNN embedding: the pooled feature minus its expected
    /// value ([`super::centre`]), not normalised.
    pub embedding: Vec<f32>,
    /// The 1000 ImageNet logits.
    pub logits: Vec<f32>,
}

/// A backbone with its preprocessing, embedding files in batches.
pub struct Embedder {
    model: EfficientNet,
    preprocess: Preprocess,
    batch_size: usize,
    decode_threads: usize,
}

impl Embedder {
    /// Loads the backbone from `weights` (safetensors).
    pub fn load(weights: &Path, config: Config) -> Result<Self> {
        let preprocess = Preprocess::for_size(config.image_size as u32);
        let model = EfficientNet::load(weights, config)?;
        Ok(Self {
            model,
            preprocess,
            batch_size: 16,
            decode_threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
        })
    }

    pub fn with_max_pixels(mut self, max_pixels: u64) -> Self {
        self.preprocess.max_pixels = max_pixels;
        self
    }

    /// The arithmetic of the network's 1x1 products (`--precision`).
    pub fn with_precision(mut self, precision: super::Precision) -> Self {
        self.model.set_precision(precision);
        self
    }

    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Threads decoding images while the network runs (default: one per core).
    pub fn with_decode_threads(mut self, threads: usize) -> Self {
        self.decode_threads = threads.max(1);
        self
    }

    pub fn model(&self) -> &EfficientNet {
        &self.model
    }

    pub fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }

    /// Runs the network on already preprocessed images (`size*size*3` floats each).
    pub fn embed_tensors(&self, images: &[Vec<f32>]) -> Result<Vec<Embedded>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let images: Vec<&[f32]> = images.iter().map(Vec::as_slice).collect();
        let (embeddings, logits) = self.model.forward_images(&images)?;
        let logits = logits.to_vec2::<f32>()?;
        Ok(embeddings
            .chunks_exact(1280)
            .zip(logits)
            .map(|(e, logits)| Embedded { embedding: e.to_vec(), logits })
            .collect())
    }

    /// Embeds one file.
    pub fn embed_file(&self, path: &Path) -> Result<Embedded> {
        let image = self.preprocess.load(path)?;
        Ok(self.embed_tensors(&[image])?.remove(0))
    }

    /// Embeds an image given as bytes (an upload); `name` is used in errors.
    pub fn embed_bytes(&self, bytes: &[u8], name: &Path) -> Result<Embedded> {
        let rgb = super::preprocess::decode_rgb(bytes, name, self.preprocess.max_pixels)?;
        let image = self.preprocess.tensorize(&rgb);
        Ok(self.embed_tensors(&[image])?.remove(0))
    }

    /// Embeds many files: `on_result(index, result)` is called once per path,
    /// in completion order (failures as soon as decoding fails). A file that
    /// fails never stops the others.
    pub fn embed_files(&self, paths: &[PathBuf], mut on_result: impl FnMut(usize, Result<Embedded>)) {
        let next = AtomicUsize::new(0);
        // Bounded: decoders stay at most two batches ahead of the network.
        let (tx, rx) = mpsc::sync_channel::<(usize, Result<Vec<f32>>)>(self.batch_size * 2);
        std::thread::scope(|scope| {
            for _ in 0..self.decode_threads.min(paths.len()).max(1) {
                let tx = tx.clone();
                let next = &next;
                let preprocess = &self.preprocess;
                scope.spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(path) = paths.get(i) else { break };
                    if tx.send((i, preprocess.load(path))).is_err() {
                        break;
                    }
                });
            }
            drop(tx);
            let mut batch_ids = Vec::with_capacity(self.batch_size);
            let mut batch = Vec::with_capacity(self.batch_size);
            let flush = |ids: &mut Vec<usize>,
                         images: &mut Vec<Vec<f32>>,
                         on_result: &mut dyn FnMut(usize, Result<Embedded>)| {
                match self.embed_tensors(images) {
                    Ok(out) => ids.iter().zip(out).for_each(|(&i, e)| on_result(i, Ok(e))),
                    Err(e) => {
                        let msg = e.to_string();
                        ids.iter().for_each(|&i| {
                            on_result(i, Err(crate::Error::Msg(format!("{}: {msg}", paths[i].display()))))
                        })
                    }
                }
                ids.clear();
                images.clear();
            };
            for (i, decoded) in rx {
                match decoded {
                    Ok(image) => {
                        batch_ids.push(i);
                        batch.push(image);
                        if batch.len() == self.batch_size {
                            flush(&mut batch_ids, &mut batch, &mut on_result);
                        }
                    }
                    Err(e) => on_result(i, Err(e)),
                }
            }
            if !batch.is_empty() {
                flush(&mut batch_ids, &mut batch, &mut on_result);
            }
        });
    }
}

/// Softmax of logits, as probabilities.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// Indices of the `k` largest values, largest first.
pub fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let p = softmax(&[1.0, 3.0, 2.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(top_k(&p, 2), vec![1, 2]);
    }
}
