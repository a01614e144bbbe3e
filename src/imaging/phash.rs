//! A perceptual hash for `sources { dedupe }`: the picture shrunk to 17×16 grey pixels
//! (area averaging), one bit per pair of horizontal neighbours (is the left one brighter?),
//! 256 bits. The same photo saved at another size or quality, or two frames of a still
//! scene, differ in a few bits; different photos in about half of them.

use image::RgbImage;

/// 256 bits, row by row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PHash(pub [u64; 4]);

impl PHash {
    pub fn of(img: &RgbImage) -> PHash {
        let grey = image::DynamicImage::ImageRgb8(img.clone()).into_luma8();
        // `thumbnail` averages each output pixel's whole footprint: no aliasing on a
        // large photo, the same picture at two sizes gives nearly the same 17×16.
        let small = image::imageops::thumbnail(&grey, 17, 16);
        let mut bits = [0u64; 4];
        for y in 0..16u32 {
            for x in 0..16u32 {
                if small.get_pixel(x, y).0[0] > small.get_pixel(x + 1, y).0[0] {
                    let i = (y * 16 + x) as usize;
                    bits[i / 64] |= 1 << (i % 64);
                }
            }
        }
        PHash(bits)
    }

    /// How many of the 256 bits differ.
    pub fn distance(&self, other: &PHash) -> u32 {
        self.0
            .iter()
            .zip(other.0)
            .map(|(a, b)| (a ^ b).count_ones())
            .sum()
    }

    pub fn hex(&self) -> String {
        self.0.iter().map(|w| format!("{w:016x}")).collect()
    }

    pub fn parse(s: &str) -> Option<PHash> {
        let s = s.trim();
        if s.len() != 64 {
            return None;
        }
        let mut bits = [0u64; 4];
        for (i, w) in bits.iter_mut().enumerate() {
            *w = u64::from_str_radix(s.get(i * 16..i * 16 + 16)?, 16).ok()?;
        }
        Some(PHash(bits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(w: u32, h: u32, seed: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let (u, v) = (x as f32 / w as f32, y as f32 / h as f32);
            let t = (u * (3.0 + seed as f32) + v * v * 7.0 + (u * v * seed as f32).sin()).sin();
            let g = (128.0 + 120.0 * t) as u8;
            image::Rgb([g, g.wrapping_add(seed as u8 * 40), 255 - g])
        })
    }

    #[test]
    fn a_picture_at_two_sizes_is_near_and_another_picture_is_far() {
        let a = pattern(640, 480, 1);
        let small = image::imageops::resize(&a, 200, 150, image::imageops::FilterType::Triangle);
        let b = pattern(640, 480, 4);
        let (ha, hs, hb) = (PHash::of(&a), PHash::of(&small), PHash::of(&b));
        // Within `dedupe`'s default distance (this smooth pattern has many near-equal
        // neighbours, whose bits a resize may flip: 9 of 256 here).
        let near = crate::recipe::model::DEFAULT_DEDUPE_DISTANCE;
        assert!(ha.distance(&hs) <= near, "{}", ha.distance(&hs));
        assert!(ha.distance(&hb) > 40, "{}", ha.distance(&hb));
        assert_eq!(PHash::parse(&ha.hex()), Some(ha));
    }
}
