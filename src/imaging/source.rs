//! Reading a source photo or frame, and the reasons one is left out of the dataset: bytes
//! no decoder reads, a JPEG cut short (which the decoder half-reads without a word, filling
//! the rest with grey), a picture too small for the crop. The crop stages skip such an
//! item with the reason (`RunOutput::skip`); the build goes on, up to `max-skipped`.

use image::RgbImage;

/// The photo in `bytes` (read from a file already), or why it is not one to train on.
pub fn decode_source(bytes: &[u8]) -> Result<RgbImage, String> {
    // One line, as the summary lists it (decoders' messages may end in newlines).
    let unreadable = |e: &dyn std::fmt::Display| {
        let text = e.to_string();
        format!(
            "not a readable image: {}",
            text.split_whitespace().collect::<Vec<_>>().join(" ")
        )
    };
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| unreadable(&e))?;
    let format = reader.format();
    // Decoding from memory: any error, an I/O one included (unexpected end), is the data's.
    let img = reader.decode().map_err(|e| unreadable(&e))?;
    if format == Some(image::ImageFormat::Jpeg) {
        if let Some(why) = jpeg_incomplete(bytes) {
            return Err(format!("truncated JPEG: {why}"));
        }
    }
    Ok(img.to_rgb8())
}

/// Why the picture is too small for a crop of `size_px` (its short side under half the
/// crop's: the crop would be a blur of upscaled pixels), or None.
pub fn too_small(img: &RgbImage, size_px: u32) -> Option<String> {
    let (w, h) = img.dimensions();
    let min = size_px.div_ceil(2);
    (w.min(h) < min).then(|| {
        format!("too small for the crop: {w}x{h} px, the crop of {size_px} px needs a short side of at least {min} px")
    })
}

/// Walks a JPEG's markers from SOI to EOI, skipping each segment by its length and each
/// scan's entropy-coded data to the next marker: None when EOI is reached, else why not.
/// (Bytes after EOI, a phone's trailer or a motion photo's clip, are not looked at; a
/// thumbnail inside APP1 is skipped with its segment, so its own EOI does not count.)
pub fn jpeg_incomplete(b: &[u8]) -> Option<String> {
    let n = b.len();
    if n < 4 || b[0] != 0xFF || b[1] != 0xD8 {
        return Some("no start-of-image marker".into());
    }
    let mut pos = 2;
    loop {
        // A marker: 0xFF (fill bytes allowed) then its code.
        if pos >= n {
            return Some(format!(
                "the data ends at byte {n} before the end-of-image marker"
            ));
        }
        if b[pos] != 0xFF {
            return Some(format!("no marker at byte {pos}"));
        }
        while pos < n && b[pos] == 0xFF {
            pos += 1;
        }
        if pos >= n {
            return Some(format!(
                "the data ends at byte {n} before the end-of-image marker"
            ));
        }
        let code = b[pos];
        pos += 1;
        match code {
            0xD9 => return None,
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        if pos + 2 > n {
            return Some(format!("the data ends at byte {n} inside a segment header"));
        }
        let len = u16::from_be_bytes([b[pos], b[pos + 1]]) as usize;
        if len < 2 || pos + len > n {
            return Some(format!(
                "a segment at byte {} runs past the end of the data ({n} bytes)",
                pos - 2
            ));
        }
        pos += len;
        if code == 0xDA {
            // Entropy-coded data up to the next marker that is not a stuffed 0xFF00 or a
            // restart marker.
            loop {
                match b[pos..].iter().position(|&x| x == 0xFF) {
                    None => {
                        return Some(format!(
                            "the data ends at byte {n} inside the image data, before the end-of-image marker"
                        ))
                    }
                    Some(k) => {
                        pos += k;
                        match b.get(pos + 1) {
                            None => {
                                return Some(format!(
                                    "the data ends at byte {n} inside the image data, before the end-of-image marker"
                                ))
                            }
                            Some(0x00) | Some(0xD0..=0xD7) => pos += 2,
                            // Fill bytes before a marker: the outer loop skips them.
                            Some(_) => break,
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x ^ y) * 3) as u8])
        });
        let mut bytes = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
        bytes
    }

    #[test]
    fn a_whole_jpeg_is_complete_and_a_cut_one_is_not_whatever_the_decoder_says() {
        let whole = jpeg(64, 48);
        assert_eq!(jpeg_incomplete(&whole), None);
        assert!(decode_source(&whole).is_ok());
        // A trailer after EOI (a phone's metadata) is fine.
        let mut trailer = whole.clone();
        trailer.extend_from_slice(b"SEFT trailer bytes");
        assert_eq!(jpeg_incomplete(&trailer), None);
        for cut in [
            whole.len() - 2,
            whole.len() * 3 / 4,
            whole.len() / 2,
            300,
            20,
        ] {
            let why = decode_source(&whole[..cut]).unwrap_err();
            assert!(
                why.starts_with("truncated JPEG") || why.starts_with("not a readable image"),
                "cut at {cut}: {why}"
            );
        }
        assert!(jpeg_incomplete(&whole[..whole.len() - 2]).is_some());
    }

    #[test]
    fn undecodable_bytes_and_small_pictures_say_why() {
        assert!(decode_source(b"not an image at all")
            .unwrap_err()
            .starts_with("not a readable image"));
        // A 400-byte stub of a JPEG: the decoder's own words, on one line.
        let stub = decode_source(&jpeg(64, 48)[..400]).unwrap_err();
        assert!(!stub.contains('\n'), "{stub:?}");
        let small = RgbImage::new(100, 60);
        assert_eq!(
            too_small(&small, 256).unwrap(),
            "too small for the crop: 100x60 px, the crop of 256 px needs a short side of at least 128 px"
        );
        assert_eq!(too_small(&RgbImage::new(300, 128), 256), None);
    }
}
