//! What a photo's file says about itself, read at index time (never by
//! re-embedding): when it was taken and with which camera (EXIF, through
//! `kamadak-exif`), and its pixel size (the image header). The date falls
//! back to the file's modification time, so every image has one.

use std::path::Path;

use serde::Serialize;

/// A photo's facts, as stored beside its record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PhotoMeta {
    /// When it was taken, Unix seconds: EXIF `DateTimeOriginal` (else
    /// `DateTimeDigitized`, `DateTime`), with its offset when the file
    /// gives one (else read as UTC), else the file's modification time.
    /// `None` only for images indexed before this was kept.
    pub taken: Option<i64>,
    /// The camera, `Make Model` (the model alone when it names the make).
    pub camera: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

/// Reads the facts of the image at `path` (modified at `mtime_ns`);
/// what cannot be read is left empty, never an error. Reads the header
/// and the EXIF block, not the whole file.
pub fn read(path: &Path, mtime_ns: i64) -> PhotoMeta {
    match std::fs::File::open(path) {
        Ok(f) => read_from(std::io::BufReader::new(f), mtime_ns),
        Err(_) => read_from(std::io::Cursor::new(&[][..]), mtime_ns),
    }
}

/// The facts of an image held in memory (an upload), received at `mtime_ns`.
pub fn of_bytes(bytes: &[u8], mtime_ns: i64) -> PhotoMeta {
    read_from(std::io::Cursor::new(bytes), mtime_ns)
}

fn read_from<R: std::io::BufRead + std::io::Seek>(mut r: R, mtime_ns: i64) -> PhotoMeta {
    let mut meta = PhotoMeta::default();
    if let Some((w, h)) =
        image::ImageReader::new(&mut r).with_guessed_format().ok().and_then(|i| i.into_dimensions().ok())
    {
        (meta.width, meta.height) = (Some(w), Some(h));
    }
    if let Some(exif) = r.rewind().ok().and_then(|_| exif::Reader::new().read_from_container(&mut r).ok()) {
        meta.taken = [exif::Tag::DateTimeOriginal, exif::Tag::DateTimeDigitized, exif::Tag::DateTime]
            .into_iter()
            .find_map(|tag| exif.get_field(tag, exif::In::PRIMARY).and_then(date_of));
        let text = |tag| {
            exif.get_field(tag, exif::In::PRIMARY)
                .map(|f| f.display_value().to_string().trim_matches(|c: char| c == '"' || c.is_whitespace()).to_owned())
                .filter(|s| !s.is_empty())
        };
        meta.camera = match (text(exif::Tag::Make), text(exif::Tag::Model)) {
            (Some(make), Some(model)) if model.to_lowercase().starts_with(&make.to_lowercase()) => Some(model),
            (Some(make), Some(model)) => Some(format!("{make} {model}")),
            (make, model) => make.or(model),
        };
        if meta.width.is_none() {
            let dim = |tag| exif.get_field(tag, exif::In::PRIMARY).and_then(|f| f.value.get_uint(0));
            (meta.width, meta.height) = (dim(exif::Tag::PixelXDimension), dim(exif::Tag::PixelYDimension));
        }
    }
    meta.taken = meta.taken.or(Some(mtime_ns.div_euclid(1_000_000_000)));
    meta
}

/// An EXIF date field as Unix seconds.
fn date_of(field: &exif::Field) -> Option<i64> {
    let exif::Value::Ascii(ref parts) = field.value else { return None };
    let d = exif::DateTime::from_ascii(parts.first()?).ok()?;
    if d.year == 0 || d.month == 0 || d.day == 0 {
        return None;
    }
    let local = unix_seconds(d.year as i64, d.month as i64, d.day as i64)
        + d.hour as i64 * 3600
        + d.minute as i64 * 60
        + d.second as i64;
    Some(local - d.offset.map_or(0, |m| m as i64 * 60))
}

/// Seconds from 1970-01-01 to the start of this (proleptic Gregorian) day.
pub fn unix_seconds(year: i64, month: i64, day: i64) -> i64 {
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468) * 86_400
}

/// A date the CLI and the API take (`2023`, `2023-06`, `2023-06-15`) as
/// the Unix seconds it starts at, with the start of the period after it
/// (for `before`: everything in 2023 is before 2024).
pub fn parse_date(text: &str) -> crate::Result<(i64, i64)> {
    let bad = || {
        crate::Error::BadQuery(format!("\"{text}\" is not a date: give YYYY, YYYY-MM or YYYY-MM-DD (e.g. 2023-06-15)"))
    };
    let parts: Vec<i64> =
        text.trim().split('-').map(|p| p.parse::<i64>().map_err(|_| bad())).collect::<Result<_, _>>()?;
    match parts[..] {
        [y] if (1..=9999).contains(&y) => Ok((unix_seconds(y, 1, 1), unix_seconds(y + 1, 1, 1))),
        [y, m] if (1..=9999).contains(&y) && (1..=12).contains(&m) => {
            let next = if m == 12 { unix_seconds(y + 1, 1, 1) } else { unix_seconds(y, m + 1, 1) };
            Ok((unix_seconds(y, m, 1), next))
        }
        [y, m, d] if (1..=9999).contains(&y) && (1..=12).contains(&m) && (1..=31).contains(&d) => {
            let start = unix_seconds(y, m, d);
            Ok((start, start + 86_400))
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days_and_dates_parse() {
        assert_eq!(unix_seconds(1970, 1, 1), 0);
        assert_eq!(unix_seconds(2000, 3, 1), 951_868_800);
        assert_eq!(unix_seconds(2024, 2, 29) + 86_400, unix_seconds(2024, 3, 1));
        assert_eq!(parse_date("2023").unwrap(), (unix_seconds(2023, 1, 1), unix_seconds(2024, 1, 1)));
        assert_eq!(parse_date("2023-12").unwrap().1, unix_seconds(2024, 1, 1));
        assert_eq!(parse_date("2023-06-15").unwrap().1 - parse_date("2023-06-15").unwrap().0, 86_400);
        for bad in ["", "yesterday", "2023-13", "2023-1-1-1", "0"] {
            assert!(parse_date(bad).unwrap_err().to_string().contains("YYYY-MM-DD"), "{bad}");
        }
    }

    #[test]
    fn a_file_without_exif_is_dated_by_its_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.png");
        image::RgbImage::new(4, 3).save(&path).unwrap();
        let meta = read(&path, 1_700_000_000_123_000_000);
        assert_eq!(meta, PhotoMeta { taken: Some(1_700_000_000), camera: None, width: Some(4), height: Some(3) });
    }
}
