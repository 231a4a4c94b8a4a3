//! HEIF/HEIC (the default of iPhones) through the system's libheif, loaded
//! at run time (`libheif.so.1`; Debian's `libheif1` with its HEVC decoder):
//! the build needs nothing, and where the library is missing such a file is
//! skipped with a reason that says what to install. Why not the
//! `libheif-rs` crate: its releases need libheif 1.17 or newer to build, and
//! Debian 12 ships 1.15.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::Path;
use std::sync::OnceLock;

use image::RgbImage;

use crate::{Error, Result};

/// Whether `bytes` start like a HEIF file (an ISO BMFF `ftyp` box with a
/// HEIF brand).
pub fn is_heif(bytes: &[u8]) -> bool {
    bytes.len() >= 12
        && &bytes[4..8] == b"ftyp"
        && matches!(&bytes[8..12], b"heic" | b"heix" | b"hevc" | b"hevx" | b"heim" | b"heis" | b"mif1" | b"msf1")
}

#[repr(C)]
struct HeifError {
    code: c_int,
    subcode: c_int,
    message: *const c_char,
}

const COLORSPACE_RGB: c_int = 1;
const CHROMA_INTERLEAVED_RGB: c_int = 10;
const CHANNEL_INTERLEAVED: c_int = 10;

/// The few libheif functions a decode needs.
struct Lib {
    _lib: libloading::Library,
    context_alloc: unsafe extern "C" fn() -> *mut c_void,
    context_free: unsafe extern "C" fn(*mut c_void),
    read_from_memory: unsafe extern "C" fn(*mut c_void, *const c_void, usize, *const c_void) -> HeifError,
    primary_handle: unsafe extern "C" fn(*mut c_void, *mut *mut c_void) -> HeifError,
    handle_release: unsafe extern "C" fn(*const c_void),
    handle_width: unsafe extern "C" fn(*const c_void) -> c_int,
    handle_height: unsafe extern "C" fn(*const c_void) -> c_int,
    decode_image: unsafe extern "C" fn(*const c_void, *mut *mut c_void, c_int, c_int, *const c_void) -> HeifError,
    image_release: unsafe extern "C" fn(*const c_void),
    plane: unsafe extern "C" fn(*const c_void, c_int, *mut c_int) -> *const u8,
    image_width: unsafe extern "C" fn(*const c_void, c_int) -> c_int,
    image_height: unsafe extern "C" fn(*const c_void, c_int) -> c_int,
}

fn lib() -> std::result::Result<&'static Lib, &'static str> {
    static LIB: OnceLock<std::result::Result<Lib, String>> = OnceLock::new();
    LIB.get_or_init(|| {
        // SAFETY: libheif's initialisers have no preconditions; the symbols
        // below are its stable C API (1.x), typed as its header declares them.
        unsafe {
            let lib = ["libheif.so.1", "libheif.so", "libheif.1.dylib"]
                .iter()
                .find_map(|&name| libloading::Library::new(name).ok())
                .ok_or_else(|| "HEIF needs libheif: install it (Debian/Ubuntu: apt install libheif1)".to_owned())?;
            macro_rules! sym {
                ($name:literal) => {
                    *lib.get($name).map_err(|e| format!("libheif lacks {}: {e}", String::from_utf8_lossy($name)))?
                };
            }
            Ok(Lib {
                context_alloc: sym!(b"heif_context_alloc"),
                context_free: sym!(b"heif_context_free"),
                read_from_memory: sym!(b"heif_context_read_from_memory_without_copy"),
                primary_handle: sym!(b"heif_context_get_primary_image_handle"),
                handle_release: sym!(b"heif_image_handle_release"),
                handle_width: sym!(b"heif_image_handle_get_width"),
                handle_height: sym!(b"heif_image_handle_get_height"),
                decode_image: sym!(b"heif_decode_image"),
                image_release: sym!(b"heif_image_release"),
                plane: sym!(b"heif_image_get_plane_readonly"),
                image_width: sym!(b"heif_image_get_width"),
                image_height: sym!(b"heif_image_get_height"),
                _lib: lib,
            })
        }
    })
    .as_ref()
    .map_err(String::as_str)
}

/// Frees what libheif allocated, whatever path the decode leaves by.
struct Guard<'a> {
    lib: &'a Lib,
    ctx: *mut c_void,
    handle: *mut c_void,
    image: *mut c_void,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        // SAFETY: each pointer is null or was returned by the matching libheif allocator.
        unsafe {
            if !self.image.is_null() {
                (self.lib.image_release)(self.image);
            }
            if !self.handle.is_null() {
                (self.lib.handle_release)(self.handle);
            }
            if !self.ctx.is_null() {
                (self.lib.context_free)(self.ctx);
            }
        }
    }
}

/// Decodes the primary image of a HEIF file into RGB (rotation and
/// mirroring the file records applied), refusing more than `max_pixels`
/// from the header. `path` names the file in errors.
pub fn decode(bytes: &[u8], path: &Path, max_pixels: u64) -> Result<RgbImage> {
    let bad = |reason: String| Error::BadImage { path: path.to_path_buf(), reason };
    let lib = lib().map_err(|e| bad(e.to_owned()))?;
    let check = |e: HeifError| -> Result<()> {
        if e.code == 0 {
            return Ok(());
        }
        // SAFETY: libheif's error messages are static, NUL-terminated strings.
        let message = unsafe { CStr::from_ptr(e.message) }.to_string_lossy().into_owned();
        Err(bad(format!("HEIF: {message}")))
    };
    // SAFETY: `bytes` outlives the context (read without copy, freed by the
    // guard before this returns); every out-pointer is a live local.
    unsafe {
        let mut g =
            Guard { lib, ctx: (lib.context_alloc)(), handle: std::ptr::null_mut(), image: std::ptr::null_mut() };
        if g.ctx.is_null() {
            return Err(bad("HEIF: libheif could not allocate a context".into()));
        }
        check((lib.read_from_memory)(g.ctx, bytes.as_ptr().cast(), bytes.len(), std::ptr::null()))?;
        check((lib.primary_handle)(g.ctx, &mut g.handle))?;
        let (w, h) = ((lib.handle_width)(g.handle).max(0) as u32, (lib.handle_height)(g.handle).max(0) as u32);
        let pixels = w as u64 * h as u64;
        if pixels > max_pixels {
            return Err(Error::TooLarge { path: path.to_path_buf(), width: w, height: h, pixels, limit: max_pixels });
        }
        if pixels == 0 {
            return Err(bad(format!("image has no pixels ({w}x{h})")));
        }
        check((lib.decode_image)(g.handle, &mut g.image, COLORSPACE_RGB, CHROMA_INTERLEAVED_RGB, std::ptr::null()))?;
        let mut stride: c_int = 0;
        let data = (lib.plane)(g.image, CHANNEL_INTERLEAVED, &mut stride);
        let (w, h) = (
            (lib.image_width)(g.image, CHANNEL_INTERLEAVED).max(0) as usize,
            (lib.image_height)(g.image, CHANNEL_INTERLEAVED).max(0) as usize,
        );
        if data.is_null() || (stride as usize) < w * 3 || w == 0 || h == 0 {
            return Err(bad("HEIF: the decoder gave no RGB plane".into()));
        }
        let mut rgb = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            rgb.extend_from_slice(std::slice::from_raw_parts(data.add(y * stride as usize), w * 3));
        }
        RgbImage::from_raw(w as u32, h as u32, rgb).ok_or_else(|| bad("HEIF: bad plane size".into()))
    }
}
