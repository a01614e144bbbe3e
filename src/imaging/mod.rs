//! Pure image functions the first stages call (no caching, no I/O beyond what they name).

pub mod brick;
pub mod contact_sheet;
pub mod crop;
pub mod external;
pub mod face_crop;
pub mod face_mesh;
pub mod openpose;
pub mod phash;
pub mod source;
pub mod synthetic;

/// Writes `img` as a PNG, every I/O error reported. (The image crate's own `save`
/// writes through a `BufWriter` whose final flush errors are dropped: on a full disk it
/// left a truncated PNG and said nothing.)
pub fn write_png(img: &image::RgbImage, path: &std::path::Path) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(std::io::Error::other)?;
    std::fs::write(path, bytes)
}
