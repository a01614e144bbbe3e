//! `effectc watch EFFECT`: rebuild on every edit that changes something.
//!
//! It watches the recipe folders (`effects/`, `stdlib/`, `targets/`) and the source
//! folders the recipe reads, debounced (a burst of saves is one change). On a change it
//! re-plans and compares the plan's *content* fingerprint (recipe text, params, source
//! digests) with the last one, so touching a file or an editor's write-rename of the
//! same bytes builds nothing. A real change prints what went stale and why, cancels a
//! running build (training checkpoints first and resumes; finished stages stay cached)
//! and builds again, then refreshes `out/<effect>/` (contact sheet and report). A recipe
//! that stops checking shows its diagnostics and watching goes on.
//!
//! Idle means idle: only events that can change content (create, data write, rename,
//! remove) wake it, never an open or a read (its own reads while it hashes would wake it
//! forever), a metadata change, or anything under `cache/` and `out/`. After an event it
//! re-hashes only the paths the event named; every other source keeps the digest it had.

mod pairs_preview;

use super::commands::{materialize, plan_with, Env};
use super::exit::Exit;
use crate::cache::{Cache, StatCache};
use crate::digest::Digest;
use crate::exec::dry::{dry_run, DryStatus};
use crate::exec::{self, BuildOptions, BuildSummary, HumanReporter, JsonReporter, Reporter};
use crate::plan::Plan;
use crate::recipe::{Loader, Recipe};
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult, DebouncedEvent};
use pairs_preview::PreviewSet;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Saves closer together than this are one change.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// What a plan's keys can depend on before anything runs (the stages, their params and
/// wiring, the source files' digests; not the recipe's text: a comment changes
/// nothing). Equal fingerprints: nothing to rebuild.
fn fingerprint(plan: &Plan) -> Digest {
    crate::plan::lower::recipe_inputs_digest(&plan.nodes)
}

/// "teacher.prompt changed: 6 pairs stale", one line per (reason, stage kind).
fn stale_lines(env: &Env, plan: &Plan) -> Vec<String> {
    let Ok(cache) = env.cache() else {
        return Vec::new();
    };
    let Ok((status, _)) = dry_run(&cache, &env.project.root, plan) else {
        return Vec::new();
    };
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut downstream = 0;
    for (i, s) in status.iter().enumerate() {
        match s {
            DryStatus::Stale { reasons, .. } => {
                let reason = reasons.first().cloned().unwrap_or_else(|| "changed".into());
                *counts
                    .entry((reason, plan.nodes[i].stage.family().to_string()))
                    .or_default() += 1;
            }
            DryStatus::Blocked { .. } => downstream += 1,
            DryStatus::Cached { .. } | DryStatus::Skipped { .. } => {}
        }
    }
    let mut lines: Vec<String> = counts
        .into_iter()
        .map(|((reason, kind), n)| format!("{reason}: {n} {kind} stale"))
        .collect();
    if downstream > 0 {
        lines.push(format!("{downstream} downstream stage(s) to re-check"));
    }
    lines
}

/// `out/EFFECT/preview.html`: a page that reloads itself every 2 s, showing the last
/// build's state and sheets, for a person to keep open beside the editor.
/// `compare` is the section of the last `--preview` (teacher output before | after).
fn write_preview(env: &Env, effect: &str, status: &str, compare: Option<&str>) {
    let dir = env.project.root.join("out").join(effect);
    let when = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut images = compare.unwrap_or_default().to_string();
    // The names `materialize` gives these outputs in out/EFFECT/.
    use crate::plan::StageId;
    for (file, title) in [
        (
            StageId::bundle().out_file_name("contact-sheet.png"),
            "source | teacher | student | targets",
        ),
        (StageId::pairs_sheet().out_file_name("pairs.png"), "pairs"),
        (
            StageId::distill_student().out_file_name("samples.png"),
            "student samples",
        ),
    ] {
        let file = file.as_str();
        if dir.join(file).is_file() {
            images.push_str(&format!(
                "<h2>{title}</h2><img src=\"{file}?t={when}\" style=\"max-width:100%\">\n"
            ));
        }
    }
    let html = format!(
        "<!doctype html><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">\n\
         <title>{effect} (effectc watch)</title>\n<body style=\"font-family:sans-serif\">\n\
         <h1>{effect}</h1><p>{status} (at unix time {when}). <a href=\"bundle-report.html\">report</a></p>\n{images}</body>\n"
    );
    let path = dir.join("preview.html");
    if let Err(e) = crate::atomic::write(&path, html.as_bytes()) {
        eprintln!("warning: cannot write {}: {e}", path.display());
    }
}

/// Whether an event can change a file's content or the set of files: creates, data
/// writes, renames and removes can; opens, reads and metadata changes cannot.
fn can_change_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Any => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Other => false,
    }
}

/// What a batch of file events may have changed.
#[derive(Debug, PartialEq)]
enum Touched {
    Nothing,
    Paths(Vec<PathBuf>),
    /// The watcher lost events (queue overflow, an error): trust no digest.
    Everything,
}

/// The paths in `events` that can have changed content, outside the `ignored` folders
/// (the cache and `out/`, which the build itself writes).
fn touched(events: &[DebouncedEvent], ignored: &[PathBuf]) -> Touched {
    let mut paths = Vec::new();
    for e in events {
        if e.need_rescan() {
            return Touched::Everything;
        }
        if !can_change_content(&e.kind) {
            continue;
        }
        paths.extend(
            e.paths
                .iter()
                .filter(|p| !ignored.iter().any(|ig| p.starts_with(ig)))
                .cloned(),
        );
    }
    if paths.is_empty() {
        Touched::Nothing
    } else {
        Touched::Paths(paths)
    }
}

/// Source digests known since the last plan, so that re-planning after an event hashes
/// (and stats) only the files the event named, not every source of the project.
struct KnownDigests {
    stat: StatCache,
    known: BTreeMap<PathBuf, Digest>,
}

impl KnownDigests {
    fn new(cache_root: &Path) -> KnownDigests {
        KnownDigests {
            stat: StatCache::load(cache_root),
            known: BTreeMap::new(),
        }
    }

    fn plan(&mut self, env: &Env, effect: &str) -> Option<(Recipe, Plan)> {
        let loader = Loader::new(&env.project);
        let KnownDigests { stat, known } = self;
        let planned = plan_with(env, &loader, effect, &mut |p| {
            if let Some(d) = known.get(p) {
                return Ok(*d);
            }
            let d = stat.digest_of(p)?;
            known.insert(p.to_path_buf(), d);
            Ok(d)
        });
        if let Err(e) = stat.save() {
            eprintln!("warning: could not save the stat cache: {e}");
        }
        planned.ok()
    }

    /// Forgets what `touched` may have changed: each path and everything below it (a
    /// renamed or removed folder). Paths order by component, so a folder's files follow
    /// it in the map.
    fn forget(&mut self, touched: &Touched) {
        match touched {
            Touched::Nothing => {}
            Touched::Everything => self.known.clear(),
            Touched::Paths(paths) => {
                for path in paths {
                    if self.known.remove(path).is_some() {
                        continue;
                    }
                    let below: Vec<PathBuf> = self
                        .known
                        .range(path.clone()..)
                        .map(|(k, _)| k)
                        .take_while(|k| k.starts_with(path))
                        .cloned()
                        .collect();
                    for k in below {
                        self.known.remove(&k);
                    }
                }
            }
        }
    }
}

/// Says once that the system's inotify limit is too low, with the setting to raise.
fn warn_watch_limit(warned: &mut bool, dir: &Path) {
    if std::mem::replace(warned, true) {
        return;
    }
    let now = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    eprintln!(
        "warning: the system's inotify watch limit (fs.inotify.max_user_watches = {now}) is too \
         low to watch {}: edits there are not seen. Raise it, e.g. \
         `sudo sysctl fs.inotify.max_user_watches=524288` (add it to /etc/sysctl.conf to keep it)",
        dir.display()
    );
}

fn is_watch_limit(e: &notify::Error) -> bool {
    matches!(e.kind, notify::ErrorKind::MaxFilesWatch)
}

/// Folders to watch: the recipe folders and each image glob's literal prefix.
fn watched_dirs(env: &Env, loader: &Loader, effect: &str) -> Vec<PathBuf> {
    let root = &env.project.root;
    let mut dirs: Vec<PathBuf> = ["effects", "stdlib", "targets"]
        .iter()
        .map(|d| root.join(d))
        .filter(|d| d.is_dir())
        .collect();
    if let Ok(recipe) = loader.load(effect) {
        let videos = recipe.sources.videos.iter().map(|v| &v.glob);
        for glob in recipe.sources.images.iter().chain(videos) {
            let prefix = crate::plan::lower::glob_literal_prefix(&glob.value);
            let mut dir = root.join(prefix);
            while !dir.is_dir() {
                match dir.parent() {
                    Some(p) => dir = p.to_path_buf(),
                    None => break,
                }
            }
            dirs.push(dir);
        }
        if let crate::recipe::Teacher::Directory { path } = &recipe.teacher {
            dirs.push(root.join(&path.value));
        }
    }
    dirs.sort();
    dirs.dedup();
    // A folder inside another watched (recursively) one adds nothing.
    let all = dirs.clone();
    dirs.retain(|d| !all.iter().any(|o| o != d && d.starts_with(o)));
    dirs
}

/// The debouncer `new_debouncer` makes: it watches while it lives.
type Watcher = notify_debouncer_full::Debouncer<
    notify::RecommendedWatcher,
    notify_debouncer_full::RecommendedCache,
>;

pub fn run(
    env: &Env,
    effect: &str,
    jobs: usize,
    device: &str,
    preview_items: usize,
) -> Result<Exit, Exit> {
    let device = crate::nn::DeviceSpec::parse(device).map_err(|e| {
        eprintln!("error: {e}");
        Exit::Usage
    })?;
    let mut opts = BuildOptions::new(jobs, device);
    opts.remote = env.remote.clone();
    Watch::new(env, effect, opts, preview_items)?.run()
}

/// `stop` and `cancel`, set by Ctrl-C: the first cancels the running build and ends the
/// watch, a second ends the process at once.
fn on_ctrl_c() -> (Arc<AtomicBool>, Arc<AtomicBool>) {
    let stop = Arc::new(AtomicBool::new(false));
    let cancel = Arc::new(AtomicBool::new(false));
    let (s, c) = (stop.clone(), cancel.clone());
    let _ = ctrlc::set_handler(move || {
        if s.swap(true, Ordering::SeqCst) {
            // exit skips destructors: end the teachers' process groups here.
            crate::process::kill_all_groups();
            std::process::exit(Exit::Interrupted.code());
        }
        c.store(true, Ordering::SeqCst);
    });
    (stop, cancel)
}

/// Prints watch's own news: JSON lines with `--json`, else `watch: ` lines.
fn say(env: &Env, effect: &str, event: &str, lines: &[String]) {
    if env.json {
        println!(
            "{}",
            serde_json::json!({"event": event, "effect": effect, "lines": lines})
        );
    } else {
        for l in lines {
            eprintln!("watch: {l}");
        }
    }
}

/// The file events coming in, and the source digests they leave valid: what both
/// waiting and a running build read.
struct Changes<'a> {
    env: &'a Env,
    effect: &'a str,
    rx: mpsc::Receiver<DebounceEventResult>,
    /// The cache and `out/`, which the build itself writes.
    ignored: [PathBuf; 2],
    limit_warned: bool,
    digests: KnownDigests,
}

impl Changes<'_> {
    /// What a debounced batch may have changed, forgotten from the known digests;
    /// errors (a lost event, the watch limit) make every digest suspect.
    fn take_in(&mut self, res: &DebounceEventResult) -> Touched {
        let t = match res {
            Ok(events) => touched(events, &self.ignored),
            Err(errors) => {
                for e in errors.iter().filter(|e| is_watch_limit(e)) {
                    let dir = e.paths.first().cloned().unwrap_or_default();
                    warn_watch_limit(&mut self.limit_warned, &dir);
                }
                Touched::Everything
            }
        };
        self.digests.forget(&t);
        t
    }

    fn plan(&mut self) -> Option<(Recipe, Plan)> {
        self.digests.plan(self.env, self.effect)
    }

    /// Builds on a thread; a content change meanwhile cancels it (and the caller
    /// re-plans). Returns the summary and whether such a change arrived.
    fn build_cancelling(
        &mut self,
        cache: &crate::cache::Cache,
        plan: &Plan,
        opts: &BuildOptions,
        reporter: &dyn Reporter,
        cancel: &AtomicBool,
    ) -> (Result<BuildSummary, crate::cache::CacheError>, bool) {
        let mut changed = false;
        let env: &Env = self.env;
        let root = &env.project.root;
        let summary = std::thread::scope(|scope| {
            let handle = scope.spawn(|| exec::build(root, cache, plan, opts, reporter, cancel));
            while !handle.is_finished() {
                let Ok(res) = self.rx.recv_timeout(Duration::from_millis(50)) else {
                    continue;
                };
                if self.take_in(&res) != Touched::Nothing && !changed {
                    // Only a real content change is worth cancelling for.
                    let now = self.plan().map(|(_, p)| fingerprint(&p));
                    if now != Some(fingerprint(plan)) {
                        changed = true;
                        cancel.store(true, Ordering::SeqCst);
                    }
                }
            }
            handle.join().unwrap_or_else(|_| {
                Err(crate::cache::CacheError::Io {
                    op: "build",
                    path: PathBuf::new(),
                    source: std::io::Error::other("the build thread panicked"),
                })
            })
        });
        (summary, changed)
    }
}

/// A watch session: what the loop keeps from one change to the next.
struct Watch<'a> {
    env: &'a Env,
    effect: &'a str,
    preview_items: usize,
    opts: BuildOptions,
    reporter: Box<dyn Reporter>,
    stop: Arc<AtomicBool>,
    cancel: Arc<AtomicBool>,
    debouncer: Watcher,
    watching: Vec<PathBuf>,
    changes: Changes<'a>,
    /// The fingerprint of the last plan built (None: build whatever comes next).
    last: Option<Digest>,
    said_waiting: bool,
    /// The last preview's before | after section, shown until a change rebuilds no pairs.
    compare: Option<String>,
    /// When the change being built was seen (the preview's latency is counted from it).
    changed_at: Instant,
}

impl<'a> Watch<'a> {
    fn new(
        env: &'a Env,
        effect: &'a str,
        opts: BuildOptions,
        preview_items: usize,
    ) -> Result<Watch<'a>, Exit> {
        let (stop, cancel) = on_ctrl_c();
        let reporter: Box<dyn Reporter> = if env.json {
            Box::new(JsonReporter::new())
        } else {
            Box::new(HumanReporter::with_quiet(env.quiet))
        };
        let (tx, rx) = mpsc::channel::<DebounceEventResult>();
        let debouncer = new_debouncer(DEBOUNCE, None, tx).map_err(|e| {
            eprintln!("error: cannot watch files: {e}");
            Exit::Infra
        })?;
        let changes = Changes {
            env,
            effect,
            rx,
            ignored: [env.cache_dir.clone(), env.project.root.join("out")],
            limit_warned: false,
            digests: KnownDigests::new(env.cache()?.root()),
        };
        Ok(Watch {
            env,
            effect,
            preview_items,
            opts,
            reporter,
            stop,
            cancel,
            debouncer,
            watching: Vec::new(),
            changes,
            last: None,
            said_waiting: false,
            compare: None,
            changed_at: Instant::now(),
        })
    }

    /// Plans, builds when the content changed, waits for the next change; until Ctrl-C.
    fn run(mut self) -> Result<Exit, Exit> {
        let mut first = true;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(Exit::Interrupted);
            }
            self.follow_dirs();
            let cache = self.env.cache()?;
            let build_now = self.plan_if_changed(first);
            let rebuild = !first;
            first = false;
            if let Some(plan) = build_now {
                self.said_waiting = false;
                let stopped = self.stop.load(Ordering::SeqCst);
                self.cancel.store(stopped, Ordering::SeqCst);
                if self.build(&cache, &plan, rebuild) == Next::BuildAgain {
                    continue;
                }
            }
            // One "waiting" line per build or error: an event that changes nothing (a
            // touch, a comment) re-plans silently.
            if !self.said_waiting {
                let line = "waiting for changes (Ctrl-C to stop)".to_string();
                say(self.env, self.effect, "watch-waiting", &[line]);
                self.said_waiting = true;
            }
            if !self.wait_for_change()? {
                return Ok(Exit::Interrupted);
            }
        }
    }

    /// Follows the recipe's folders as they change (a new source folder, say).
    fn follow_dirs(&mut self) {
        let loader = Loader::new(&self.env.project);
        let dirs = watched_dirs(self.env, &loader, self.effect);
        for d in dirs.iter().filter(|d| !self.watching.contains(d)) {
            if let Err(e) = self.debouncer.watch(d, RecursiveMode::Recursive) {
                if is_watch_limit(&e) {
                    warn_watch_limit(&mut self.changes.limit_warned, d);
                } else {
                    eprintln!("warning: cannot watch {}: {e}", d.display());
                }
            }
        }
        self.watching = dirs;
    }

    /// Re-plans; the plan when its content differs from the last one built. A recipe
    /// that stops checking is shown as waiting for a fix.
    fn plan_if_changed(&mut self, first: bool) -> Option<Plan> {
        let Some((_recipe, plan)) = self.changes.plan() else {
            self.last = None;
            let line = "the recipe has errors (above); waiting for a fix".to_string();
            say(self.env, self.effect, "watch-error", &[line]);
            let status = "the recipe has errors: see the terminal";
            write_preview(self.env, self.effect, status, self.compare.as_deref());
            self.said_waiting = false;
            return None;
        };
        let fp = fingerprint(&plan);
        if self.last == Some(fp) {
            return None;
        }
        if !first {
            say(
                self.env,
                self.effect,
                "watch-stale",
                &stale_lines(self.env, &plan),
            );
        }
        self.last = Some(fp);
        Some(plan)
    }

    /// Builds the preview's pairs first (on a rebuild with `--preview`), then the whole
    /// plan, and refreshes `out/<effect>/`.
    fn build(&mut self, cache: &Cache, plan: &Plan, rebuild: bool) -> Next {
        let preview = if rebuild && self.preview_items > 0 {
            self.preview_plan(cache, plan)
        } else {
            None
        };
        match preview {
            None => self.compare = None,
            Some((set, sub)) => {
                if self.build_preview(cache, &set, &sub) == Next::BuildAgain {
                    return Next::BuildAgain;
                }
            }
        }
        self.build_full(cache, plan)
    }

    /// The preview's sub-plan: the stages the chosen items' pairs need, when the edit
    /// makes any of those pairs stale.
    fn preview_plan(&mut self, cache: &Cache, plan: &Plan) -> Option<(PreviewSet, Plan)> {
        let (status, snapshot) = dry_run(cache, &self.env.project.root, plan).ok()?;
        let set = pairs_preview::prepare(cache, plan, &status, &snapshot, self.preview_items)?;
        let (_, full) = self.changes.plan()?;
        let mut sub = full.retain(|n| set.stages.contains(n.id.as_str()));
        // Unreadable sources are not the preview's items; the full build reports them
        // (once).
        sub.source_failures.clear();
        Some((set, sub))
    }

    /// Builds the preview's sub-plan and shows its pairs beside the previous ones.
    fn build_preview(&mut self, cache: &Cache, set: &PreviewSet, sub: &Plan) -> Next {
        // Its snapshot is not the effect's: the full build's stays the reference.
        let mut popts = self.opts.clone();
        popts.write_snapshot = false;
        let quiet = pairs_preview::PreviewReporter(self.reporter.as_ref());
        let cancel = self.cancel.as_ref();
        match self
            .changes
            .build_cancelling(cache, sub, &popts, &quiet, cancel)
        {
            (Ok(s), _) if s.ok() => self.publish_preview(cache, set, sub, &s),
            (Ok(s), true) if s.cancelled => return self.build_again(),
            // A failed preview stage fails again in the full build, which says so.
            (Ok(_), _) => {}
            (Err(e), _) => eprintln!("error: {e}"),
        }
        Next::Wait
    }

    /// Copies the preview's pictures to `out/<effect>/` and says where they are.
    fn publish_preview(&mut self, cache: &Cache, set: &PreviewSet, sub: &Plan, s: &BuildSummary) {
        let when = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let out_dir = self.env.project.root.join("out").join(self.effect);
        let (section, images) = match pairs_preview::publish(cache, &out_dir, set, sub, s, when) {
            Ok(published) => published,
            Err(e) => return eprintln!("warning: could not write the preview: {e}"),
        };
        self.compare = Some(section);
        let status = format!(
            "preview of {} item(s) refreshed; full rebuild running",
            set.items.len()
        );
        write_preview(self.env, self.effect, &status, self.compare.as_deref());
        let ms = self.changed_at.elapsed().as_millis() as u64;
        if self.env.json {
            println!(
                "{}",
                serde_json::json!({
                    "event": "watch-preview",
                    "effect": self.effect,
                    "items": set.items.len(),
                    "ran": s.ran,
                    "ms": ms,
                    "page": out_dir.join("preview.html"),
                    "images": images,
                })
            );
        } else {
            eprintln!(
                "watch: preview of {} item(s) in {:.1} s: {}",
                set.items.len(),
                ms as f64 / 1000.0,
                out_dir.join("preview.html").display()
            );
        }
    }

    /// Builds the whole plan; on success refreshes `out/<effect>/` and the page.
    fn build_full(&mut self, cache: &Cache, plan: &Plan) -> Next {
        let (summary, changed) = self.changes.build_cancelling(
            cache,
            plan,
            &self.opts,
            self.reporter.as_ref(),
            &self.cancel,
        );
        let (env, effect) = (self.env, self.effect);
        match summary {
            Ok(s) if s.ok() => {
                if let Err(e) = materialize(env, cache, plan, &s) {
                    eprintln!("warning: could not refresh out/{effect}: {e}");
                }
                let status = format!("built: {} ran, {} cached", s.ran, s.cached);
                write_preview(env, effect, &status, self.compare.as_deref());
            }
            Ok(s) if !s.cancelled => {
                let status = format!("build FAILED: {} stage(s) failed", s.failed);
                write_preview(env, effect, &status, self.compare.as_deref());
            }
            Ok(s) if s.cancelled && changed => return self.build_again(),
            Ok(_) => {}
            Err(e) => eprintln!("error: {e}"),
        }
        Next::Wait
    }

    /// A change cancelled the build: plan and build again at once.
    fn build_again(&mut self) -> Next {
        let line = "a change arrived: building again".to_string();
        say(self.env, self.effect, "watch-cancelled", &[line]);
        self.last = None;
        self.changed_at = Instant::now();
        Next::BuildAgain
    }

    /// Waits for a change of content: true when one came, false on Ctrl-C.
    fn wait_for_change(&mut self) -> Result<bool, Exit> {
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(false);
            }
            match self.changes.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(res) => {
                    if self.changes.take_in(&res) != Touched::Nothing {
                        self.changed_at = Instant::now();
                        return Ok(true);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(Exit::Infra),
            }
        }
    }
}

/// What the loop does after a build: wait for the next change, or re-plan at once
/// because a change cancelled the build.
#[derive(PartialEq)]
enum Next {
    Wait,
    BuildAgain,
}
