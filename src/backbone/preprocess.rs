//! Image decoding and preprocessing: bytes -> oriented RGB -> resized,
//! centre-cropped, normalised NHWC floats.
//!
//! Formats: JPEG, PNG, WebP, GIF (first frame), BMP, TIFF, HEIF/HEIC
//! through the system's libheif (`heif`), and camera RAW files by their
//! embedded JPEG preview (`raw`). EXIF orientation
//! is applied; grayscale, CMYK, 16-bit and alpha images become 8-bit RGB (alpha
//! is composited onto white). The pixel limit is checked from the header, before
//! anything is decoded.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use crate::{Error, Result};

/// Default pixel limit: 100 megapixels.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

/// How images are prepared for a backbone.
#[derive(Debug, Clone, Copy)]
pub struct Preprocess {
    /// Square crop size fed to the network.
    pub size: u32,
    /// Shorter side after resizing, before the crop (`size * 256 / 224`).
    pub resize: u32,
    /// Per-channel mean and std on the 0-255 scale. The Lite weights were
    /// trained on `(x - 127) / 128` (inception-style, for quantisation).
    pub mean: f32,
    pub std: f32,
    /// Images with more pixels than this are refused before decoding.
    pub max_pixels: u64,
}

impl Preprocess {
    /// The preprocessing for a square input of `size` pixels.
    pub fn for_size(size: u32) -> Self {
        Self {
            size,
            resize: (size as f64 * 256.0 / 224.0).round() as u32,
            mean: 127.0,
            std: 128.0,
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }

    /// Reads, decodes and preprocesses one image file into `size*size*3` floats (HWC).
    pub fn load(&self, path: &Path) -> Result<Vec<f32>> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let rgb = decode_rgb(&bytes, path, self.max_pixels)?;
        Ok(self.tensorize(&rgb))
    }

    /// Resizes the shorter side, centre-crops and normalises an RGB image.
    ///
    /// Only the source region that lands in the crop is resampled (bilinear,
    /// antialiased like PIL), straight to `size x size`: the same pixels as
    /// resize-then-crop, without resampling the parts thrown away.
    pub fn tensorize(&self, rgb: &RgbImage) -> Vec<f32> {
        use fast_image_resize::{
            images::Image, images::ImageRef, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer,
        };
        let (w, h) = rgb.dimensions();
        let short = w.min(h).max(1) as f64;
        let scale = self.resize as f64 / short;
        // Like torchvision's Resize(int): the long side is truncated, not rounded.
        let (nw, nh) = if w <= h {
            (self.resize, ((h as f64 * scale) as u32).max(self.resize))
        } else {
            (((w as f64 * scale) as u32).max(self.resize), self.resize)
        };
        let left = ((nw - self.size) as f64 / 2.0).round();
        let top = ((nh - self.size) as f64 / 2.0).round();
        // The crop box in source pixels (per-axis scale, as the resize has).
        let (sx, sy) = (w as f64 / nw as f64, h as f64 / nh as f64);
        let crop = (left * sx, top * sy, self.size as f64 * sx, self.size as f64 * sy);
        let src = ImageRef::new(w, h, rgb.as_raw(), PixelType::U8x3).expect("RgbImage buffer matches its size");
        let mut dst = Image::new(self.size, self.size, PixelType::U8x3);
        let options = ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
            .crop(crop.0, crop.1, crop.2, crop.3);
        Resizer::new()
            .resize(&src, &mut dst, &options)
            .expect("pixel types match and the crop box lies inside the image");
        let inv_std = 1.0 / self.std;
        dst.buffer().iter().map(|&v| (v as f32 - self.mean) * inv_std).collect()
    }
}

/// Decodes image bytes into 8-bit RGB, applying EXIF orientation.
///
/// `path` only names the file in errors.
pub fn decode_rgb(bytes: &[u8], path: &Path, max_pixels: u64) -> Result<RgbImage> {
    let bad = |reason: String| Error::BadImage { path: path.to_path_buf(), reason };
    if bytes.is_empty() {
        return Err(bad("the file is empty (0 bytes)".into()));
    }
    if super::heif::is_heif(bytes) {
        return super::heif::decode(bytes, path, max_pixels);
    }
    if super::raw::is_raw(bytes) {
        let Some((jpeg, orientation)) = super::raw::preview(bytes) else {
            return Err(bad("a camera RAW file without an embedded JPEG preview; \
                 export it as JPEG or TIFF from the camera's software to index it"
                .into()));
        };
        let rgb = decode_rgb(jpeg, path, max_pixels).map_err(|e| match e {
            Error::BadImage { reason, .. } => bad(format!("its embedded JPEG preview: {reason}")),
            other => other,
        })?;
        let mut image = DynamicImage::ImageRgb8(rgb);
        if let Some(o) = image::metadata::Orientation::from_exif(orientation as u8) {
            image.apply_orientation(o);
        }
        return Ok(image.into_rgb8());
    }
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| bad(e.to_string()))?;
    if reader.format().is_none() {
        return Err(bad("not a recognised image format (JPEG, PNG, WebP, GIF, BMP, TIFF or HEIF)".into()));
    }
    let mut decoder = reader.into_decoder().map_err(|e| bad(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    let pixels = width as u64 * height as u64;
    if pixels > max_pixels {
        return Err(Error::TooLarge { path: path.to_path_buf(), width, height, pixels, limit: max_pixels });
    }
    if pixels == 0 {
        return Err(bad(format!("image has no pixels ({width}x{height})")));
    }
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| bad(e.to_string()))?;
    image.apply_orientation(orientation);
    Ok(to_rgb_on_white(image))
}

/// Whether a JPEG ends before its end-of-image marker: a file copied only
/// in part. The decoder fills what is missing with grey and reports no
/// error, so the indexer warns instead. Walks the marker segments and
/// skips each scan's entropy-coded data (`FF00` stuffing, `RSTn`), so bytes
/// after the end marker (a motion photo's video) are no reason to warn.
/// Not a JPEG: `false`.
pub fn jpeg_cut_short(bytes: &[u8]) -> bool {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let mut i = 2;
    loop {
        while bytes.get(i).is_some_and(|&b| b != 0xFF) {
            i += 1;
        }
        while bytes.get(i) == Some(&0xFF) {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else { return true };
        i += 1;
        match marker {
            0xD9 => return false,
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = bytes.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]) as usize) else {
            return true;
        };
        i += len;
        if i > bytes.len() {
            return true;
        }
        if marker == 0xDA {
            loop {
                let Some(p) = bytes[i..].iter().position(|&b| b == 0xFF) else { return true };
                i += p;
                match bytes.get(i + 1) {
                    None => return true,
                    Some(0x00 | 0xD0..=0xD7) => i += 2,
                    Some(0xFF) => i += 1,
                    Some(_) => break,
                }
            }
        }
    }
}

/// Converts any colour type to RGB8, compositing transparency onto white.
fn to_rgb_on_white(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let rgba = image.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut rgb = RgbImage::new(w, h);
    for (dst, src) in rgb.pixels_mut().zip(rgba.pixels()) {
        let a = src[3] as u32;
        for c in 0..3 {
            dst[c] = ((src[c] as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
        }
    }
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jpeg_cut_short_is_told_from_a_whole_one() {
        let img = RgbImage::from_fn(96, 64, |x, y| image::Rgb([(x * 2) as u8, (y * 3) as u8, ((x ^ y) * 5) as u8]));
        let mut jpeg = Vec::new();
        img.write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg).unwrap();
        assert!(!jpeg_cut_short(&jpeg), "a whole JPEG");
        for cut in [jpeg.len() - 2, jpeg.len() * 9 / 10, jpeg.len() / 2, 3] {
            assert!(jpeg_cut_short(&jpeg[..cut]), "cut at {cut} of {}", jpeg.len());
        }
        let mut motion = jpeg.clone();
        motion.extend_from_slice(b"\x00\x00\x00\x18ftypmp42 then a video \xFF\xDA\x00");
        assert!(!jpeg_cut_short(&motion), "bytes after the end marker are not a cut");
        assert!(!jpeg_cut_short(b"\x89PNG\r\n"), "not a JPEG");
    }

    #[test]
    fn resize_then_centre_crop_gives_the_square_size() {
        let p = Preprocess::for_size(224);
        assert_eq!(p.resize, 256);
        let img = RgbImage::from_pixel(500, 375, image::Rgb([127, 255, 0]));
        let t = p.tensorize(&img);
        assert_eq!(t.len(), 224 * 224 * 3);
        assert_eq!(&t[..3], &[0.0, 1.0, -127.0 / 128.0]);
    }

    #[test]
    fn lite2_resizes_to_297_before_cropping_260() {
        assert_eq!(Preprocess::for_size(260).resize, 297);
    }

    #[test]
    fn transparent_pixels_become_white() {
        let img = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(2, 2, image::Rgba([0, 0, 0, 0])));
        assert_eq!(to_rgb_on_white(img).get_pixel(0, 0).0, [255, 255, 255]);
    }
}
