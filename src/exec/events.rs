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

/// For people: one bar per stage kind (items done / total, rate, ETA), one bar for a
/// long stage's own steps, failures as they happen, and a summary line.
pub struct HumanReporter {
    multi: MultiProgress,
    bars: Mutex<BTreeMap<String, ProgressBar>>,
    step_bars: Mutex<BTreeMap<String, ProgressBar>>,
    /// (item, reason) of the skipped items, listed under the summary line.
    skipped: Mutex<Vec<(String, String)>>,
}

impl HumanReporter {
    pub fn new() -> HumanReporter {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        HumanReporter {
            multi,
            bars: Mutex::new(BTreeMap::new()),
            step_bars: Mutex::new(BTreeMap::new()),
            skipped: Mutex::new(Vec::new()),
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

impl HumanReporter {
    /// A line above the bars, or plain stderr when bars are hidden (not a terminal).
    fn say(&self, line: String) {
        if self.multi.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.multi.println(line);
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
            if let Some(bar) = self
                .bars
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(kind)
            {
                bar.inc(1);
            }
            return;
        }
        self.event(&Event::finished(effect, stage, kind, rec, cached));
    }

    fn totals(&self, _effect: &str, per_kind: &BTreeMap<String, u64>) {
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        for (kind, total) in per_kind {
            let bar = self.multi.add(ProgressBar::new(*total));
            bar.set_style(bar_style());
            bar.set_prefix(kind.clone());
            bars.insert(kind.clone(), bar);
        }
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
                if let Some(bar) = self
                    .bars
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(kind)
                {
                    bar.inc(1);
                    if bar.position() == bar.length().unwrap_or(0) {
                        bar.finish();
                    }
                }
                if let Some(b) = self
                    .step_bars
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(stage)
                {
                    b.finish_and_clear();
                }
                if !metrics.is_empty() {
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
            Event::StageFailed { stage, error, .. } => {
                self.say(format!("error: {stage} failed: {error}"));
            }
            Event::StageProgress {
                stage,
                done,
                total,
                message,
                ..
            } => {
                let mut bars = self.step_bars.lock().unwrap_or_else(|p| p.into_inner());
                let bar = bars.entry(stage.clone()).or_insert_with(|| {
                    let b = self.multi.add(ProgressBar::new(*total));
                    b.set_style(bar_style());
                    b.set_prefix(stage.clone());
                    b
                });
                bar.set_length(*total);
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
                not_run,
                cancelled,
                duration_ms,
            } => {
                for b in self.bars.lock().unwrap_or_else(|p| p.into_inner()).values() {
                    b.finish();
                }
                let status = if *cancelled {
                    "interrupted"
                } else if *ok {
                    "built"
                } else {
                    "FAILED"
                };
                self.say(format!(
                    "{effect}: {status} in {:.2}s — {ran} ran, {cached} cached{}{}",
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
                    self.say(format!("  … and {} more skipped (`--json` lists every one)", list.len() - SHOWN));
                }
                list.clear();
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
