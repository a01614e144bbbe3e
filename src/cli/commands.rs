//! One function per subcommand.

use super::exit::Exit;
use super::{CacheAction, Cli, Command};
use crate::cache::remote::RemoteCache;
use crate::cache::Cache;
use crate::exec::dry::{dry_run, DryStatus};
use crate::exec::{self, BuildOptions, HumanReporter, JsonReporter, NodeOutcome, Reporter};
use crate::plan::{lower, Plan};
use crate::project::Project;
use crate::recipe::{Diagnostics, Loader, Recipe};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub(super) struct Env {
    pub(super) project: Project,
    pub(super) cache_dir: PathBuf,
    pub(super) json: bool,
    /// `--quiet`: errors and the summary only.
    pub(super) quiet: bool,
    pub(super) remote: Option<Arc<RemoteCache>>,
}

impl Env {
    pub(super) fn cache(&self) -> Result<Cache, Exit> {
        Cache::open(&self.cache_dir).map_err(|e| {
            eprintln!(
                "error: cannot open the cache at {}: {e}",
                self.cache_dir.display()
            );
            Exit::Infra
        })
    }
}

pub fn run(cli: Cli) -> i32 {
    let start = match &cli.project {
        Some(p) => p.clone(),
        None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
    };
    let project = match Project::discover(&start) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Usage.code();
        }
    };
    let cache_dir = cli
        .cache
        .clone()
        .or_else(|| std::env::var_os("EFFECTC_CACHE").map(PathBuf::from))
        .unwrap_or_else(|| project.root.join("cache"));
    let remote = match super::config::remote(
        cli.remote_cache.clone(),
        &cli.remote_header,
        cli.remote_upload,
        &project.root,
    ) {
        Ok(r) => r.map(Arc::new),
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Usage.code();
        }
    };
    let env = Env {
        project,
        cache_dir,
        json: cli.json,
        quiet: cli.quiet,
        remote,
    };
    let result = match cli.command {
        Command::Build {
            effects,
            jobs,
            keep_going,
            device,
            shard,
            gpus,
            batch,
        } => resolve_shard(&env, shard).and_then(|shard| {
            build(
                &env,
                BuildArgs {
                    effects,
                    jobs,
                    keep_going,
                    device,
                    shard,
                    gpus,
                    batch: batch as usize,
                },
                None,
            )
        }),
        Command::Plan { effect } => plan(&env, &effect),
        Command::Explain { effect, stage } => explain(&env, &effect, &stage),
        Command::Graph { effect, dot: _ } => graph(&env, &effect),
        Command::Check { effects } => check(&env, effects),
        Command::Release {
            action: Some(action),
            ..
        } => release_action(action),
        Command::Release {
            action: None,
            effects,
            out,
            jobs,
            device,
            sign,
        } => release(&env, effects, &out, jobs, &device, sign.as_deref()),
        Command::Cache { action } => cache_cmd(&env, action),
        Command::Preview {
            effect,
            inputs,
            target,
            size,
            crop,
        } => super::preview::run(
            &env,
            super::preview::PreviewArgs {
                effect,
                inputs,
                target,
                size,
                crop,
            },
        ),
        Command::Models { action } => super::models::run(&env.project, action, env.json),
        Command::Watch {
            effect,
            jobs,
            device,
            preview,
        } => super::watch::run(&env, &effect, jobs, &device, preview),
    };
    match result {
        Ok(exit) | Err(exit) => exit.code(),
    }
}

/// `--shard`, with `auto` read from the job engine's variables (src/cli/shard.rs).
fn resolve_shard(
    env: &Env,
    spec: Option<super::shard::ShardSpec>,
) -> Result<Option<(usize, usize)>, Exit> {
    let Some(spec) = spec else {
        return Ok(None);
    };
    let shard = super::shard::resolve(spec, &|name| std::env::var(name).ok()).map_err(|e| {
        eprintln!("error: {e}");
        Exit::Usage
    })?;
    if shard.source != "--shard" && !env.quiet {
        eprintln!(
            "shard {}/{} (from {})",
            shard.index, shard.count, shard.source
        );
    }
    Ok(Some((shard.index, shard.count)))
}

fn print_diags(diags: &Diagnostics) {
    eprintln!("{}", diags.render(std::io::stderr().is_terminal()));
}

fn load(env: &Env, loader: &Loader, name: &str) -> Result<Recipe, Exit> {
    loader.load(name).map_err(|d| {
        print_diags(&d);
        let _ = env;
        Exit::Usage
    })
}

/// Checks the recipe and lowers it into a plan (hashing sources through the stat cache).
pub(super) fn plan_for(
    env: &Env,
    cache: &Cache,
    loader: &Loader,
    name: &str,
) -> Result<(Recipe, Plan), Exit> {
    let mut stat = crate::cache::StatCache::load(cache.root());
    let planned = plan_with(env, loader, name, &mut |p| stat.digest_of(p))?;
    if let Err(e) = stat.save() {
        eprintln!("warning: could not save the stat cache: {e}");
    }
    Ok(planned)
}

/// Checks the recipe and lowers it, with source digests from `digest_of` (watch keeps
/// the digests it knows between plans and hashes only what changed).
pub(super) fn plan_with(
    env: &Env,
    loader: &Loader,
    name: &str,
    digest_of: &mut dyn FnMut(&std::path::Path) -> std::io::Result<crate::digest::Digest>,
) -> Result<(Recipe, Plan), Exit> {
    let recipe = load(env, loader, name)?;
    let mut frames = crate::video::FrameStore::new(&env.cache_dir);
    let plan =
        lower::lower_with_frames(&env.project, &recipe, digest_of, &mut frames).map_err(|d| {
            print_diags(&d);
            Exit::Usage
        })?;
    if frames.decoded_clips > 0 && !env.json {
        eprintln!(
            "video: decoded {} clip(s) with ffmpeg, {} frame(s) taken, in {:.2}s",
            frames.decoded_clips,
            frames.decoded_frames,
            frames.decode_time.as_secs_f64()
        );
    }
    if frames.face_scans + frames.hashed_items > 0 && !env.json {
        eprintln!(
            "sources: looked for faces in {} picture(s), hashed {} for near-duplicates, in {:.2}s",
            frames.face_scans,
            frames.hashed_items,
            frames.scan_time.as_secs_f64()
        );
    }
    Ok((recipe, plan))
}

/// What `build` (and `release`) were asked for.
struct BuildArgs {
    effects: Vec<String>,
    jobs: usize,
    keep_going: bool,
    device: String,
    shard: Option<(usize, usize)>,
    gpus: Vec<usize>,
    batch: usize,
}

fn build(
    env: &Env,
    args: BuildArgs,
    mut results: Option<&mut BTreeMap<String, EffectResult>>,
) -> Result<Exit, Exit> {
    let BuildArgs {
        mut effects,
        jobs,
        keep_going,
        device,
        shard,
        gpus,
        batch,
    } = args;
    let device = crate::nn::DeviceSpec::parse(&device).map_err(|e| {
        eprintln!("error: {e}");
        Exit::Usage
    })?;
    if effects.is_empty() {
        effects = env.project.effect_names().map_err(|e| {
            eprintln!("error: {e}");
            Exit::Usage
        })?;
    }
    let cache = env.cache()?;
    let loader = Loader::new(&env.project);
    // Nothing runs before every named recipe checks.
    let mut plans = Vec::new();
    let mut bad = false;
    for name in &effects {
        match plan_for(env, &cache, &loader, name) {
            Ok(p) => plans.push(p),
            Err(_) => bad = true,
        }
    }
    if bad {
        return Err(Exit::Usage);
    }
    // Not freed either, as the summaries below.
    let mut plans = std::mem::ManuallyDrop::new(plans);
    if let Some((index, count)) = shard {
        let all = std::mem::ManuallyDrop::into_inner(plans);
        plans = std::mem::ManuallyDrop::new(
            all.into_iter()
                .map(|(recipe, plan)| (recipe, shard_of(plan, index, count)))
                .collect(),
        );
    }
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        // First Ctrl-C: stop at the next safe point; a second one exits at once.
        let _ = ctrlc::set_handler(move || {
            if cancel.swap(true, Ordering::SeqCst) {
                // exit skips destructors: end the teachers' process groups here.
                crate::process::kill_all_groups();
                std::process::exit(Exit::Interrupted.code());
            }
            eprintln!(
                "\ninterrupted: finishing running stages, then stopping (Ctrl-C again to quit now)"
            );
        });
    }
    let reporter: Box<dyn Reporter> = if env.json {
        Box::new(JsonReporter::new())
    } else {
        Box::new(HumanReporter::with_quiet(env.quiet))
    };
    // Batched stages run side by side, so there must be room for a whole batch.
    let mut opts = BuildOptions::new(jobs.max(batch), device);
    opts.batch = batch;
    opts.keep_going = keep_going;
    opts.remote = env.remote.clone();
    opts.shard = shard;
    opts.gpus = gpus;
    let mut code = Exit::Ok;
    for (_recipe, plan) in plans.iter() {
        let summary = match exec::build(
            &env.project.root,
            &cache,
            plan,
            &opts,
            reporter.as_ref(),
            &cancel,
        ) {
            // One-shot: the process exits soon after, and freeing tens of thousands of
            // records one by one would cost a no-op build a tenth of its time.
            Ok(s) => std::mem::ManuallyDrop::new(s),
            Err(e) => {
                eprintln!("error: {e}");
                return Err(Exit::Infra);
            }
        };
        if summary.cancelled {
            return Err(Exit::Interrupted);
        }
        if let Some(results) = results.as_deref_mut() {
            results.insert(
                plan.effect.clone(),
                EffectResult {
                    ok: summary.ok(),
                    ran: summary.ran,
                    cached: summary.cached,
                },
            );
        }
        if !summary.ok() {
            // The worst failure decides: a machine's problem outranks a recipe's.
            code = code.max(summary.worst_tier().map_or(Exit::Failed, Exit::from));
            if !keep_going {
                break;
            }
            continue;
        }
        if let Some(remote) = &env.remote {
            if !env.json && !env.quiet {
                let pushed = if remote.uploads() {
                    format!("{} pushed", remote.pushed.load(Ordering::SeqCst))
                } else {
                    "uploads off".to_string()
                };
                eprintln!(
                    "remote cache {}: {} stage(s) fetched, {pushed}{}",
                    remote.url(),
                    remote.fetched.load(Ordering::SeqCst),
                    if remote.is_down() {
                        " (unreachable)"
                    } else {
                        ""
                    }
                );
            }
        }
        if shard.is_some() {
            // A slice of the items: nothing whole to show.
            continue;
        }
        if let Err(e) = materialize(env, &cache, plan, &summary) {
            eprintln!(
                "warning: could not copy outputs to out/{}: {e}",
                plan.effect
            );
        }
    }
    Ok(code)
}

/// How one effect's build went, for `release`'s table.
pub(super) struct EffectResult {
    ok: bool,
    ran: usize,
    cached: usize,
}

/// The I-th of N slices of the plan's per-item stages: items are dealt round-robin in
/// plan order (sorted item names), so every shard gets a near-equal share and the same
/// recipe always slices the same way. Whole-dataset stages are left to the final build.
fn shard_of(plan: Plan, index: usize, count: usize) -> Plan {
    let mut slot: BTreeMap<String, usize> = BTreeMap::new();
    for node in &plan.nodes {
        if let Some(item) = &node.item {
            let next = slot.len();
            slot.entry(item.clone()).or_insert(next);
        }
    }
    plan.retain(|node| {
        node.item
            .as_ref()
            .is_some_and(|item| slot[item] % count == index)
    })
}

/// Copies the outputs a person looks at (sheets, reports, bundles) to `out/<effect>/`.
pub(super) fn materialize(
    env: &Env,
    cache: &Cache,
    plan: &Plan,
    summary: &exec::BuildSummary,
) -> std::io::Result<()> {
    let dir = env.project.root.join("out").join(&plan.effect);
    let marker = OutMarker::of(plan, summary);
    // A no-op build over an untouched folder has nothing to copy.
    if !marker.matches(&dir) {
        // The folder shows this build only: clear what an earlier build left (the
        // marker goes with it, and is written again only once every file is in place).
        if dir.is_dir() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        for (i, node) in plan.nodes.iter().enumerate() {
            if node.item.is_some() {
                continue;
            }
            let (NodeOutcome::Ran(rec) | NodeOutcome::Cached(rec)) = &summary.outcomes[i] else {
                continue;
            };
            for (name, out) in &rec.outputs {
                // `train-teacher-samples.png`, `pairs-sheet-pairs.png`...
                let dest = dir.join(node.id.out_file_name(name));
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let blob = cache.blob_path(&out.digest);
                crate::atomic::write_at(&dest, |tmp| std::fs::copy(&blob, tmp).map(|_| ()))?;
            }
        }
        // The bundle's own report, redone with what only this build knows (latency, times).
        super::report::write_out_report(&dir, plan, summary)?;
        marker.write(&dir)?;
    }
    if !env.json && !env.quiet {
        eprintln!("outputs: {}", dir.display());
    }
    Ok(())
}

/// What `out/<effect>/` was last filled from: every stage's record and whether it ran
/// (the report shows the times of what ran), and the size and mtime of every file in it.
/// When a build's records and the folder both still match, copying would rewrite the
/// same bytes.
struct OutMarker {
    records: crate::digest::Digest,
}

const OUT_MARKER: &str = ".effectc-out";

impl OutMarker {
    fn of(plan: &Plan, summary: &exec::BuildSummary) -> OutMarker {
        let mut h = crate::digest::KeyHasher::new("effectc/out-folder/v1");
        h.str(env!("CARGO_PKG_VERSION"));
        for (node, outcome) in plan.nodes.iter().zip(&summary.outcomes) {
            h.str(&node.id);
            match outcome {
                NodeOutcome::Ran(r) => {
                    h.str("ran").digest(&r.key).u64(r.duration_ms);
                }
                NodeOutcome::Cached(r) => {
                    h.str("cached").digest(&r.key);
                }
                NodeOutcome::ItemSkipped(_) => {
                    h.str("skipped");
                }
                NodeOutcome::Failed { .. } | NodeOutcome::NotRun => {
                    h.str("none");
                }
            }
        }
        OutMarker {
            records: h.finish(),
        }
    }

    /// The marker's text: the records' digest, then one `size mtime_ns name` line per file.
    fn text(&self, dir: &std::path::Path) -> std::io::Result<String> {
        let mut lines = vec![self.records.hex()];
        let mut names: Vec<_> = walkdir::WalkDir::new(dir)
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_file() && e.file_name() != OUT_MARKER)
            .collect();
        names.sort_by(|a, b| a.path().cmp(b.path()));
        for e in names {
            let meta = e.metadata().map_err(std::io::Error::other)?;
            let mtime = meta
                .modified()?
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let rel = e.path().strip_prefix(dir).unwrap_or(e.path());
            lines.push(format!("{} {mtime} {}", meta.len(), rel.display()));
        }
        Ok(lines.join("\n"))
    }

    fn matches(&self, dir: &std::path::Path) -> bool {
        let Ok(saved) = std::fs::read_to_string(dir.join(OUT_MARKER)) else {
            return false;
        };
        // Cheap first: a different build never lists the folder.
        saved.lines().next() == Some(self.records.hex().as_str())
            && self.text(dir).is_ok_and(|now| now == saved)
    }

    fn write(&self, dir: &std::path::Path) -> std::io::Result<()> {
        crate::atomic::write(&dir.join(OUT_MARKER), self.text(dir)?.as_bytes())
    }
}

/// `release verify` and `release keygen`.
fn release_action(action: super::ReleaseAction) -> Result<Exit, Exit> {
    use super::sign::{verify_release, PublicKey, SecretKey};
    match action {
        super::ReleaseAction::Verify { dir, key } => {
            let key = PublicKey::load(&key).map_err(|e| {
                eprintln!("error: {e}");
                Exit::Usage
            })?;
            let problems = verify_release(&dir, &key).map_err(|e| {
                eprintln!("error: {e}");
                Exit::Usage
            })?;
            if !problems.is_empty() {
                for p in &problems {
                    eprintln!("refused: {p}");
                }
                eprintln!("{}: the release does not verify", dir.display());
                return Err(Exit::Failed);
            }
            println!(
                "{}: SHA256SUMS signed by the key, every file it lists matches",
                dir.display()
            );
            Ok(Exit::Ok)
        }
        super::ReleaseAction::Keygen { out } => {
            let key = SecretKey::generate().map_err(|e| {
                eprintln!("error: {e}");
                Exit::Infra
            })?;
            let secret = out.with_extension("key");
            let public = out.with_extension("pub");
            for p in [&secret, &public] {
                if p.exists() {
                    eprintln!("error: {} exists; not overwriting a key", p.display());
                    return Err(Exit::Usage);
                }
            }
            let write_secret = || -> std::io::Result<()> {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&secret)?;
                f.write_all(key.to_file_text().as_bytes())
            };
            write_secret()
                .and_then(|_| std::fs::write(&public, key.public().to_file_text()))
                .map_err(|e| {
                    eprintln!("error: cannot write the key pair at {}: {e}", out.display());
                    Exit::Infra
                })?;
            println!(
                "secret key (unencrypted: keep it in the CI's secret store): {}
public key: {}",
                secret.display(),
                public.display()
            );
            Ok(Exit::Ok)
        }
    }
}

/// Builds every named effect (all by default) and writes its bundle and SHA256SUMS
/// (signed with `sign`, a minisign secret key, when given).
fn release(
    env: &Env,
    mut effects: Vec<String>,
    out: &std::path::Path,
    jobs: usize,
    device: &str,
    sign: Option<&std::path::Path>,
) -> Result<Exit, Exit> {
    // A key that cannot sign fails before anything builds.
    let key = match sign {
        Some(path) => Some(super::sign::SecretKey::load(path).map_err(|e| {
            eprintln!("error: --sign {e}");
            Exit::Usage
        })?),
        None => None,
    };
    if effects.is_empty() {
        effects = env.project.effect_names().map_err(|e| {
            eprintln!("error: {e}");
            Exit::Usage
        })?;
    }
    // Every recipe checks before anything builds; then every effect builds, even past
    // a failed one, so CI sees every problem in one run.
    check(env, effects.clone())?;
    let mut results = BTreeMap::new();
    let args = BuildArgs {
        effects: effects.clone(),
        jobs,
        keep_going: true,
        device: device.to_string(),
        shard: None,
        gpus: Vec::new(),
        batch: 1,
    };
    let mut code = build(env, args, Some(&mut results))?;
    let cache = env.cache()?;
    let loader = Loader::new(&env.project);
    std::fs::create_dir_all(out).map_err(|e| {
        eprintln!("error: cannot create {}: {e}", out.display());
        Exit::Infra
    })?;
    let mut sums = String::new();
    let mut machine: Option<serde_json::Value> = None;
    let mut table = vec![
        "| effect | version | targets (PSNR vs student) | sizes | latency (tract, 1 thread) | stages ran / cached |"
            .to_string(),
        "|---|---|---|---|---|---:|".to_string(),
    ];
    for name in &effects {
        let Some(result) = results.get(name).filter(|r| r.ok) else {
            table.push(format!("| {name} | FAILED | | | | |"));
            code = Exit::Failed;
            continue;
        };
        let (recipe, plan) = plan_for(env, &cache, &loader, name)?;
        let id = crate::cache::SnapshotId::new(&env.project.root, &plan.effect);
        let snapshot = match cache.read_snapshot(&id) {
            Ok((Some(snapshot), _)) => snapshot,
            Ok((None, _)) => {
                eprintln!("error: effect `{name}` built, but the cache has no snapshot of that build (was the cache cleared meanwhile?)");
                return Err(Exit::Infra);
            }
            Err(e) => {
                eprintln!("error: {e}");
                return Err(Exit::Infra);
            }
        };
        let Some(entry) = snapshot
            .entries
            .get(crate::plan::StageId::bundle().as_str())
        else {
            eprintln!("error: effect `{name}` has no bundle (it names no `target`)");
            return Err(Exit::Usage);
        };
        let Some((_, tar)) = entry.outputs.iter().find(|(n, _)| n == "bundle.tar.gz") else {
            eprintln!("error: effect `{name}`: its bundle stage recorded no bundle.tar.gz (a bug in effectc: please report it)");
            return Err(Exit::Infra);
        };
        let label = recipe
            .version
            .clone()
            .unwrap_or_else(|| plan.recipe_digest.hex()[..12].to_string());
        let file = format!("{name}-{label}.tar.gz");
        let dest = out.join(&file);
        let blob = cache.blob_path(&tar.digest);
        crate::atomic::write_at(&dest, |tmp| std::fs::copy(&blob, tmp).map(|_| ())).map_err(
            |e| {
                eprintln!("error: cannot write {}: {e}", dest.display());
                Exit::Infra
            },
        )?;
        sums.push_str(&format!("{}  {file}\n", tar.digest.hex()));
        let output = |name: &str| {
            entry
                .outputs
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, o)| std::fs::read(cache.blob_path(&o.digest)).ok())
        };
        // What this machine measured stays outside the tarball and SHA256SUMS, so
        // two builders of the same commit publish the same checksums.
        let measurements = output("measurements.json")
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .unwrap_or_default();
        if let Some(bytes) = output("measurements.json") {
            let path = out.join(format!("{name}-{label}.measurements.json"));
            crate::atomic::write(&path, &bytes).map_err(|e| {
                eprintln!("error: cannot write {}: {e}", path.display());
                Exit::Infra
            })?;
        }
        if machine.is_none() {
            machine = measurements.get("machine").cloned();
        }
        if let Some(manifest) = output("manifest.json")
            .and_then(|b| serde_json::from_slice::<crate::bundle::Manifest>(&b).ok())
        {
            let latency = |k: &str| measurements["targets"][k]["latency_ms"].as_f64();
            let list = |f: &dyn Fn(&str, &crate::bundle::manifest::TargetSummary) -> String| {
                manifest
                    .targets
                    .iter()
                    .map(|(k, t)| f(k, t))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            table.push(format!(
                "| {name} | {label} | {} | {} | {} | {} / {} |",
                list(&|k, t| format!("{k} {:.1} dB", t.psnr_db.unwrap_or(f64::NAN))),
                list(&|k, t| format!("{k} {} KB", t.size_bytes.unwrap_or(0) / 1000)),
                list(&|k, _| format!("{k} {:.2} ms", latency(k).unwrap_or(f64::NAN))),
                result.ran,
                result.cached
            ));
        }
    }
    let sums_path = out.join("SHA256SUMS");
    crate::atomic::write(&sums_path, sums.as_bytes()).map_err(|e| {
        eprintln!("error: cannot write {}: {e}", sums_path.display());
        Exit::Infra
    })?;
    let sig_path = out.join("SHA256SUMS.minisig");
    match &key {
        Some(key) => {
            crate::atomic::write(
                &sig_path,
                key.sign(sums.as_bytes(), "SHA256SUMS").as_bytes(),
            )
            .map_err(|e| {
                eprintln!("error: cannot write {}: {e}", sig_path.display());
                Exit::Infra
            })?;
        }
        // A signature of an earlier SHA256SUMS would not match this one.
        None => {
            let _ = std::fs::remove_file(&sig_path);
        }
    }
    // The table and the machine it measured on, beside (not in) SHA256SUMS.
    let report_path = out.join("release-report.md");
    let mut report = format!("# effectc release\n\n{}\n", table.join("\n"));
    if let Some(m) = &machine {
        report.push_str(&format!(
            "\nLatency measured on: {} {}, {} CPUs{}\n",
            m["os"].as_str().unwrap_or("?"),
            m["arch"].as_str().unwrap_or("?"),
            m["cpus"],
            m["cpu"]
                .as_str()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default()
        ));
    }
    crate::atomic::write(&report_path, report.as_bytes()).map_err(|e| {
        eprintln!("error: cannot write {}: {e}", report_path.display());
        Exit::Infra
    })?;
    // CI logs always show the table; with --json it goes to stderr beside the events.
    if env.json {
        eprintln!("{}", table.join("\n"));
    } else {
        println!("{}", table.join("\n"));
        println!(
            "bundles and SHA256SUMS{} in {}",
            if key.is_some() {
                " (signed: SHA256SUMS.minisig)"
            } else {
                ""
            },
            out.display()
        );
    }
    if code != Exit::Ok {
        eprintln!("release failed: see the effects marked FAILED above");
        return Err(code);
    }
    Ok(Exit::Ok)
}

fn plan(env: &Env, effect: &str) -> Result<Exit, Exit> {
    let cache = env.cache()?;
    let loader = Loader::new(&env.project);
    let (_recipe, plan) = plan_for(env, &cache, &loader, effect)?;
    // What a build would report first: sources it leaves out.
    for f in &plan.source_failures {
        if env.json {
            println!(
                "{}",
                serde_json::json!({"event": "source-failed", "effect": effect, "source": f.source, "error": f.error, "tier": f.tier})
            );
        } else {
            println!("left out: {}: {}", f.source, f.error);
        }
    }
    let (status, _) = dry_run(&cache, &env.project.root, &plan).map_err(|e| {
        eprintln!("error: {e}");
        Exit::Infra
    })?;
    if env.json {
        for (node, s) in plan.nodes.iter().zip(&status) {
            let (state, reasons) = match s {
                DryStatus::Cached { .. } => ("cached", vec![]),
                DryStatus::Stale { reasons, .. } => ("stale", reasons.clone()),
                DryStatus::Blocked { upstream } => {
                    ("stale", vec![format!("upstream {upstream} is stale")])
                }
                DryStatus::Skipped { reason } => ("skipped", vec![reason.clone()]),
            };
            println!(
                "{}",
                serde_json::json!({"event": "plan", "effect": effect, "stage": node.id, "kind": node.stage.family(), "state": state, "reasons": reasons})
            );
        }
        return Ok(Exit::Ok);
    }
    // Per-item stages fold into one line per kind and reason.
    let mut lines: BTreeMap<(usize, String, String), usize> = BTreeMap::new();
    let first_pos: BTreeMap<String, usize> = plan
        .order
        .iter()
        .enumerate()
        .rev()
        .map(|(pos, &i)| (plan.nodes[i].stage.family().to_string(), pos))
        .collect();
    for (node, s) in plan.nodes.iter().zip(&status) {
        let kind = node.stage.family().to_string();
        let label = if node.item.is_some() {
            kind.clone()
        } else {
            node.id.to_string()
        };
        let text = match s {
            DryStatus::Cached { .. } => "cached".to_string(),
            DryStatus::Stale { reasons, .. } => format!("stale: {}", reasons.join("; ")),
            DryStatus::Blocked { upstream } => {
                let up_kind = plan
                    .node_index(upstream)
                    .map(|i| plan.nodes[i].stage.family())
                    .unwrap_or("?");
                format!("stale unless {up_kind} reproduces its outputs")
            }
            DryStatus::Skipped { .. } => "skipped with its item".to_string(),
        };
        *lines
            .entry((first_pos.get(&kind).copied().unwrap_or(0), label, text))
            .or_default() += 1;
    }
    let stale = status
        .iter()
        .filter(|s| !matches!(s, DryStatus::Cached { .. } | DryStatus::Skipped { .. }))
        .count();
    println!(
        "{effect}: {} stages, {} cached, {stale} stale",
        plan.nodes.len(),
        plan.nodes.len() - stale
    );
    for ((_, label, text), count) in lines {
        let n = if count > 1 {
            format!(" ×{count}")
        } else {
            String::new()
        };
        println!("  {label}{n}: {text}");
    }
    Ok(Exit::Ok)
}

fn explain(env: &Env, effect: &str, stage: &str) -> Result<Exit, Exit> {
    let cache = env.cache()?;
    let loader = Loader::new(&env.project);
    let (_recipe, plan) = plan_for(env, &cache, &loader, effect)?;
    let Some(i) = plan.node_index(stage) else {
        let ids: Vec<&str> = plan.nodes.iter().map(|n| n.id.as_str()).collect();
        let hint = crate::recipe::diagnostic::closest(stage, ids.iter().copied())
            .map(|s| format!(" (did you mean `{s}`?)"))
            .unwrap_or_default();
        eprintln!("error: effect `{effect}` has no stage `{stage}`{hint}; `effectc plan {effect}` lists them");
        return Err(Exit::Usage);
    };
    let (status, _) = dry_run(&cache, &env.project.root, &plan).map_err(|e| {
        eprintln!("error: {e}");
        Exit::Infra
    })?;
    let mut cur = i;
    loop {
        match &status[cur] {
            DryStatus::Cached { key } => {
                println!("{}: cached (key {})", plan.nodes[cur].id, &key.hex()[..16]);
                if cur == i {
                    show_findings(&cache, key);
                }
                break;
            }
            DryStatus::Stale { key, reasons } => {
                println!("{}: stale (key {})", plan.nodes[cur].id, &key.hex()[..16]);
                for r in reasons {
                    println!("  {r}");
                }
                break;
            }
            DryStatus::Blocked { upstream } => {
                println!(
                    "{}: stale unless upstream `{upstream}` reproduces its outputs",
                    plan.nodes[cur].id
                );
                match plan.node_index(upstream) {
                    Some(u) => cur = u,
                    None => break,
                }
            }
            DryStatus::Skipped { reason } => {
                println!(
                    "{}: not run, its item was skipped: {reason}",
                    plan.nodes[cur].id
                );
                break;
            }
        }
    }
    Ok(Exit::Ok)
}

/// What a CLIP stage found (`attribute.gender: woman (clip 0.93)`, a pair's similarity,
/// the filter's counts), from its cached record.
fn show_findings(cache: &crate::cache::Cache, key: &crate::digest::Digest) {
    let Ok(Some(rec)) = cache.get_record(key) else {
        return;
    };
    for (k, v) in &rec.metrics {
        let shown = k.starts_with("attribute.")
            || ["similarity", "disagree", "dropped", "kept"].contains(&k.as_str());
        if shown {
            match v.as_str() {
                Some(text) => println!("  {k}: {text}"),
                None => println!("  {k}: {v}"),
            }
        }
    }
}

fn graph(env: &Env, effect: &str) -> Result<Exit, Exit> {
    let cache = env.cache()?;
    let loader = Loader::new(&env.project);
    let (_recipe, plan) = plan_for(env, &cache, &loader, effect)?;
    print!("{}", plan.to_dot());
    Ok(Exit::Ok)
}

fn check(env: &Env, mut effects: Vec<String>) -> Result<Exit, Exit> {
    if effects.is_empty() {
        effects = env.project.effect_names().map_err(|e| {
            eprintln!("error: {e}");
            Exit::Usage
        })?;
    }
    let loader = Loader::new(&env.project);
    let mut bad = 0;
    for name in &effects {
        // Lowered as build lowers it (without reading content), so check and build agree.
        match loader
            .load(name)
            .and_then(|r| lower::lower_for_check(&env.project, &r).map(|_| r))
        {
            Ok(r) => {
                if !env.json {
                    println!(
                        "ok: {name} ({} stage kinds of teacher `{}`, {} target(s))",
                        r.files.len(),
                        r.teacher.kind(),
                        r.targets.len()
                    );
                }
            }
            Err(d) => {
                bad += 1;
                print_diags(&d);
            }
        }
    }
    if env.json {
        println!(
            "{}",
            serde_json::json!({"event": "check-finished", "effects": effects.len(), "failed": bad})
        );
    }
    if bad > 0 {
        eprintln!("{bad} of {} recipe(s) have errors", effects.len());
        return Err(Exit::Usage);
    }
    Ok(Exit::Ok)
}

enum TransferKind {
    Push,
    Pull,
}

fn cache_cmd(env: &Env, action: CacheAction) -> Result<Exit, Exit> {
    let cache = env.cache()?;
    let infra = |e: crate::cache::CacheError| {
        eprintln!("error: {e}");
        Exit::Infra
    };
    let action_kind = match &action {
        CacheAction::Push { .. } => TransferKind::Push,
        _ => TransferKind::Pull,
    };
    match action {
        CacheAction::Ls => {
            let mut records = cache.list_records().map_err(infra)?;
            records.sort_by(|a, b| (&a.effect, &a.stage_id).cmp(&(&b.effect, &b.stage_id)));
            for r in &records {
                let size: u64 = r.outputs.values().map(|o| o.size_bytes).sum();
                println!(
                    "{}  {:<10} {:<40} {:>10} B  {} ms",
                    &r.key.hex()[..16],
                    r.effect,
                    r.stage_id,
                    size,
                    r.duration_ms
                );
            }
            println!("{} record(s)", records.len());
        }
        CacheAction::Verify => {
            let report = cache.verify().map_err(infra)?;
            print!("{report}");
            if !report.is_clean() {
                return Err(Exit::Failed);
            }
        }
        CacheAction::Push { effect } | CacheAction::Pull { effect } => {
            let pushing = matches!(action_kind, TransferKind::Push);
            let Some(remote) = &env.remote else {
                eprintln!("error: no remote cache: pass --remote-cache URL, set EFFECTC_REMOTE_CACHE, or write `remote-cache \"URL\"` in effectc.kdl");
                return Err(Exit::Usage);
            };
            if pushing && !remote.uploads() {
                eprintln!("error: uploads to the remote cache are off (--remote-upload=false, EFFECTC_REMOTE_UPLOAD or `remote-upload` in effectc.kdl); pass --remote-upload=true to push");
                return Err(Exit::Usage);
            }
            let loader = Loader::new(&env.project);
            let (_recipe, plan) = plan_for(env, &cache, &loader, &effect)?;
            let report = if pushing {
                exec::transfer::push(&cache, &plan, remote)
            } else {
                exec::transfer::pull(&cache, &plan, remote)
            }
            .map_err(|e| {
                eprintln!("error: {e}");
                Exit::Infra
            })?;
            println!(
                "{effect}: {} stage(s) {}, {} already here, {} not built anywhere yet",
                report.moved,
                if pushing { "pushed" } else { "pulled" },
                report.present,
                report.missing
            );
        }
        CacheAction::Gc {
            older_than,
            max_size,
        } => {
            // Keep what any project's or shard's last build named (the cache may be
            // shared), or, with a policy, what was used recently.
            let policy = crate::cache::GcPolicy {
                older_than,
                max_size,
            };
            let report = cache.gc(&policy).map_err(infra)?;
            print!("{report}");
        }
    }
    Ok(Exit::Ok)
}
