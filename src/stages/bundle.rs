//! `bundle`: one reproducible tarball per effect — the model files per target, golden
//! frames per target (held-out inputs and that model's exact outputs, as `.npy` in the
//! target's own layout, dtype and range, so an app team can feed them to the phone's
//! runtime as they are and assert it ships what effectc verified), a contact sheet
//! (source | teacher | student | each target), `manifest.json` (with each target's
//! input and output as the file declares them) and `report.html`. Sorted entries,
//! zeroed metadata, fixed gzip: the same inputs give the same bytes.
//!
//! The tarball holds only what is a function of the recipe and its inputs, so two clean
//! builds on two machines agree byte for byte. What the build machine measured (each
//! target's latency, the machine itself) goes beside it in `measurements.json`; the
//! report in out/EFFECT/ (written by the CLI after the build, with the build's times)
//! shows both. The golden frames are outputs too (`golden/...`), so that out/EFFECT/
//! holds what its report links to.

use super::target::read_frames;
use super::verify::CheckFile;
use crate::bundle::manifest::{
    GoldenPair, Manifest, StudentSummary, TargetSummary, TeacherSummary, TensorSpec,
};
use crate::bundle::report::{Figure, ReportInput};
use crate::bundle::{write_reproducible_tar_gz, EntrySource};
use crate::digest::Digest;
use crate::protocol::metric;
use crate::recipe::Student;
use crate::stages::{params_of, InputPort, Params, RunContext, RunOutput, Stage, StageError};
use image::RgbImage;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct BundleStage {
    /// `plan::lower::recipe_inputs_digest` of the plan: the manifest's `recipe_digest`.
    pub recipe_digest: Digest,
    pub effect: String,
    pub version: Option<String>,
    pub student: Student,
    /// (target name, format, precision)
    pub targets: Vec<(String, String, String)>,
    /// How many held-out rows the contact sheet and golden frames show.
    pub rows: usize,
}

/// The machine a build ran on, for `measurements.json`.
fn build_machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| {
        t.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|m| m.trim().to_string())
    });
    json!({
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu": cpu,
    })
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

/// What the manifest takes from a training's `metrics.json` (its report's figures by
/// their `protocol::metric` names; an older record's old names too). Absent figures
/// stay `None`.
struct TrainingFigures {
    params: Option<u64>,
    macs_512: Option<u64>,
    psnr_vs_pairs_db: Option<f64>,
    psnr_vs_teacher_db: Option<f64>,
    ssim: Option<f64>,
    flicker_ratio: Option<f64>,
    identity_psnr_db: Option<f64>,
}

impl TrainingFigures {
    fn read(ctx: &RunContext, port: InputPort) -> Result<TrainingFigures, StageError> {
        let m: Map<String, Value> = ctx.read_json(port.pattern)?;
        let m = Value::Object(m);
        Ok(TrainingFigures {
            params: m[metric::PARAMS].as_u64(),
            macs_512: m[metric::MACS_512].as_u64(),
            psnr_vs_pairs_db: metric::read(&m, metric::PSNR_VS_PAIRS_DB),
            psnr_vs_teacher_db: m[metric::PSNR_VS_TEACHER_DB].as_f64(),
            ssim: m[metric::SSIM].as_f64(),
            flicker_ratio: m[metric::FLICKER_RATIO].as_f64(),
            identity_psnr_db: m[metric::IDENTITY_PSNR_DB].as_f64(),
        })
    }
}

impl BundleStage {
    /// The pictures of the report: loss curves, the contact sheet, the pairs sheet.
    fn figures(
        &self,
        ctx: &RunContext,
        sheet: &std::path::Path,
    ) -> Result<Vec<Figure>, StageError> {
        let mut figures = Vec::new();
        let mut add = |path: &std::path::Path, title: &str, caption: &str| {
            let png = std::fs::read(path).map_err(|e| StageError::io(path, e))?;
            figures.push(Figure {
                title: title.into(),
                caption: caption.into(),
                png,
            });
            Ok::<(), StageError>(())
        };
        for (port, title, caption) in [
            (
                TEACHER_LOSS,
                "Teacher loss",
                "The wide teacher's training loss per step.",
            ),
            (
                STUDENT_LOSS,
                "Student loss",
                "The real-time student's distillation loss per step.",
            ),
        ] {
            add(ctx.input(port.pattern)?, title, caption)?;
        }
        add(sheet, "Contact sheet", CONTACT_SHEET_CAPTION)?;
        if let Some(path) = ctx.optional_input(PAIRS_SHEET.pattern)? {
            add(
                path,
                "Pairs",
                "Training pairs: source | each control map the teacher uses | teacher output.",
            )?;
        }
        Ok(figures)
    }
}

/// Target `name`'s input and output as its shipped file declares them.
fn edges(
    ctx: &RunContext,
    name: &str,
    format: &str,
) -> Result<(TensorSpec, TensorSpec), StageError> {
    let read = |rel: &str| {
        let path = ctx.input(&format!("{}/{rel}", TARGET.name(name)))?;
        std::fs::read(path).map_err(|e| StageError::io(path, e))
    };
    let bad = |e: String| StageError::environment(format!("target {name}: {e}"));
    match format {
        "tflite" => crate::verify::io::tflite_edges(&read("model.tflite")?).map_err(bad),
        "onnx" => crate::verify::io::onnx_edges(&read("model.onnx")?).map_err(bad),
        "mlpackage" => {
            // The package folder, rebuilt from its files as the verify stage rebuilds it.
            let dir = ctx
                .out_dir
                .join("packages")
                .join(name)
                .join("model.mlpackage");
            super::target::assemble_mlpackage(ctx, TARGET, name, &dir)?;
            let decoded =
                crate::export::coreml::read_mlpackage(&dir).map_err(|e| bad(e.to_string()))?;
            Ok(crate::verify::io::coreml_edges(&decoded))
        }
        other => Err(bad(format!("no bundle support for format {other}"))),
    }
}

/// What the contact sheet's columns are (the report's caption under it).
pub const CONTACT_SHEET_CAPTION: &str = "Held-out frames: source | pair (the picture the nets learn from) | teacher (the wide net's output) | student | each target's shipped model.";

/// The bundle's inputs: the export's held-out frames and the teacher net's outputs on
/// them, both trainings' metrics and loss
/// curves, the pairs sheet, the teacher's pictures of the first held-out items
/// (`teacher/ROW`, a skipped item's absent), and per target its files and its check.
pub const STUDENT_METRICS: InputPort = InputPort::required("student-metrics.json");
pub const TEACHER_METRICS: InputPort = InputPort::required("teacher-metrics.json");
pub const TEACHER_LOSS: InputPort = InputPort::required("teacher-loss.png");
pub const STUDENT_LOSS: InputPort = InputPort::required("student-loss.png");
pub const PAIRS_SHEET: InputPort = InputPort::optional("pairs.png");
pub const TEACHER_ROW: InputPort = InputPort::optional("teacher/*");
pub const TARGET: InputPort = InputPort::all_outputs("target/*");
pub const VERIFY_CHECK: InputPort = InputPort::required("verify/*/check.json");
pub const VERIFY_OUTPUTS: InputPort = InputPort::required("verify/*/outputs.npy");
pub const HOLDOUT_TEACHER: InputPort = InputPort::required("holdout-teacher.npy");

impl Stage for BundleStage {
    fn kind(&self) -> &'static str {
        "bundle"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &[
            "bundle.tar.gz",
            "contact-sheet.png",
            "manifest.json",
            "measurements.json",
            "report.html",
        ]
    }
    fn inputs(&self) -> &'static [InputPort] {
        &[
            super::verify::HOLDOUT_INPUTS,
            super::verify::HOLDOUT_REFERENCE,
            HOLDOUT_TEACHER,
            STUDENT_METRICS,
            TEACHER_METRICS,
            TEACHER_LOSS,
            STUDENT_LOSS,
            PAIRS_SHEET,
            TEACHER_ROW,
            TARGET,
            VERIFY_CHECK,
            VERIFY_OUTPUTS,
        ]
    }
    fn version(&self) -> u32 {
        // 2: measurements moved out of the tarball into measurements.json.
        // 3: the report beside the tarball shows out/EFFECT/'s name of the sheet.
        // 4: the manifest is the typed `bundle::Manifest` (its fields in declared order).
        // 5: golden frames in each target's own layout/dtype/range, the targets' edges
        //    and bars in the manifest, a self-contained report with pictures.
        // 6: one name per figure in the manifest (`psnr_vs_pairs_db`, `psnr_vs_teacher_db`),
        //    and the report says when the teacher did not learn the effect.
        // 7: the contact sheet shows the teacher net's own output; titles wrap to fit.
        7
    }
    fn params(&self) -> Params {
        #[derive(Serialize)]
        struct P<'a> {
            effect: &'a str,
            #[serde(rename = "recipe-digest")]
            recipe_digest: String,
            version: &'a str,
            #[serde(rename = "student.width")]
            width: u32,
            rows: usize,
            /// Target name → `format precision`.
            target: BTreeMap<&'a str, String>,
        }
        params_of(&P {
            effect: &self.effect,
            recipe_digest: self.recipe_digest.hex(),
            version: self.version.as_deref().unwrap_or_default(),
            width: self.student.width,
            rows: self.rows,
            target: self
                .targets
                .iter()
                .map(|(name, format, precision)| (name.as_str(), format!("{format} {precision}")))
                .collect(),
        })
    }

    fn run(&self, ctx: &mut RunContext) -> Result<RunOutput, StageError> {
        let holdout = Holdout::read(ctx, self.rows)?;
        let mut contents = Contents::default();
        let mut targets = BTreeMap::new();
        let mut measured = Map::new();
        let mut target_outputs = Vec::new();
        for (name, format, precision) in &self.targets {
            let t = bundle_target(ctx, &holdout, name, format, precision, &mut contents)?;
            measured.insert(name.clone(), t.measured);
            targets.insert(name.clone(), t.summary);
            target_outputs.push((name.clone(), t.outputs));
        }
        let sheet_path = contact_sheet(ctx, &holdout, &target_outputs)?;
        contents.add_file("contact-sheet.png", &sheet_path);
        let manifest = self.manifest(ctx, &contents, targets)?;
        let manifest_bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        let manifest_path = ctx.out_dir.join("manifest.json");
        std::fs::write(&manifest_path, &manifest_bytes)
            .map_err(|e| StageError::io(&manifest_path, e))?;
        contents
            .entries
            .push(("manifest.json".into(), EntrySource::Bytes(manifest_bytes)));
        // The report inside the tarball: only what the recipe determines, pictures inline.
        let figures = self.figures(ctx, &sheet_path)?;
        let inner_report = ctx.out_dir.join("report.html");
        crate::bundle::report::write_html(
            &ReportInput {
                manifest: Some(&manifest),
                figures,
                ..Default::default()
            },
            &inner_report,
        )
        .map_err(|e| StageError::environment(e.to_string()))?;
        contents.add_file("report.html", &inner_report);
        let tar = ctx.out_dir.join("bundle.tar.gz");
        write_reproducible_tar_gz(&contents.entries, &tar)
            .map_err(|e| StageError::environment(e.to_string()))?;
        let measurements_path = self.write_measurements(ctx, measured)?;
        let mut out = RunOutput::default();
        out.files
            .insert("measurements.json".into(), measurements_path);
        out.files.insert("bundle.tar.gz".into(), tar);
        out.files.insert("manifest.json".into(), manifest_path);
        out.files.insert("contact-sheet.png".into(), sheet_path);
        out.files.insert("report.html".into(), inner_report);
        for (rel, path) in contents.golden {
            out.files.insert(rel, path);
        }
        let verified = manifest.targets.values().all(|t| t.verified);
        out.metrics
            .insert("targets".into(), json!(manifest.targets.len()));
        out.metrics.insert("verified".into(), json!(verified));
        Ok(out)
    }
}

impl BundleStage {
    /// The manifest: every file's digest so far, the trainings' figures, the targets.
    fn manifest(
        &self,
        ctx: &RunContext,
        contents: &Contents,
        targets: BTreeMap<String, TargetSummary>,
    ) -> Result<Manifest, StageError> {
        let student = TrainingFigures::read(ctx, STUDENT_METRICS)?;
        let teacher = TrainingFigures::read(ctx, TEACHER_METRICS)?;
        let mut files = BTreeMap::new();
        for (path, src) in &contents.entries {
            let d = match src {
                EntrySource::Bytes(b) => Digest::of_bytes(b),
                EntrySource::File(p) => Digest::of_file(p).map_err(|e| StageError::io(p, e))?,
            };
            files.insert(path.clone(), d.hex());
        }
        Ok(Manifest {
            effect: self.effect.clone(),
            version: self.version.clone(),
            recipe_digest: self.recipe_digest.hex(),
            files,
            student: StudentSummary {
                width: self.student.width,
                blocks: self.student.blocks,
                params: student.params,
                macs_512: student.macs_512,
                psnr_vs_pairs_db: student.psnr_vs_pairs_db,
                psnr_vs_teacher_db: student.psnr_vs_teacher_db,
                ssim: student.ssim,
                flicker_ratio: student.flicker_ratio,
            },
            teacher: TeacherSummary {
                width: self.student.teacher_width,
                psnr_vs_pairs_db: teacher.psnr_vs_pairs_db,
                identity_psnr_db: teacher.identity_psnr_db,
            },
            targets,
        })
    }

    /// Beside the tarball: what this machine measured (each target's latency).
    fn write_measurements(
        &self,
        ctx: &RunContext,
        measured: Map<String, Value>,
    ) -> Result<PathBuf, StageError> {
        let measurements = json!({
            "effect": self.effect,
            "recipe_digest": self.recipe_digest.hex(),
            "machine": build_machine(),
            "targets": measured,
        });
        let path = ctx.out_dir.join("measurements.json");
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(&measurements).unwrap_or_default(),
        )
        .map_err(|e| StageError::io(&path, e))?;
        Ok(path)
    }
}

/// The held-out frames the golden files and the contact sheet show.
struct Holdout {
    inputs: Vec<Vec<f32>>,
    references: Vec<Vec<f32>>,
    shape: [usize; 4],
    /// The held-out items' teacher images, skipped items left out.
    teachers: Vec<PathBuf>,
    /// How many rows the sheet and the golden frames show.
    rows: usize,
}

impl Holdout {
    fn read(ctx: &RunContext, rows: usize) -> Result<Holdout, StageError> {
        let (inputs, shape) = read_frames(ctx.input(super::verify::HOLDOUT_INPUTS.pattern)?)?;
        let (references, _) = read_frames(ctx.input(super::verify::HOLDOUT_REFERENCE.pattern)?)?;
        // The export left out the same skipped items, so the j-th present teacher image
        // is the j-th frame.
        let teachers: Vec<PathBuf> = (0..rows)
            .filter_map(|i| {
                ctx.optional_input(&TEACHER_ROW.name(&i.to_string()))
                    .transpose()
                    .map(|p| p.map(|p| p.to_path_buf()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Holdout {
            rows: teachers.len().min(inputs.len()),
            inputs,
            references,
            shape,
            teachers,
        })
    }
    fn hw(&self) -> (usize, usize) {
        (self.shape[2], self.shape[3])
    }
}

/// The tarball's entries in order, and the golden files (outputs of the stage too).
#[derive(Default)]
struct Contents {
    entries: Vec<(String, EntrySource)>,
    golden: Vec<(String, PathBuf)>,
}

impl Contents {
    fn add_file(&mut self, name: &str, path: &Path) {
        self.entries
            .push((name.into(), EntrySource::File(path.to_path_buf())));
    }
}

/// One target's part of the bundle.
struct BundledTarget {
    summary: TargetSummary,
    /// What this machine measured of it.
    measured: Value,
    /// Its outputs on the held-out frames (the contact sheet's column).
    outputs: Vec<Vec<f32>>,
}

/// Adds a target's shipped files and golden frames to the bundle; returns its summary.
fn bundle_target(
    ctx: &RunContext,
    holdout: &Holdout,
    name: &str,
    format: &str,
    precision: &str,
    contents: &mut Contents,
) -> Result<BundledTarget, StageError> {
    let main_file = add_shipped_files(ctx, name, contents)?;
    let check: CheckFile = ctx.read_json(&VERIFY_CHECK.name(name))?;
    let (outs, _) = read_frames(ctx.input(&VERIFY_OUTPUTS.name(name))?)?;
    let (in_spec, out_spec) = edges(ctx, name, format)?;
    let golden = add_golden_frames(ctx, holdout, name, &outs, (&in_spec, &out_spec), contents)?;
    Ok(BundledTarget {
        measured: json!({
            "latency_ms": check.latency.map(|l| l.median_ms),
            "latency": check.latency,
        }),
        summary: TargetSummary {
            file: format!("models/{name}/{main_file}"),
            format: format.to_string(),
            precision: precision.to_string(),
            psnr_db: check.psnr_db,
            min_psnr_db: check.thresholds.min_psnr_db,
            ssim: check.ssim,
            max_abs: check.max_abs,
            size_bytes: check.size_bytes,
            verified: check.passed,
            input: Some(in_spec),
            output: Some(out_spec),
            golden,
        },
        outputs: outs,
    })
}

/// Adds the files the target stage wrote under `models/NAME/`; returns the main one's
/// name (the first at the top, else the package).
fn add_shipped_files(
    ctx: &RunContext,
    name: &str,
    contents: &mut Contents,
) -> Result<String, StageError> {
    let mut shipped = Vec::new();
    for (rel, path) in ctx.outputs_of(TARGET, name)? {
        // The verified core and the calibration are build by-products, not shipped.
        if rel == "model.core.tflite" || rel == "calibration.json" {
            continue;
        }
        contents.add_file(&format!("models/{name}/{rel}"), path);
        shipped.push(rel.to_string());
    }
    Ok(shipped
        .iter()
        .find(|f| !f.contains('/'))
        .cloned()
        .unwrap_or_else(|| "model.mlpackage".into()))
}

/// Writes the target's golden frames (held-out inputs and its outputs, in its own
/// layout, dtype and range) and adds them to the bundle.
fn add_golden_frames(
    ctx: &RunContext,
    holdout: &Holdout,
    name: &str,
    outs: &[Vec<f32>],
    (in_spec, out_spec): (&TensorSpec, &TensorSpec),
    contents: &mut Contents,
) -> Result<Vec<GoldenPair>, StageError> {
    let (h, w) = holdout.hw();
    let mut golden = Vec::new();
    let frames = holdout.inputs.iter().zip(outs).take(holdout.rows);
    for (i, (x, y)) in frames.enumerate() {
        for (kind, spec, frame) in [("input", in_spec, x), ("output", out_spec, y)] {
            let data = crate::bundle::golden::encode_frame(spec, frame, (holdout.shape[1], h, w))
                .and_then(|(dims, v)| {
                    crate::bundle::npy::encode(&dims, &v).map_err(|e| e.to_string())
                })
                .map_err(|e| StageError::environment(format!("golden {kind} for {name}: {e}")))?;
            let rel = format!("golden/{name}/{kind}-{i}.npy");
            let path = ctx.out_dir.join(&rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| StageError::io(parent, e))?;
            }
            crate::atomic::write(&path, &data).map_err(|e| StageError::io(&path, e))?;
            contents.add_file(&rel, &path);
            contents.golden.push((rel, path));
        }
        golden.push(GoldenPair {
            input: format!("golden/{name}/input-{i}.npy"),
            output: format!("golden/{name}/output-{i}.npy"),
        });
    }
    Ok(golden)
}

/// The contact sheet: source | the pair's target (the teacher's picture) | the teacher
/// net's output | student | each target, on held-out frames.
fn contact_sheet(
    ctx: &RunContext,
    holdout: &Holdout,
    target_outputs: &[(String, Vec<Vec<f32>>)],
) -> Result<PathBuf, StageError> {
    let (h, w) = holdout.hw();
    let (teacher_net, _) = read_frames(ctx.input(HOLDOUT_TEACHER.pattern)?)?;
    let frame_or_blank = |frames: &[Vec<f32>], i: usize| {
        frames
            .get(i)
            .map(|o| frame_to_image(o, h, w))
            .unwrap_or_else(|| RgbImage::new(w as u32, h as u32))
    };
    let mut sheet_rows = Vec::new();
    for i in 0..holdout.rows {
        let mut row = vec![frame_to_image(&holdout.inputs[i], h, w)];
        row.push(super::png::read_rgb(&holdout.teachers[i])?);
        row.push(frame_or_blank(&teacher_net, i));
        row.push(frame_to_image(&holdout.references[i], h, w));
        for (_, outs) in target_outputs {
            row.push(frame_or_blank(outs, i));
        }
        sheet_rows.push(row);
    }
    let mut titles = vec!["source", "pair", "teacher", "student"];
    titles.extend(target_outputs.iter().map(|(n, _)| n.as_str()));
    let sheet = crate::imaging::contact_sheet::contact_sheet(&sheet_rows, &titles, 128);
    let path = ctx.out_dir.join("contact-sheet.png");
    super::png::write_png(&sheet, &path)?;
    Ok(path)
}
