//! Image decoding: every supported format, orientation, colour conversions,
//! and a typed error naming the file for every kind of bad input.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use imgsearch::backbone::{decode_rgb, Preprocess};
use imgsearch::Error;

/// A 40x20 test image: red on the left half, blue on the right.
fn test_image() -> RgbImage {
    RgbImage::from_fn(40, 20, |x, _| if x < 20 { Rgb([255, 0, 0]) } else { Rgb([0, 0, 255]) })
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    image.write_to(&mut buf, format).unwrap();
    buf.into_inner()
}

fn decode(bytes: &[u8]) -> Result<RgbImage, Error> {
    decode_rgb(bytes, Path::new("upload/photo.bin"), 100_000_000)
}

#[test]
fn every_supported_format_decodes_to_rgb() {
    let img = DynamicImage::ImageRgb8(test_image());
    for format in
        [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::WebP, ImageFormat::Gif, ImageFormat::Bmp, ImageFormat::Tiff]
    {
        let rgb = decode(&encode(&img, format)).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_eq!(rgb.dimensions(), (40, 20), "{format:?}");
        let left = rgb.get_pixel(5, 10);
        assert!(left[0] > 200 && left[2] < 60, "{format:?}: left pixel {left:?}");
    }
}

#[test]
fn grayscale_16_bit_and_alpha_become_rgb() {
    let gray16 = DynamicImage::ImageLuma16(image::ImageBuffer::from_pixel(8, 8, image::Luma([65535u16])));
    assert_eq!(decode(&encode(&gray16, ImageFormat::Png)).unwrap().get_pixel(0, 0).0, [255, 255, 255]);
    let gray = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(8, 8, image::Luma([100])));
    assert_eq!(decode(&encode(&gray, ImageFormat::Png)).unwrap().get_pixel(0, 0).0, [100, 100, 100]);
    let half = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(8, 8, image::Rgba([0, 0, 0, 128])));
    let px = decode(&encode(&half, ImageFormat::Png)).unwrap().get_pixel(0, 0).0;
    assert!(px.iter().all(|&v| (126..=128).contains(&v)), "half-transparent black on white: {px:?}");
}

/// Inserts an EXIF APP1 segment with the given orientation after the JPEG SOI.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"II*\0\x08\0\0\0".to_vec(); // little-endian TIFF, IFD at 8
    tiff.extend_from_slice(&1u16.to_le_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn exif_orientation_is_applied() {
    let jpeg = encode(&DynamicImage::ImageRgb8(test_image()), ImageFormat::Jpeg);
    // 6 = rotate 90 degrees clockwise: 40x20 becomes 20x40, red on top.
    let rotated = decode(&with_exif_orientation(&jpeg, 6)).unwrap();
    assert_eq!(rotated.dimensions(), (20, 40));
    let top = rotated.get_pixel(10, 5);
    assert!(top[0] > 200 && top[2] < 60, "top pixel {top:?}");
}

#[test]
fn zero_byte_file_is_a_bad_image_naming_the_file() {
    let err = decode(b"").unwrap_err();
    assert!(matches!(err, Error::BadImage { .. }));
    assert!(err.to_string().contains("upload/photo.bin") && err.to_string().contains("empty"), "{err}");
}

#[test]
fn non_image_file_is_a_bad_image() {
    let err = decode(b"name,score\nalice,3\n").unwrap_err();
    assert!(matches!(err, Error::BadImage { .. }), "{err}");
    assert!(err.to_string().contains("not a recognised image format"), "{err}");
}

#[test]
fn truncated_files_are_bad_images_not_panics() {
    let img = DynamicImage::ImageRgb8(RgbImage::from_fn(64, 64, |x, y| Rgb([(x * 4) as u8, (y * 4) as u8, 7])));
    for format in [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::Gif, ImageFormat::WebP, ImageFormat::Bmp] {
        let bytes = encode(&img, format);
        for cut in [bytes.len() / 2, 40.min(bytes.len() - 1)] {
            match decode(&bytes[..cut]) {
                Err(Error::BadImage { path, .. }) => assert_eq!(path, Path::new("upload/photo.bin")),
                other => panic!("{format:?} cut at {cut}: expected BadImage, got {other:?}"),
            }
        }
    }
}

#[test]
fn corrupt_image_data_is_a_bad_image() {
    let mut bytes = encode(&DynamicImage::ImageRgb8(test_image()), ImageFormat::Png);
    let n = bytes.len();
    for b in &mut bytes[40..n - 12] {
        *b ^= 0x5A;
    }
    assert!(matches!(decode(&bytes), Err(Error::BadImage { .. })));
}

/// A 30000 x 30000 BMP header with no pixel data: refused from the header alone.
#[test]
fn over_limit_image_is_refused_before_decoding() {
    let mut bmp = Vec::new();
    bmp.extend_from_slice(b"BM");
    bmp.extend_from_slice(&(54u32).to_le_bytes());
    bmp.extend_from_slice(&[0; 4]);
    bmp.extend_from_slice(&54u32.to_le_bytes());
    bmp.extend_from_slice(&40u32.to_le_bytes());
    bmp.extend_from_slice(&30000i32.to_le_bytes());
    bmp.extend_from_slice(&30000i32.to_le_bytes());
    bmp.extend_from_slice(&1u16.to_le_bytes());
    bmp.extend_from_slice(&24u16.to_le_bytes());
    bmp.extend_from_slice(&[0; 24]);
    match decode(&bmp) {
        Err(Error::TooLarge { width: 30000, height: 30000, limit: 100_000_000, .. }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn pixel_limit_is_configurable() {
    let png = encode(&DynamicImage::ImageRgb8(test_image()), ImageFormat::Png);
    let err = decode_rgb(&png, Path::new("small.png"), 100).unwrap_err();
    assert!(err.to_string().contains("small.png") && err.to_string().contains("--max-pixels"), "{err}");
}

#[test]
fn missing_file_is_an_io_error_naming_it() {
    let err = Preprocess::for_size(224).load(Path::new("/nonexistent/cat.jpg")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }) && err.to_string().contains("/nonexistent/cat.jpg"), "{err}");
}
