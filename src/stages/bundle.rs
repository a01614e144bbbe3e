//! `bundle`: one reproducible tarball per effect — the model files per target, golden
//! frames per target (held-out inputs and that model's exact outputs, as `.npy`, so an
//! app team can assert on the phone that it ships what effectc verified), a contact
//! sheet (source | teacher | student | each target), `manifest.json` and `report.html`.
//! Sorted entries, zeroed metadata, fixed gzip: the same inputs give the same bytes.

use super::target::read_frames;
use crate::bundle::{write_reproducible_tar_gz, EntrySource};
use crate::digest::{Digest, KeyHasher};
use crate::plan::{Params, RunContext, RunOutput, Stage, StageError};
use crate::recipe::Student;
use image::RgbImage;
use serde_json::{json, Map, Value};

pub struct BundleStage {
    pub effect: String,
    pub version: Option<String>,
    pub student: Student,
    /// (target name, format, precision)
    pub targets: Vec<(String, String, String)>,
    /// How many held-out rows the contact sheet and golden frames show.
    pub rows: usize,
}

fn frame_to_image(frame: &[f32], h: usize, w: usize) -> RgbImage {
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let at = |c: usize| {
            ((frame[(c * h + y as usize) * w + x as usize].clamp(-1.0, 1.0) + 1.0) * 127.5).round()
                as u8
        };
        image::Rgb([at(0), at(1), at(2)])
    })
}

fn read_json(ctx: &RunContext, name: &str) -> Result<Value, StageError> {
    let path = ctx.input(name)?;
    let bytes = std::fs::read(path).map_err(|e| StageError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| StageError::infra(format!("{name}: {e}")))
}

impl Stage for BundleStage {
    fn kind(&self) -> &'static str {
        "bundle"
    }
    fn version(&self) -> u32 {
        1
    }
    fn params(&self) -> Params {
        let mut p = Params::from([
            ("effect".into(), self.effect.clone()),
            ("version".into(), self.version.clone().unwrap_or_default()),
            ("student.width".into(), self.student.width.to_string()),
            ("rows".into(), self.rows.to_string()),
        ]);
        for (name, format, precision) in &self.targets {
            p.insert(format!("target.{name}"), format!("{format} {precision}"));
        }
        p
    }

    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        let (inputs, shape) = read_frames(ctx.input("holdout-inputs.npy")?)?;
        let (references, _) = read_frames(ctx.input("holdout-reference.npy")?)?;
        let (h, w) = (shape[2], shape[3]);
        let rows = self.rows.min(inputs.len());
        let mut entries: Vec<(String, EntrySource)> = Vec::new();
        let mut targets = Map::new();
        let mut target_outputs = Vec::new();
        for (name, format, precision) in &self.targets {
            let prefix = format!("target/{name}/");
            let mut shipped = Vec::new();
            for (input, path) in &ctx.inputs {
                let Some(rel) = input.strip_prefix(&prefix) else {
                    continue;
                };
                // The verified core and the calibration are build by-products, not shipped.
                if rel == "model.core.tflite" || rel == "calibration.json" {
                    continue;
                }
                entries.push((
                    format!("models/{name}/{rel}"),
                    EntrySource::File(path.clone()),
                ));
                shipped.push(rel.to_string());
            }
            let main_file = shipped
                .iter()
                .find(|f| !f.contains('/'))
                .cloned()
                .unwrap_or_else(|| "model.mlpackage".into());
            let check = read_json(ctx, &format!("verify/{name}/check.json"))?;
            let (outs, _) = read_frames(ctx.input(&format!("verify/{name}/outputs.npy"))?)?;
            let mut golden = Vec::new();
            for (i, (x, y)) in inputs.iter().zip(&outs).take(rows).enumerate() {
                let enc = |d: &[f32]| {
                    crate::bundle::npy::encode_f32(&[1, shape[1], h, w], d)
                        .map_err(|e| StageError::infra(format!("npy: {e}")))
                };
                let (ip, op) = (
                    format!("golden/{name}/input-{i}.npy"),
                    format!("golden/{name}/output-{i}.npy"),
                );
                entries.push((ip.clone(), EntrySource::Bytes(enc(x)?)));
                entries.push((op.clone(), EntrySource::Bytes(enc(y)?)));
                golden.push(json!({"input": ip, "output": op}));
            }
            let latency = check["latency"]["median_ms"].as_f64();
            targets.insert(
                name.clone(),
                json!({
                    "file": format!("models/{name}/{main_file}"),
                    "format": format,
                    "precision": precision,
                    "psnr_db": check["psnr_db"],
                    "ssim": check["ssim"],
                    "max_abs": check["max_abs"],
                    "latency_ms": latency,
                    "size_bytes": check["size_bytes"],
                    "verified": check["passed"],
                    "golden": golden,
                }),
            );
            target_outputs.push((name.clone(), outs));
        }
        // Contact sheet: source | teacher | student | each target, on held-out frames.
        let mut sheet_rows = Vec::new();
        for i in 0..rows {
            let mut row = vec![frame_to_image(&inputs[i], h, w)];
            row.push(super::png::read_rgb(ctx.input(&format!("teacher/{i}"))?)?);
            row.push(frame_to_image(&references[i], h, w));
            for (_, outs) in &target_outputs {
                row.push(
                    outs.get(i)
                        .map(|o| frame_to_image(o, h, w))
                        .unwrap_or_else(|| RgbImage::new(w as u32, h as u32)),
                );
            }
            sheet_rows.push(row);
        }
        let mut titles = vec!["source", "teacher", "student"];
        titles.extend(target_outputs.iter().map(|(n, _)| n.as_str()));
        let sheet = super::imaging::contact_sheet::contact_sheet(&sheet_rows, &titles, 128);
        let sheet_path = ctx.out_dir.join("contact-sheet.png");
        super::png::write_png(&sheet, &sheet_path)?;
        entries.push((
            "contact-sheet.png".into(),
            EntrySource::File(sheet_path.clone()),
        ));

        let student = read_json(ctx, "student-metrics.json")?;
        let teacher = read_json(ctx, "teacher-metrics.json")?;
        // Every file's digest, then the manifest that lists them.
        let mut files = Map::new();
        for (path, src) in &entries {
            let d = match src {
                EntrySource::Bytes(b) => Digest::of_bytes(b),
                EntrySource::File(p) => Digest::of_file(p).map_err(|e| StageError::io(p, e))?,
            };
            files.insert(path.clone(), json!(d.hex()));
        }
        // The recipe as built: a digest of everything this bundle was made from.
        let mut h_in = KeyHasher::new("effectc/bundle-inputs/v1");
        for (name, path) in &ctx.inputs {
            h_in.str(name)
                .digest(&Digest::of_file(path).map_err(|e| StageError::io(path, e))?);
        }
        let manifest = json!({
            "effect": self.effect,
            "version": self.version,
            "recipe_digest": h_in.finish().hex(),
            "files": files,
            "student": {
                "width": self.student.width,
                "blocks": self.student.blocks,
                "params": student["params"],
                "macs_512": student["macs_512"],
                "psnr_db": student["psnr_vs_teacher_db"],
                "psnr_vs_target_db": student["psnr_db"],
                "ssim": student["ssim"],
                "flicker_ratio": student["flicker_ratio"],
            },
            "teacher": {"width": self.student.teacher_width, "psnr_db": teacher["psnr_db"], "identity_psnr_db": teacher["identity_psnr_db"]},
            "targets": targets,
        });
        let manifest_bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        let manifest_path = ctx.out_dir.join("manifest.json");
        std::fs::write(&manifest_path, &manifest_bytes)
            .map_err(|e| StageError::io(&manifest_path, e))?;
        entries.push(("manifest.json".into(), EntrySource::Bytes(manifest_bytes)));
        let report_path = ctx.out_dir.join("report.html");
        crate::bundle::report::write_html(&manifest, Some("contact-sheet.png"), &report_path)
            .map_err(|e| StageError::infra(e.to_string()))?;
        entries.push(("report.html".into(), EntrySource::File(report_path.clone())));
        let tar = ctx.out_dir.join("bundle.tar.gz");
        write_reproducible_tar_gz(&entries, &tar).map_err(|e| StageError::infra(e.to_string()))?;
        let mut out = RunOutput::default();
        out.files.insert("bundle.tar.gz".into(), tar);
        out.files.insert("manifest.json".into(), manifest_path);
        out.files.insert("contact-sheet.png".into(), sheet_path);
        out.files.insert("report.html".into(), report_path);
        let verified = targets.values().all(|t| t["verified"] == true);
        out.metrics.insert("targets".into(), json!(targets.len()));
        out.metrics.insert("verified".into(), json!(verified));
        Ok(out)
    }
}
