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

use super::commands::{materialize, plan_for, Env, EXIT_INFRA, EXIT_INTERRUPTED};
use crate::digest::{Digest, KeyHasher};
use crate::exec::dry::{dry_run, DryStatus};
use crate::exec::{self, BuildOptions, HumanReporter, JsonReporter, Reporter};
use crate::plan::{InputRef, Plan};
use crate::recipe::Loader;
use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// Saves closer together than this are one change.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// What a plan's keys can depend on before anything runs: ids, stage kinds and versions,
/// params, source file digests (not the recipe's text: a comment changes nothing).
/// Equal fingerprints: nothing to rebuild.
fn fingerprint(plan: &Plan) -> Digest {
    let mut h = KeyHasher::new("effectc/watch/v1");
    for node in &plan.nodes {
        h.str(&node.id)
            .str(node.stage.kind())
            .u64(node.stage.version() as u64);
        for (k, v) in node.stage.params() {
            h.str(&k).str(&v);
        }
        for inp in &node.inputs {
            if let InputRef::File { digest, .. } = &inp.from {
                h.str(&inp.name).digest(digest);
            }
        }
    }
    h.finish()
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
                    .entry((reason, plan.nodes[i].stage.kind().to_string()))
                    .or_default() += 1;
            }
            DryStatus::Blocked { .. } => downstream += 1,
            DryStatus::Cached { .. } => {}
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
fn write_preview(env: &Env, effect: &str, status: &str) {
    let dir = env.project.root.join("out").join(effect);
    let when = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut images = String::new();
    for (file, title) in [
        (
            "bundle-contact-sheet.png",
            "source | teacher | student | targets",
        ),
        ("pairs-sheet-pairs.png", "pairs"),
        ("distill-student-samples.png", "student samples"),
    ] {
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
    let _ = std::fs::create_dir_all(&dir);
    let tmp = dir.join(".preview.html.tmp");
    if std::fs::write(&tmp, html).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join("preview.html"));
    }
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
        for glob in &recipe.sources.images {
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

pub fn run(env: &Env, effect: &str, jobs: usize, device: &str) -> Result<i32, i32> {
    let device = crate::plan::DeviceSpec::parse(device).map_err(|e| {
        eprintln!("error: {e}");
        super::commands::EXIT_USER
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let (stop, cancel) = (stop.clone(), cancel.clone());
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                // exit skips destructors: end the teachers' process groups here.
                crate::process::kill_all_groups();
                std::process::exit(EXIT_INTERRUPTED);
            }
            cancel.store(true, Ordering::SeqCst);
        });
    }
    let reporter: Box<dyn Reporter> = if env.json {
        Box::new(JsonReporter::new())
    } else {
        Box::new(HumanReporter::new())
    };
    let say = |event: &str, lines: &[String]| {
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
    };
    let (tx, rx) = mpsc::channel::<DebounceEventResult>();
    let mut debouncer = new_debouncer(DEBOUNCE, None, tx).map_err(|e| {
        eprintln!("error: cannot watch files: {e}");
        EXIT_INFRA
    })?;
    let mut watching: Vec<PathBuf> = Vec::new();
    let ignored = [env.cache_dir.clone(), env.project.root.join("out")];
    // Whether a debounced batch touches anything but our own cache and outputs.
    let relevant = |res: &DebounceEventResult| match res {
        Ok(events) => events.iter().any(|e| {
            e.paths
                .iter()
                .any(|p| !ignored.iter().any(|ig| p.starts_with(ig)))
        }),
        Err(_) => true,
    };
    let mut last: Option<Digest> = None;
    let mut opts = BuildOptions::new(jobs, device);
    opts.remote = env.remote.clone();
    let mut first = true;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(EXIT_INTERRUPTED);
        }
        let loader = Loader::new(&env.project);
        // Follow the recipe's folders as they change (a new source folder, say).
        let dirs = watched_dirs(env, &loader, effect);
        for d in dirs.iter().filter(|d| !watching.contains(d)) {
            if let Err(e) = debouncer.watch(d, RecursiveMode::Recursive) {
                eprintln!("warning: cannot watch {}: {e}", d.display());
            }
        }
        watching = dirs;
        let cache = env.cache()?;
        let planned = plan_for(env, &cache, &loader, effect).ok();
        let mut build_now = None;
        match planned {
            None => {
                last = None;
                say(
                    "watch-error",
                    &["the recipe has errors (above); waiting for a fix".to_string()],
                );
                write_preview(env, effect, "the recipe has errors: see the terminal");
            }
            Some((_recipe, plan)) => {
                let fp = fingerprint(&plan);
                if last != Some(fp) {
                    if !first {
                        say("watch-stale", &stale_lines(env, &plan));
                    }
                    last = Some(fp);
                    build_now = Some(plan);
                }
            }
        }
        first = false;
        if let Some(plan) = build_now {
            cancel.store(stop.load(Ordering::SeqCst), Ordering::SeqCst);
            // Build on a thread; a relevant change meanwhile cancels it and re-plans.
            let mut changed = false;
            let summary = std::thread::scope(|scope| {
                let handle = scope.spawn(|| {
                    exec::build(
                        &env.project.root,
                        &cache,
                        &plan,
                        &opts,
                        reporter.as_ref(),
                        &cancel,
                    )
                });
                while !handle.is_finished() {
                    if let Ok(res) = rx.recv_timeout(Duration::from_millis(50)) {
                        if relevant(&res) && !changed {
                            // Only a real content change is worth cancelling for.
                            let loader = Loader::new(&env.project);
                            let now = plan_for(env, &cache, &loader, effect)
                                .ok()
                                .map(|(_, p)| fingerprint(&p));
                            if now != Some(fingerprint(&plan)) {
                                changed = true;
                                cancel.store(true, Ordering::SeqCst);
                            }
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
            match summary {
                Ok(s) if s.ok() => {
                    if let Err(e) = materialize(env, &cache, &plan, &s) {
                        eprintln!("warning: could not refresh out/{effect}: {e}");
                    }
                    let status = format!("built: {} ran, {} cached", s.ran, s.cached);
                    write_preview(env, effect, &status);
                }
                Ok(s) if !s.cancelled => {
                    let status = format!("build FAILED: {} stage(s) failed", s.failed);
                    write_preview(env, effect, &status);
                }
                Ok(s) if s.cancelled && changed => {
                    say(
                        "watch-cancelled",
                        &["a change arrived: building again".to_string()],
                    );
                    last = None;
                    continue;
                }
                Ok(_) => {}
                Err(e) => eprintln!("error: {e}"),
            }
        }
        say(
            "watch-waiting",
            &["waiting for changes (Ctrl-C to stop)".to_string()],
        );
        // Wait for a relevant change (or Ctrl-C).
        loop {
            if stop.load(Ordering::SeqCst) {
                return Ok(EXIT_INTERRUPTED);
            }
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(res) if relevant(&res) => break,
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(EXIT_INFRA),
            }
        }
    }
}
