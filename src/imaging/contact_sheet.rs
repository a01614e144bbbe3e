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

/// A column title that fits its cell, as lines: whole at scale 2 if it fits, else
/// wrapped after its `-`, `_` or spaces at scale 2 (`android-` / `nnapi`), else the same
/// at scale 1, a word longer than the cell cut with `..`. Every title of a sheet is drawn
/// at a size a person reads; none is cut while wrapping fits it.
pub fn fit_title(title: &str, cell_px: u32) -> (Vec<String>, u32) {
    // The last glyph's trailing column of spacing need not fit.
    let fits = |t: &str, scale: u32| text_width(t, scale) <= cell_px + scale;
    for scale in [2, 1] {
        if fits(title, scale) {
            return (vec![title.to_string()], scale);
        }
        let words = split_words(title);
        if words.iter().all(|w| fits(w, scale)) {
            let mut lines: Vec<String> = Vec::new();
            for w in words {
                match lines.last_mut() {
                    Some(last) if fits(&format!("{last}{w}"), scale) => last.push_str(&w),
                    _ => lines.push(w),
                }
            }
            let lines: Vec<String> = lines.iter().map(|l| l.trim_end().to_string()).collect();
            if lines.len() <= MAX_TITLE_LINES {
                return (lines, scale);
            }
        }
    }
    let fits = ((cell_px + 1) / 6) as usize;
    let kept: String = title.chars().take(fits.saturating_sub(2)).collect();
    (vec![format!("{kept}..")], 1)
}

/// A title wraps onto at most this many lines.
const MAX_TITLE_LINES: usize = 3;

/// `android-nnapi` → `android-`, `nnapi`: each piece keeps the separator that ends it.
fn split_words(title: &str) -> Vec<String> {
    let mut words = vec![String::new()];
    for c in title.chars() {
        words.last_mut().expect("never empty").push(c);
        if matches!(c, '-' | '_' | ' ') {
            words.push(String::new());
        }
    }
    words.retain(|w| !w.is_empty());
    words
}

/// Pixel height of one title line at `scale`, with the space under it.
fn line_height(scale: u32) -> u32 {
    7 * scale + 3
}

/// A grid of `cell_px` cells under a header row of `column_titles` (the header as tall
/// as the most wrapped title).
pub fn contact_sheet(rows: &[Vec<RgbImage>], column_titles: &[&str], cell_px: u32) -> RgbImage {
    let cols = rows
        .iter()
        .map(|r| r.len())
        .max()
        .unwrap_or(0)
        .max(column_titles.len()) as u32;
    let gap = 4;
    let titles: Vec<(Vec<String>, u32)> = column_titles
        .iter()
        .map(|t| fit_title(t, cell_px))
        .collect();
    let text_h = titles
        .iter()
        .map(|(lines, scale)| lines.len() as u32 * line_height(*scale))
        .max()
        .unwrap_or(0)
        .max(line_height(2));
    let header = text_h + 7;
    let width = cols * (cell_px + gap) + gap;
    let height = header + rows.len() as u32 * (cell_px + gap) + gap;
    let mut sheet = RgbImage::from_pixel(width.max(1), height.max(1), Rgb([32, 32, 36]));
    for (c, (lines, scale)) in titles.iter().enumerate() {
        let x = gap + c as u32 * (cell_px + gap);
        // Lines centred in the header, each centred in its column.
        let block = lines.len() as u32 * line_height(*scale);
        let mut ty = 4 + (text_h - block) / 2;
        for line in lines {
            let tw = text_width(line, *scale);
            let tx = x + cell_px.saturating_sub(tw) / 2;
            draw_text(&mut sheet, tx, ty, line, *scale, Rgb([235, 235, 235]));
            ty += line_height(*scale);
        }
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
        // A wrapped title makes the header taller, the cells move down under it.
        let img = RgbImage::from_pixel(10, 10, Rgb([200, 0, 0]));
        let sheet = contact_sheet(&[vec![img.clone(), img]], &["source", "android-nnapi"], 128);
        let header = 2 * line_height(2) + 7;
        assert_eq!(sheet.height(), header + 132 + 4);
        assert_eq!(sheet.get_pixel(4 + 64, header + 64).0, [200, 0, 0]);
        assert_eq!(sheet.get_pixel(4 + 64, header - 1).0, [32, 32, 36]);
        // The title row is not empty.
        assert!((0..sheet.width()).any(|x| sheet.get_pixel(x, 10).0 == [235, 235, 235]));
    }

    #[test]
    fn titles_fit_their_cells_smaller_or_cut() {
        let lines = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(fit_title("student", 128), (lines(&["student"]), 2));
        // Wrapped at its hyphen, at the size of the other titles, not shrunk or cut.
        assert_eq!(
            fit_title("android-nnapi", 128),
            (lines(&["android-", "nnapi"]), 2)
        );
        assert_eq!(
            fit_title("ios-coreml-fp16", 128),
            (lines(&["ios-", "coreml-", "fp16"]), 2)
        );
        // A word longer than the cell even at scale 1 is cut.
        let (cut, scale) = fit_title("averyveryverylongtargetnameindeed", 128);
        assert_eq!((cut[0].as_str(), scale), ("averyveryverylongta..", 1));
        assert!(text_width(&cut[0], 1) <= 128 + 1);
    }
}
