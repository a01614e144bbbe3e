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

pub fn write_png(img: &RgbImage, path: &Path) -> Result<(), StageError> {
    crate::imaging::write_png(img, path).map_err(|e| StageError::io(path, e))
}
