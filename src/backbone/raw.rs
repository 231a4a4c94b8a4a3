//! Camera RAW files (DNG, CR2, NEF, ARW and the other TIFF-based ones):
//! the JPEG preview the camera embedded, which is what every photo
//! browser shows before a RAW is developed, and what a CNN needs (a
//! demosaiced, white-balanced picture). Decoding the sensor data itself
//! (the `rawloader` crate) would cost seconds per file and still need the
//! camera's colour processing to look like the photo.
//!
//! The file is a TIFF: a chain of IFDs (image file directories), each
//! possibly with sub-IFDs (tag 0x14A) and an EXIF IFD. A preview is either
//! a JPEG pointed at by `JPEGInterchangeFormat` (0x201) and its length
//! (0x202), or an IFD whose one strip (0x111 / 0x117) is JPEG-compressed
//! (compression 6 or 7). The largest preview wins; the orientation of IFD0
//! (0x112) turns it, as the camera meant.

/// A TIFF with the marks of a camera RAW: Canon's `CR` at byte 8, a
/// `DNGVersion` tag (0xC612), or sub-IFDs (Nikon, Sony, Pentax: the raw
/// data and the preview hang there). A plain TIFF has none of them and is
/// decoded as an image.
pub fn is_raw(bytes: &[u8]) -> bool {
    let Some(tiff) = Tiff::new(bytes) else { return false };
    if bytes.get(8..10) == Some(b"CR") {
        return true;
    }
    let ifd0 = tiff.u32_at(4).unwrap_or(0) as usize;
    tiff.entries(ifd0).is_some_and(|mut e| e.any(|(tag, ..)| tag == 0xC612 || tag == 0x014A))
}

/// The largest JPEG preview inside a RAW file and the orientation (EXIF
/// value 1-8) IFD0 gives it; `None` when the camera embedded none.
pub fn preview(bytes: &[u8]) -> Option<(&[u8], u16)> {
    let tiff = Tiff::new(bytes)?;
    let ifd0 = tiff.u32_at(4)? as usize;
    let orientation = tiff.value(ifd0, 0x0112).filter(|o| (1..=8).contains(o)).unwrap_or(1) as u16;
    let mut best: Option<&[u8]> = None;
    let mut pending = vec![ifd0];
    let mut seen = Vec::new();
    // Every IFD reachable from IFD0: the chain, sub-IFDs and the EXIF IFD
    // (a damaged file could loop: each offset is visited once, 64 at most).
    while let Some(ifd) = pending.pop() {
        if seen.contains(&ifd) || seen.len() >= 64 {
            continue;
        }
        seen.push(ifd);
        let Some(entries) = tiff.entries(ifd) else { continue };
        let (mut jpeg_at, mut jpeg_len, mut compression, mut strip_at, mut strip_len) = (None, None, None, None, None);
        for (tag, kind, count, field) in entries {
            let first = tiff.scalar(kind, field);
            match tag {
                0x0201 => jpeg_at = first,
                0x0202 => jpeg_len = first,
                0x0103 => compression = first,
                0x0111 if count == 1 => strip_at = first,
                0x0117 if count == 1 => strip_len = first,
                0x014A | 0x8769 => pending.extend(tiff.offsets(kind, count, field)),
                _ => {}
            }
        }
        if let Some(next) = tiff.next_ifd(ifd) {
            pending.push(next);
        }
        let mut candidates = vec![(jpeg_at, jpeg_len)];
        if matches!(compression, Some(6 | 7)) {
            candidates.push((strip_at, strip_len));
        }
        for (at, len) in candidates {
            let Some(jpeg) =
                at.zip(len).and_then(|(a, l)| bytes.get(a as usize..(a as usize).checked_add(l as usize)?))
            else {
                continue;
            };
            // A JPEG that can stand alone (a lossless-JPEG raw strip starts with SOI too, then SOF3: skipped).
            if jpeg.starts_with(&[0xFF, 0xD8]) && !is_lossless_jpeg(jpeg) && best.is_none_or(|b| jpeg.len() > b.len()) {
                best = Some(jpeg);
            }
        }
    }
    best.map(|b| (b, orientation))
}

/// The file extension and media type of a RAW file: Canon's and DNG by
/// their marks, the others by the camera's make (IFD0's `Make`).
pub fn kind(bytes: &[u8]) -> (&'static str, &'static str) {
    let tiff = Tiff::new(bytes);
    let ifd0 = tiff.as_ref().and_then(|t| t.u32_at(4)).unwrap_or(0) as usize;
    if bytes.get(8..10) == Some(b"CR") {
        return ("cr2", "image/x-canon-cr2");
    }
    let Some(tiff) = tiff else { return ("raw", "image/x-dcraw") };
    if tiff.entries(ifd0).is_some_and(|mut e| e.any(|e| e.0 == 0xC612)) {
        return ("dng", "image/x-adobe-dng");
    }
    let make = tiff.entries(ifd0).and_then(|mut e| e.find(|e| e.0 == 0x010F)).and_then(|(_, _, count, field)| {
        let at = if count <= 4 { field } else { tiff.u32_at(field)? as usize };
        tiff.bytes.get(at..at + count as usize)
    });
    let make = make.map(|m| String::from_utf8_lossy(m).to_ascii_uppercase()).unwrap_or_default();
    if make.starts_with("NIKON") {
        ("nef", "image/x-nikon-nef")
    } else if make.starts_with("SONY") {
        ("arw", "image/x-sony-arw")
    } else {
        ("raw", "image/x-dcraw")
    }
}

/// Whether a JPEG stream is lossless (SOF3: a RAW's sensor data, not a picture).
fn is_lossless_jpeg(jpeg: &[u8]) -> bool {
    let mut i = 2;
    while i + 4 <= jpeg.len() && jpeg[i] == 0xFF {
        let marker = jpeg[i + 1];
        match marker {
            0xC3 | 0xC7 | 0xCB | 0xCF => return true,
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => return false,
            0xD9 | 0xDA => return false,
            _ => {}
        }
        i += 2 + u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
    }
    false
}

/// A TIFF's bytes and byte order.
struct Tiff<'a> {
    bytes: &'a [u8],
    little: bool,
}

impl<'a> Tiff<'a> {
    fn new(bytes: &'a [u8]) -> Option<Self> {
        match bytes.get(..4)? {
            [b'I', b'I', 42, 0] => Some(Self { bytes, little: true }),
            [b'M', b'M', 0, 42] => Some(Self { bytes, little: false }),
            _ => None,
        }
    }

    fn u16_at(&self, at: usize) -> Option<u16> {
        let b: [u8; 2] = self.bytes.get(at..at + 2)?.try_into().ok()?;
        Some(if self.little { u16::from_le_bytes(b) } else { u16::from_be_bytes(b) })
    }

    fn u32_at(&self, at: usize) -> Option<u32> {
        let b: [u8; 4] = self.bytes.get(at..at + 4)?.try_into().ok()?;
        Some(if self.little { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) })
    }

    /// An IFD's entries: (tag, type, count, offset of the 4-byte value field).
    fn entries(&self, ifd: usize) -> Option<impl Iterator<Item = (u16, u16, u32, usize)> + '_> {
        let n = self.u16_at(ifd)? as usize;
        self.bytes.get(ifd + 2..ifd + 2 + n * 12)?;
        Some((0..n).filter_map(move |i| {
            let at = ifd + 2 + i * 12;
            Some((self.u16_at(at)?, self.u16_at(at + 2)?, self.u32_at(at + 4)?, at + 8))
        }))
    }

    fn next_ifd(&self, ifd: usize) -> Option<usize> {
        let n = self.u16_at(ifd)? as usize;
        let next = self.u32_at(ifd + 2 + n * 12)? as usize;
        (next != 0).then_some(next)
    }

    /// The first value of a SHORT (3) or LONG (4, 13: IFD) field.
    fn scalar(&self, kind: u16, field: usize) -> Option<u32> {
        match kind {
            3 => self.u16_at(field).map(u32::from),
            4 | 13 => self.u32_at(field),
            _ => None,
        }
    }

    /// The offsets a LONG/IFD field lists (inline when one, else at its offset).
    fn offsets(&self, kind: u16, count: u32, field: usize) -> Vec<usize> {
        if !matches!(kind, 4 | 13) || count == 0 || count > 16 {
            return Vec::new();
        }
        let at = if count == 1 { field } else { self.u32_at(field).unwrap_or(u32::MAX) as usize };
        (0..count as usize).filter_map(|i| self.u32_at(at + 4 * i).map(|o| o as usize)).collect()
    }

    /// A tag's first value in an IFD.
    fn value(&self, ifd: usize, tag: u16) -> Option<u32> {
        self.entries(ifd)?.find(|e| e.0 == tag).and_then(|(_, kind, _, field)| self.scalar(kind, field))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little TIFF the way cameras lay out a RAW: IFD0 (orientation, a
    /// small JPEG thumbnail by `JPEGInterchangeFormat`, one sub-IFD), the
    /// sub-IFD holding the big preview as a JPEG strip, and a `DNGVersion`
    /// in IFD0. Big- or little-endian.
    fn raw_file(thumb: &[u8], preview: &[u8], orientation: u16, little: bool) -> Vec<u8> {
        let u16b = |v: u16| if little { v.to_le_bytes() } else { v.to_be_bytes() };
        let u32b = |v: u32| if little { v.to_le_bytes() } else { v.to_be_bytes() };
        let mut out: Vec<u8> = if little { b"II*\0".to_vec() } else { b"MM\0*".to_vec() };
        out.extend(u32b(8));
        let ifd0_entries = 5u16;
        let ifd0_len = 2 + 12 * ifd0_entries as usize + 4;
        let sub = 8 + ifd0_len;
        let sub_entries = 3u16;
        let sub_len = 2 + 12 * sub_entries as usize + 4;
        let thumb_at = sub + sub_len;
        let preview_at = thumb_at + thumb.len();
        let entry = |out: &mut Vec<u8>, tag: u16, kind: u16, value: u32| {
            out.extend(u16b(tag));
            out.extend(u16b(kind));
            out.extend(u32b(1));
            if kind == 3 {
                out.extend(u16b(value as u16));
                out.extend([0, 0]);
            } else {
                out.extend(u32b(value));
            }
        };
        out.extend(u16b(ifd0_entries));
        entry(&mut out, 0x0112, 3, orientation as u32);
        entry(&mut out, 0x014A, 4, sub as u32);
        entry(&mut out, 0x0201, 4, thumb_at as u32);
        entry(&mut out, 0x0202, 4, thumb.len() as u32);
        entry(&mut out, 0xC612, 1, 0x0104_0000);
        out.extend(u32b(0));
        out.extend(u16b(sub_entries));
        entry(&mut out, 0x0103, 3, 7);
        entry(&mut out, 0x0111, 4, preview_at as u32);
        entry(&mut out, 0x0117, 4, preview.len() as u32);
        out.extend(u32b(0));
        out.extend(thumb);
        out.extend(preview);
        out
    }

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 128]));
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Jpeg).unwrap();
        out
    }

    #[test]
    fn the_largest_embedded_jpeg_is_the_preview_in_either_byte_order() {
        let (thumb, big) = (jpeg(16, 12), jpeg(64, 48));
        for little in [true, false] {
            let file = raw_file(&thumb, &big, 6, little);
            assert!(is_raw(&file));
            let (found, orientation) = preview(&file).expect("a preview");
            assert_eq!(found, &big[..], "little-endian {little}");
            assert_eq!(orientation, 6);
        }
    }

    #[test]
    fn plain_tiffs_and_damaged_raws_are_told_apart() {
        let mut tiff = Vec::new();
        image::RgbImage::new(4, 4).write_to(&mut std::io::Cursor::new(&mut tiff), image::ImageFormat::Tiff).unwrap();
        assert!(!is_raw(&tiff), "a plain TIFF is an image, not a RAW");
        assert!(!is_raw(b"\xFF\xD8\xFF"));
        // Cut off before the preview: found nothing, no panic.
        let file = raw_file(&jpeg(16, 12), &jpeg(64, 48), 1, true);
        for cut in [10, 40, 120, file.len() - 10] {
            let _ = preview(&file[..cut]);
        }
        let thumb_only = raw_file(&jpeg(16, 12), b"not a jpeg", 1, true);
        assert_eq!(preview(&thumb_only).map(|p| p.0.len()), Some(jpeg(16, 12).len()), "the thumbnail is all there is");
    }

    #[test]
    fn a_raw_decodes_as_its_preview_turned_by_its_orientation() {
        let big = jpeg(64, 48);
        let file = raw_file(&jpeg(16, 12), &big, 6, true);
        assert_eq!(kind(&file), ("dng", "image/x-adobe-dng"));
        let path = std::path::Path::new("photo.dng");
        let rgb = crate::backbone::decode_rgb(&file, path, u64::MAX).unwrap();
        let plain = crate::backbone::decode_rgb(&big, path, u64::MAX).unwrap();
        assert_eq!(rgb, image::imageops::rotate90(&plain), "orientation 6: turned a quarter clockwise");
        let without = raw_file(b"no", b"preview", 1, true);
        let err = crate::backbone::decode_rgb(&without, path, u64::MAX).unwrap_err().to_string();
        assert!(err.contains("photo.dng") && err.contains("RAW") && err.contains("export it"), "{err}");
    }
}
