//! Reading and writing the PNGs stages exchange; errors name the file, and their tier
//! comes from the error (undecodable bytes are the data's, a full disk the machine's).

use crate::stages::StageError;
use image::RgbImage;
use std::path::Path;

pub fn read_rgb(path: &Path) -> Result<RgbImage, StageError> {
    let img = image::ImageReader::open(path)
        .map_err(|e| StageError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| StageError::io(path, e))?
        .decode()
        .map_err(|e| StageError::image(path, e))?;
    Ok(img.to_rgb8())
}

/// A source photo or frame for a crop of `size_px`: the picture, or (`Err` inside) why
/// the item is skipped (undecodable, truncated, too small). A file that cannot be read
/// at all is the machine's problem, not the item's: a stage error.
pub fn read_source(path: &Path, size_px: u32) -> Result<Result<RgbImage, String>, StageError> {
    let bytes = std::fs::read(path).map_err(|e| StageError::io(path, e))?;
    Ok(
        crate::imaging::source::decode_source(&bytes).and_then(|img| {
            match crate::imaging::source::too_small(&img, size_px) {
                Some(why) => Err(why),
                None => Ok(img),
            }
        }),
    )
}

pub fn write_png(img: &RgbImage, path: &Path) -> Result<(), StageError> {
    crate::imaging::write_png(img, path).map_err(|e| StageError::io(path, e))
}
