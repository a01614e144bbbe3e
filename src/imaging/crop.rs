//! Centre crop to a square after scaling the short side to the target size.

use image::{imageops, RgbImage};

/// Scales `src` so its short side is `size_px` (Lanczos3), then crops the centre square.
pub fn center_crop_resize(src: &RgbImage, size_px: u32) -> RgbImage {
    let (w, h) = src.dimensions();
    let short = w.min(h).max(1);
    let scale = size_px as f64 / short as f64;
    let nw = ((w as f64 * scale).round() as u32).max(size_px);
    let nh = ((h as f64 * scale).round() as u32).max(size_px);
    let resized = if (nw, nh) == (w, h) {
        src.clone()
    } else {
        imageops::resize(src, nw, nh, imageops::FilterType::Lanczos3)
    };
    let x = (nw - size_px) / 2;
    let y = (nh - size_px) / 2;
    imageops::crop_imm(&resized, x, y, size_px, size_px).to_image()
}
