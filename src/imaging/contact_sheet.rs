//! Contact sheets (a grid: one row per example, one column per stage) with titles drawn
//! in a built-in 5x7 pixel font, so no font file is needed.

use image::{imageops, Rgb, RgbImage};

/// 5x7 glyphs, one byte per row, the low 5 bits left to right.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        'A' => [14, 17, 17, 31, 17, 17, 17],
        'B' => [30, 17, 17, 30, 17, 17, 30],
        'C' => [14, 17, 16, 16, 16, 17, 14],
        'D' => [30, 17, 17, 17, 17, 17, 30],
        'E' => [31, 16, 16, 30, 16, 16, 31],
        'F' => [31, 16, 16, 30, 16, 16, 16],
        'G' => [14, 17, 16, 23, 17, 17, 15],
        'H' => [17, 17, 17, 31, 17, 17, 17],
        'I' => [14, 4, 4, 4, 4, 4, 14],
        'J' => [7, 2, 2, 2, 2, 18, 12],
        'K' => [17, 18, 20, 24, 20, 18, 17],
        'L' => [16, 16, 16, 16, 16, 16, 31],
        'M' => [17, 27, 21, 21, 17, 17, 17],
        'N' => [17, 17, 25, 21, 19, 17, 17],
        'O' => [14, 17, 17, 17, 17, 17, 14],
        'P' => [30, 17, 17, 30, 16, 16, 16],
        'Q' => [14, 17, 17, 17, 21, 18, 13],
        'R' => [30, 17, 17, 30, 20, 18, 17],
        'S' => [15, 16, 16, 14, 1, 1, 30],
        'T' => [31, 4, 4, 4, 4, 4, 4],
        'U' => [17, 17, 17, 17, 17, 17, 14],
        'V' => [17, 17, 17, 17, 17, 10, 4],
        'W' => [17, 17, 17, 21, 21, 21, 10],
        'X' => [17, 17, 10, 4, 10, 17, 17],
        'Y' => [17, 17, 10, 4, 4, 4, 4],
        'Z' => [31, 1, 2, 4, 8, 16, 31],
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [31, 2, 4, 2, 1, 17, 14],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        '-' => [0, 0, 0, 31, 0, 0, 0],
        '_' => [0, 0, 0, 0, 0, 0, 31],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        ':' => [0, 12, 12, 0, 12, 12, 0],
        '|' => [4, 4, 4, 4, 4, 4, 4],
        '(' => [2, 4, 8, 8, 8, 4, 2],
        ')' => [8, 4, 2, 2, 2, 4, 8],
        '%' => [24, 25, 2, 4, 8, 19, 3],
        '/' => [0, 1, 2, 4, 8, 16, 0],
        '=' => [0, 0, 31, 0, 31, 0, 0],
        '+' => [0, 4, 4, 31, 4, 4, 0],
        ',' => [0, 0, 0, 0, 12, 4, 8],
        _ => [0; 7],
    }
}

/// Draws `text` with its top-left at (x, y); each font pixel becomes `scale`² pixels.
pub fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, scale: u32, color: Rgb<u8>) {
    for (i, ch) in text.chars().enumerate() {
        let g = glyph(ch);
        let ox = x + i as u32 * 6 * scale;
        for (row, bits) in g.iter().enumerate() {
            for col in 0..5u32 {
                if bits & (1 << (4 - col)) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let (px, py) = (ox + col * scale + dx, y + row as u32 * scale + dy);
                            if px < img.width() && py < img.height() {
                                img.put_pixel(px, py, color);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Width in pixels of `text` drawn at `scale`.
pub fn text_width(text: &str, scale: u32) -> u32 {
    text.chars().count() as u32 * 6 * scale
}

/// A column title that fits its cell: at scale 2, else at scale 1 (a target's name such
/// as `android-nnapi`), else cut with `..` at scale 1.
pub fn fit_title(title: &str, cell_px: u32) -> (String, u32) {
    for scale in [2, 1] {
        // The last glyph's trailing column of spacing need not fit.
        if text_width(title, scale) <= cell_px + scale {
            return (title.to_string(), scale);
        }
    }
    let fits = ((cell_px + 1) / 6) as usize;
    let kept: String = title.chars().take(fits.saturating_sub(2)).collect();
    (format!("{kept}.."), 1)
}

/// A grid of `cell_px` cells under a header row of `column_titles`.
pub fn contact_sheet(rows: &[Vec<RgbImage>], column_titles: &[&str], cell_px: u32) -> RgbImage {
    let cols = rows
        .iter()
        .map(|r| r.len())
        .max()
        .unwrap_or(0)
        .max(column_titles.len()) as u32;
    let gap = 4;
    let header = 24;
    let width = cols * (cell_px + gap) + gap;
    let height = header + rows.len() as u32 * (cell_px + gap) + gap;
    let mut sheet = RgbImage::from_pixel(width.max(1), height.max(1), Rgb([32, 32, 36]));
    for (c, title) in column_titles.iter().enumerate() {
        let x = gap + c as u32 * (cell_px + gap);
        let (title, scale) = fit_title(title, cell_px);
        let tw = text_width(&title, scale);
        let tx = x + cell_px.saturating_sub(tw) / 2;
        let ty = if scale == 2 { 5 } else { 8 };
        draw_text(&mut sheet, tx, ty, &title, scale, Rgb([235, 235, 235]));
    }
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.iter().enumerate() {
            let cell = imageops::resize(img, cell_px, cell_px, imageops::FilterType::Nearest);
            let x = gap + c as u32 * (cell_px + gap);
            let y = header + r as u32 * (cell_px + gap);
            imageops::replace(&mut sheet, &cell, x as i64, y as i64);
        }
    }
    sheet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheet_has_a_cell_per_image_and_titles() {
        let img = RgbImage::from_pixel(10, 10, Rgb([200, 0, 0]));
        let sheet = contact_sheet(
            &[vec![img.clone(), img.clone()], vec![img.clone(), img]],
            &["source", "teacher"],
            32,
        );
        assert_eq!(sheet.dimensions(), (2 * 36 + 4, 24 + 2 * 36 + 4));
        assert_eq!(sheet.get_pixel(4 + 16, 24 + 16).0, [200, 0, 0]);
        // The title row is not empty.
        assert!((0..sheet.width()).any(|x| sheet.get_pixel(x, 10).0 == [235, 235, 235]));
    }

    #[test]
    fn titles_fit_their_cells_smaller_or_cut() {
        assert_eq!(fit_title("student", 128), ("student".into(), 2));
        assert_eq!(fit_title("android-nnapi", 128), ("android-nnapi".into(), 1));
        let (cut, scale) = fit_title("a-very-long-target-name-indeed", 128);
        assert_eq!((cut.as_str(), scale), ("a-very-long-target-..", 1));
        assert!(text_width(&cut, 1) <= 128 + 1);
    }
}
