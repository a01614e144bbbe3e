//! MediaPipe's SSD detector post-processing, shared by BlazeFace and the pose detector:
//! the anchors (`SsdAnchorsCalculator`), box decoding (`TensorsToDetectionsCalculator`
//! with `reverse_output_order`) and weighted non-max suppression
//! (`NonMaxSuppressionCalculator`, `WEIGHTED`, IoU). Coordinates here are normalised to
//! the model's input square.

/// `SsdAnchorsCalculatorOptions` as the two graphs set them (every anchor of these
/// models has `fixed_anchor_size: true`, so only centres matter).
#[derive(Debug, Clone)]
pub struct AnchorOptions {
    pub input_size: usize,
    pub strides: &'static [usize],
    /// Anchors per cell per layer: one aspect ratio (1.0) plus the interpolated scale.
    pub anchors_per_layer: usize,
    pub offset: f32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Anchor {
    pub x: f32,
    pub y: f32,
}

/// Consecutive layers with the same stride share one feature map, their anchors
/// interleaved per cell, as MediaPipe generates them.
pub fn anchors(o: &AnchorOptions) -> Vec<Anchor> {
    let mut out = Vec::new();
    let mut layer = 0;
    while layer < o.strides.len() {
        let stride = o.strides[layer];
        let mut same = layer;
        while same < o.strides.len() && o.strides[same] == stride {
            same += 1;
        }
        let per_cell = (same - layer) * o.anchors_per_layer;
        let fm = o.input_size.div_ceil(stride);
        for y in 0..fm {
            for x in 0..fm {
                for _ in 0..per_cell {
                    out.push(Anchor {
                        x: (x as f32 + o.offset) / fm as f32,
                        y: (y as f32 + o.offset) / fm as f32,
                    });
                }
            }
        }
        layer = same;
    }
    out
}

/// One decoded detection, normalised to the input square.
#[derive(Debug, Clone, PartialEq)]
pub struct RawDetection {
    pub score: f32,
    /// xmin, ymin, xmax, ymax.
    pub bbox: [f32; 4],
    pub keypoints: Vec<[f32; 2]>,
}

#[derive(Debug, Clone)]
pub struct DecodeOptions {
    pub num_coords: usize,
    pub num_keypoints: usize,
    /// x_scale = y_scale = w_scale = h_scale (the input side) in both graphs.
    pub scale: f32,
    pub score_clipping: f32,
    pub min_score: f32,
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Boxes and keypoints from the regressors (`anchors.len() * num_coords`) and the
/// classificator logits (`anchors.len()`), keeping those with score >= `min_score`.
pub fn decode(
    regressors: &[f32],
    logits: &[f32],
    anchors: &[Anchor],
    o: &DecodeOptions,
) -> Result<Vec<RawDetection>, String> {
    if regressors.len() != anchors.len() * o.num_coords || logits.len() != anchors.len() {
        return Err(format!(
            "detector outputs have {} and {} values, expected {} and {}",
            regressors.len(),
            logits.len(),
            anchors.len() * o.num_coords,
            anchors.len()
        ));
    }
    let mut out = Vec::new();
    for (i, a) in anchors.iter().enumerate() {
        let score = sigmoid(logits[i].clamp(-o.score_clipping, o.score_clipping));
        if score < o.min_score {
            continue;
        }
        let r = &regressors[i * o.num_coords..(i + 1) * o.num_coords];
        let (cx, cy) = (r[0] / o.scale + a.x, r[1] / o.scale + a.y);
        let (w, h) = (r[2] / o.scale, r[3] / o.scale);
        if w < 0.0 || h < 0.0 {
            continue;
        }
        let keypoints = (0..o.num_keypoints)
            .map(|k| {
                [
                    r[4 + 2 * k] / o.scale + a.x,
                    r[4 + 2 * k + 1] / o.scale + a.y,
                ]
            })
            .collect();
        out.push(RawDetection {
            score,
            bbox: [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0],
            keypoints,
        });
    }
    Ok(out)
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// MediaPipe's weighted NMS: take the best remaining detection, average the boxes and
/// keypoints of every detection overlapping it by more than `threshold` (IoU), weighted
/// by score, keep the best score. Output in descending score.
pub fn weighted_nms(mut dets: Vec<RawDetection>, threshold: f32) -> Vec<RawDetection> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut out = Vec::new();
    while !dets.is_empty() {
        let best = dets[0].clone();
        let (close, rest): (Vec<_>, Vec<_>) = dets
            .into_iter()
            .partition(|d| iou(&d.bbox, &best.bbox) > threshold);
        let total: f32 = close.iter().map(|d| d.score).sum();
        let mut merged = best.clone();
        if total > 0.0 && !close.is_empty() {
            merged.bbox = [0.0; 4];
            merged.keypoints.iter_mut().for_each(|k| *k = [0.0; 2]);
            for d in &close {
                for j in 0..4 {
                    merged.bbox[j] += d.bbox[j] * d.score / total;
                }
                for (m, k) in merged.keypoints.iter_mut().zip(&d.keypoints) {
                    m[0] += k[0] * d.score / total;
                    m[1] += k[1] * d.score / total;
                }
            }
        }
        out.push(merged);
        dets = rest;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchor_counts_match_the_models() {
        let face = AnchorOptions {
            input_size: 128,
            strides: &[8, 16, 16, 16],
            anchors_per_layer: 2,
            offset: 0.5,
        };
        let pose = AnchorOptions {
            input_size: 224,
            strides: &[8, 16, 32, 32, 32],
            anchors_per_layer: 2,
            offset: 0.5,
        };
        let f = anchors(&face);
        assert_eq!(f.len(), 896);
        assert_eq!(
            f[0],
            Anchor {
                x: 0.5 / 16.0,
                y: 0.5 / 16.0
            }
        );
        assert_eq!(f[1], f[0]);
        assert_eq!(f[2].x, 1.5 / 16.0);
        // First anchor of the stride-16 map.
        assert_eq!(
            f[512],
            Anchor {
                x: 0.5 / 8.0,
                y: 0.5 / 8.0
            }
        );
        assert_eq!(anchors(&pose).len(), 2254);
    }

    #[test]
    fn nms_merges_overlaps_weighted_by_score() {
        let d = |s: f32, x: f32| RawDetection {
            score: s,
            bbox: [x, 0.0, x + 1.0, 1.0],
            keypoints: vec![[x, 0.0]],
        };
        let out = weighted_nms(vec![d(0.6, 0.1), d(0.9, 0.0), d(0.8, 5.0)], 0.3);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].score, 0.9);
        let x = (0.9 * 0.0 + 0.6 * 0.1) / 1.5;
        assert!((out[0].bbox[0] - x).abs() < 1e-6 && (out[0].keypoints[0][0] - x).abs() < 1e-6);
        assert_eq!(out[1].bbox[0], 5.0);
    }

    #[test]
    fn decode_applies_anchor_and_scale() {
        let anchors = [Anchor { x: 0.5, y: 0.25 }];
        let mut reg = vec![0.0; 8];
        reg[0] = 12.8; // +0.1 of a 128 input
        reg[2] = 64.0;
        reg[3] = 32.0;
        reg[4] = -12.8;
        let o = DecodeOptions {
            num_coords: 8,
            num_keypoints: 2,
            scale: 128.0,
            score_clipping: 100.0,
            min_score: 0.5,
        };
        let d = decode(&reg, &[2.0], &anchors, &o).unwrap();
        assert_eq!(d.len(), 1);
        let b = d[0].bbox;
        assert!(
            (b[0] - 0.35).abs() < 1e-6 && (b[2] - 0.85).abs() < 1e-6 && (b[1] - 0.125).abs() < 1e-6
        );
        assert!((d[0].keypoints[0][0] - 0.4).abs() < 1e-6);
        assert!(decode(&reg, &[-2.0], &anchors, &o).unwrap().is_empty());
    }
}
