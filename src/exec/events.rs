//! Build events: one JSON object per line with `--json` (for CI), progress bars and a
//! short summary for people.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    BuildStarted {
        effect: String,
        stages: usize,
    },
    StageFinished {
        effect: String,
        stage: String,
        kind: String,
        key: String,
        cached: bool,
        duration_ms: u64,
        #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
        metrics: serde_json::Map<String, serde_json::Value>,
    },
    StageFailed {
        effect: String,
        stage: String,
        kind: String,
        error: String,
        /// Whether the recipe or the data is at fault (`tier` is `input`).
        user_error: bool,
        /// `input`, `environment` or `bug`: whose problem it is.
        tier: crate::stages::stage::Tier,
    },
    /// A source that could not be read while planning (a clip ffmpeg cannot decode):
    /// left out of the build, which goes on with the other items and then fails.
    SourceFailed {
        effect: String,
        source: String,
        error: String,
        tier: crate::stages::stage::Tier,
    },
    StageProgress {
        effect: String,
        stage: String,
        done: u64,
        total: u64,
        message: String,
    },
    /// A stage skipped its item (a photo without a face): not a failure; the item's
    /// later per-item stages do not run and training leaves it out. Sent for cached
    /// skips too, so every build lists them.
    ItemSkipped {
        effect: String,
        item: String,
        stage: String,
        reason: String,
    },
    BuildFinished {
        effect: String,
        ok: bool,
        ran: usize,
        cached: usize,
        failed: usize,
        /// Items skipped (each listed by an `item-skipped` event).
        skipped: usize,
        /// Pairs the identity filter left out of training (`identity-filter`'s metric).
        dropped: u64,
        /// Stages not run because a stage failed or the build stopped.
        not_run: usize,
        cancelled: bool,
        duration_ms: u64,
    },
}

impl Event {
    /// The `stage-finished` event of a record (cached stages report 0 ms).
    pub fn finished(
        effect: &str,
        stage: &str,
        kind: &str,
        rec: &crate::cache::StageRecord,
        cached: bool,
    ) -> Event {
        Event::StageFinished {
            effect: effect.to_string(),
            stage: stage.to_string(),
            kind: kind.to_string(),
            key: rec.key.hex(),
            cached,
            duration_ms: if cached { 0 } else { rec.duration_ms },
            metrics: rec.metrics.clone(),
        }
    }
}

pub trait Reporter: Sync {
    fn event(&self, e: &Event);
    /// A stage finished or was found cached. The default sends a `StageFinished` event;
    /// people's output only counts cached per-item stages (30,000 of them must stay cheap).
    fn stage_finished(
        &self,
        effect: &str,
        stage: &str,
        kind: &str,
        rec: &crate::cache::StageRecord,
        cached: bool,
    ) {
        self.event(&Event::finished(effect, stage, kind, rec, cached));
    }
    /// Announces how many stages of each kind the build has, for progress bars.
    fn totals(&self, _effect: &str, _per_kind: &BTreeMap<String, u64>) {}
    /// A stage starts running (not found in a cache): for a live line per stage.
    fn stage_started(&self, _effect: &str, _stage: &str, _kind: &str, _per_item: bool) {}
}

/// `--json`: every event as one line on stdout (progress events are throttled).
pub struct JsonReporter {
    out: Mutex<std::io::BufWriter<std::io::Stdout>>,
    last_progress: Mutex<std::time::Instant>,
}

impl JsonReporter {
    pub fn new() -> JsonReporter {
        JsonReporter {
            out: Mutex::new(std::io::BufWriter::with_capacity(
                1 << 16,
                std::io::stdout(),
            )),
            last_progress: Mutex::new(std::time::Instant::now()),
        }
    }
}

impl Default for JsonReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl Reporter for JsonReporter {
    fn event(&self, e: &Event) {
        if let Event::StageProgress { done, total, .. } = e {
            let mut last = self.last_progress.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed().as_millis() < 1000 && done < total {
                return;
            }
            *last = std::time::Instant::now();
        }
        if let Ok(line) = serde_json::to_string(e) {
            let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(out, "{line}");
            // Cached stages stream in bulk; anything else is news a CI log shows at once.
            if !matches!(e, Event::StageFinished { cached: true, .. }) {
                let _ = out.flush();
            }
        }
    }
}

/// For people, on a terminal: an overall `[done/total]` line with the elapsed time and
/// ETA, one bar per kind of per-item stage (pairs done of N), and one live line per
/// running whole-dataset stage (a training's step, steps/s and last loss); failures as
/// they happen, each finished stage's metrics, and a summary line. Off a terminal the
/// bars draw nothing (indicatif hides them), so a CI log gets the metrics lines and the
/// summary only. `quiet`: errors and the summary, nothing else.
pub struct HumanReporter {
    multi: MultiProgress,
    quiet: bool,
    overall: Mutex<Option<ProgressBar>>,
    /// Per-item stage kinds: items done of N.
    bars: Mutex<BTreeMap<String, ProgressBar>>,
    /// Whole-dataset stages running now: a spinner, or a bar once they report steps.
    running: Mutex<BTreeMap<String, ProgressBar>>,
    /// (item, reason) of the skipped items, listed under the summary line.
    skipped: Mutex<Vec<(String, String)>>,
    /// What the training figures say in plain words (`metric::advice`), under the summary.
    advice: Mutex<Vec<String>>,
}

impl HumanReporter {
    pub fn new() -> HumanReporter {
        HumanReporter::with_quiet(false)
    }

    pub fn with_quiet(quiet: bool) -> HumanReporter {
        let target = if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        HumanReporter {
            multi: MultiProgress::with_draw_target(target),
            quiet,
            overall: Mutex::new(None),
            bars: Mutex::new(BTreeMap::new()),
            running: Mutex::new(BTreeMap::new()),
            skipped: Mutex::new(Vec::new()),
            advice: Mutex::new(Vec::new()),
        }
    }
}

impl Default for HumanReporter {
    fn default() -> Self {
        Self::new()
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>16} [{bar:30}] {pos}/{len} {per_sec} ETA {eta} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// A running stage that reports its own steps (training: step/total, then its message
/// with the last loss and steps/s).
fn step_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>16} [{bar:30}] {pos}/{len} ETA {eta} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>16} {spinner} running {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn overall_style() -> ProgressStyle {
    ProgressStyle::with_template("[{pos}/{len}] {prefix} {elapsed} elapsed, ETA {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl HumanReporter {
    /// A line above the bars, or plain stderr when bars are hidden (not a terminal).
    fn say(&self, line: String) {
        if self.multi.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }

    /// Keeps what a training's figures say (the teacher's own report, or the student's,
    /// which repeats the teacher's figure), each sentence once.
    fn note_advice(&self, kind: &str, m: &serde_json::Map<String, serde_json::Value>) {
        use crate::protocol::metric;
        let m = serde_json::Value::Object(m.clone());
        let teacher = match kind {
            "train-teacher" => metric::read(&m, metric::PSNR_VS_PAIRS_DB),
            _ => metric::read(&m, metric::TEACHER_PSNR_VS_PAIRS_DB),
        };
        let student = match kind {
            "distill-student" => metric::read(&m, metric::PSNR_VS_PAIRS_DB),
            _ => None,
        };
        let identity = metric::read(&m, metric::IDENTITY_PSNR_DB);
        let mut list = lock(&self.advice);
        for line in metric::advice(teacher, identity, student) {
            if !list.contains(&line) {
                list.push(line);
            }
        }
    }

    /// One more stage is done (ran, cached or failed).
    fn count(&self, stage: &str, kind: &str) {
        if let Some(o) = lock(&self.overall).as_ref() {
            o.inc(1);
        }
        if let Some(bar) = lock(&self.bars).get(kind) {
            bar.inc(1);
            if bar.position() == bar.length().unwrap_or(0) {
                bar.finish();
            }
        }
        if let Some(b) = lock(&self.running).remove(stage) {
            b.finish_and_clear();
        }
    }
}

impl Reporter for HumanReporter {
    fn stage_finished(
        &self,
        effect: &str,
        stage: &str,
        kind: &str,
        rec: &crate::cache::StageRecord,
        cached: bool,
    ) {
        // Skipped items are listed under the summary, not one line each.
        if rec.metrics.is_empty() || rec.skipped().is_some() {
            self.count(stage, kind);
            return;
        }
        self.event(&Event::finished(effect, stage, kind, rec, cached));
    }

    fn totals(&self, effect: &str, per_kind: &BTreeMap<String, u64>) {
        let all: u64 = per_kind.values().sum();
        let overall = self.multi.add(ProgressBar::new(all));
        overall.set_style(overall_style());
        overall.set_prefix(effect.to_string());
        overall.enable_steady_tick(std::time::Duration::from_millis(500));
        *lock(&self.overall) = Some(overall);
        let mut bars = lock(&self.bars);
        for (kind, total) in per_kind {
            // Kinds of one stage get a live line while they run instead.
            if *total < 2 {
                continue;
            }
            let bar = self.multi.add(ProgressBar::new(*total));
            bar.set_style(bar_style());
            bar.set_prefix(kind.clone());
            bars.insert(kind.clone(), bar);
        }
    }

    fn stage_started(&self, _effect: &str, stage: &str, _kind: &str, per_item: bool) {
        if per_item || self.multi.is_hidden() {
            return;
        }
        let line = self.multi.add(ProgressBar::new_spinner());
        line.set_style(spinner_style());
        line.set_prefix(stage.to_string());
        line.enable_steady_tick(std::time::Duration::from_millis(200));
        lock(&self.running).insert(stage.to_string(), line);
    }

    fn event(&self, e: &Event) {
        match e {
            Event::StageFinished {
                kind,
                stage,
                cached,
                metrics,
                duration_ms,
                ..
            } => {
                self.count(stage, kind);
                self.note_advice(kind, metrics);
                if !metrics.is_empty() && !self.quiet {
                    let shown: Vec<String> = metrics
                        .iter()
                        .filter(|(_, v)| v.is_number())
                        .map(|(k, v)| format!("{k}={}", fmt_metric(v)))
                        .collect();
                    let how = if *cached {
                        "cached".to_string()
                    } else {
                        format!("{:.1}s", *duration_ms as f64 / 1000.0)
                    };
                    self.say(format!("{stage} ({how}): {}", shown.join(" ")));
                }
            }
            Event::StageFailed {
                stage, kind, error, ..
            } => {
                self.count(stage, kind);
                self.say(format!("error: {stage} failed: {error}"));
            }
            Event::SourceFailed { source, error, .. } => {
                self.say(format!("error: source {source} left out: {error}"));
            }
            Event::StageProgress {
                stage,
                done,
                total,
                message,
                ..
            } => {
                if self.multi.is_hidden() {
                    return;
                }
                let mut running = lock(&self.running);
                let bar = running.entry(stage.clone()).or_insert_with(|| {
                    let b = self.multi.add(ProgressBar::new(*total));
                    b.set_prefix(stage.clone());
                    b
                });
                if bar.length().is_none() || bar.length() != Some(*total) {
                    // The spinner becomes a bar once the stage knows its steps.
                    bar.disable_steady_tick();
                    bar.set_style(step_style());
                    bar.set_length(*total);
                }
                bar.set_position(*done);
                bar.set_message(message.clone());
            }
            Event::ItemSkipped { item, reason, .. } => {
                self.skipped
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((item.clone(), reason.clone()));
            }
            Event::BuildFinished {
                effect,
                ok,
                ran,
                cached,
                failed,
                skipped,
                dropped,
                not_run,
                cancelled,
                duration_ms,
            } => {
                for b in lock(&self.bars).values() {
                    b.finish_and_clear();
                }
                for (_, b) in std::mem::take(&mut *lock(&self.running)) {
                    b.finish_and_clear();
                }
                if let Some(o) = lock(&self.overall).take() {
                    o.finish_and_clear();
                }
                let status = if *cancelled {
                    "interrupted"
                } else if *ok {
                    "built"
                } else {
                    "FAILED"
                };
                self.say(format!(
                    "{effect}: {status} in {:.2}s — {ran} ran, {cached} cached{}{}{}",
                    *duration_ms as f64 / 1000.0,
                    if *failed > 0 {
                        format!(", {failed} failed")
                    } else {
                        String::new()
                    },
                    if *skipped > 0 {
                        format!(", {skipped} item(s) skipped")
                    } else {
                        String::new()
                    },
                    if *dropped > 0 {
                        format!(", {dropped} pair(s) dropped by the identity filter")
                    } else {
                        String::new()
                    },
                ));
                if *not_run > 0 && !*cancelled {
                    self.say(format!("{not_run} stage(s) not run after the failure"));
                }
                let mut list = self.skipped.lock().unwrap_or_else(|p| p.into_inner());
                const SHOWN: usize = 20;
                for (item, reason) in list.iter().take(SHOWN) {
                    self.say(format!("  skipped {item}: {reason}"));
                }
                if list.len() > SHOWN {
                    self.say(format!(
                        "  … and {} more skipped (`--json` lists every one)",
                        list.len() - SHOWN
                    ));
                }
                list.clear();
                for line in std::mem::take(&mut *lock(&self.advice)) {
                    self.say(format!("  note: {line}"));
                }
            }
            Event::BuildStarted { .. } => {}
        }
    }
}

fn fmt_metric(v: &serde_json::Value) -> String {
    match v.as_f64() {
        Some(f) if f.fract() != 0.0 => format!("{f:.3}"),
        _ => v.to_string(),
    }
}
