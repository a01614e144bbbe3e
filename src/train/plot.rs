//! Loss curves as a PNG a person can look at (log-scale y, one colour per term).

use crate::imaging::contact_sheet::draw_text;
use image::{Rgb, RgbImage};

const COLORS: &[[u8; 3]] = &[
    [230, 80, 60],
    [60, 140, 230],
    [80, 190, 90],
    [230, 180, 40],
    [170, 90, 200],
    [40, 200, 200],
];

/// `series`: (label, values per step). Values ≤ 0 are drawn at the bottom.
pub fn loss_plot(title: &str, series: &[(String, Vec<f64>)], width: u32, height: u32) -> RgbImage {
    let mut img = RgbImage::from_pixel(width, height, Rgb([250, 250, 250]));
    let (left, right, top, bottom) = (56u32, 12u32, 28u32, 24u32);
    let (pw, ph) = (width - left - right, height - top - bottom);
    let logs: Vec<f64> = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| *v > 0.0 && v.is_finite())
        .map(|v| v.log10())
        .collect();
    let (lo, hi) = if logs.is_empty() {
        (-1.0, 1.0)
    } else {
        (
            logs.iter().cloned().fold(f64::MAX, f64::min).floor(),
            logs.iter()
                .cloned()
                .fold(f64::MIN, f64::max)
                .ceil()
                .max(logs.iter().cloned().fold(f64::MAX, f64::min).floor() + 1.0),
        )
    };
    let steps = series
        .iter()
        .map(|(_, v)| v.len())
        .max()
        .unwrap_or(1)
        .max(2);
    // Axes and decade grid lines with labels.
    for x in left..left + pw {
        img.put_pixel(x, top + ph, Rgb([40, 40, 40]));
    }
    for y in top..top + ph {
        img.put_pixel(left, y, Rgb([40, 40, 40]));
    }
    let mut d = lo;
    while d <= hi + 1e-9 {
        let y = top + ph - ((d - lo) / (hi - lo) * ph as f64) as u32;
        for x in (left..left + pw).step_by(3) {
            img.put_pixel(x, y.min(top + ph), Rgb([200, 200, 200]));
        }
        draw_text(
            &mut img,
            4,
            y.saturating_sub(4),
            &format!("1E{}", d as i64),
            1,
            Rgb([40, 40, 40]),
        );
        d += 1.0;
    }
    draw_text(&mut img, left, height - 14, "0", 1, Rgb([40, 40, 40]));
    let last = format!("{}", steps);
    draw_text(
        &mut img,
        left + pw - last.len() as u32 * 6,
        height - 14,
        &last,
        1,
        Rgb([40, 40, 40]),
    );
    draw_text(&mut img, left, 6, title, 2, Rgb([20, 20, 20]));
    for (k, (label, values)) in series.iter().enumerate() {
        let color = Rgb(COLORS[k % COLORS.len()]);
        let mut prev: Option<(i64, i64)> = None;
        for (i, v) in values.iter().enumerate() {
            let lv = if *v > 0.0 && v.is_finite() {
                v.log10()
            } else {
                lo
            };
            let x = left as i64 + (i as f64 / (steps - 1) as f64 * (pw - 1) as f64) as i64;
            let y = (top + ph) as i64 - ((lv - lo) / (hi - lo) * ph as f64) as i64;
            if let Some((px, py)) = prev {
                line(&mut img, px, py, x, y, color);
            }
            prev = Some((x, y));
        }
        let lx = left + pw - 110;
        let ly = top + 4 + k as u32 * 12;
        for dx in 0..10 {
            img.put_pixel(lx + dx, ly + 3, color);
        }
        draw_text(&mut img, lx + 14, ly, label, 1, Rgb([40, 40, 40]));
    }
    img
}

fn line(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, color: Rgb<u8>) {
    let n = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
    for i in 0..=n {
        let x = x0 + (x1 - x0) * i / n;
        let y = y0 + (y1 - y0) * i / n;
        if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
            img.put_pixel(x as u32, y as u32, color);
        }
    }
}
