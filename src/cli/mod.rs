//! The command line: translates arguments into library calls, renders diagnostics and
//! chooses exit codes CI can trust (0 ok, 1 build failed, 2 bad recipe or usage,
//! 3 infrastructure error, 130 interrupted).

mod commands;
mod config;
mod exit;
mod models;
mod preview;
mod report;
mod shard;
mod sign;
mod watch;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "effectc",
    version,
    about = "An effect compiler: recipes for real-time video effects in, verified on-device models out"
)]
pub struct Cli {
    /// Project folder (default: found from the working directory upwards, like cargo).
    #[arg(long, global = true)]
    pub project: Option<PathBuf>,
    /// Cache folder (default: $EFFECTC_CACHE, else `cache/` in the project).
    #[arg(long, global = true)]
    pub cache: Option<PathBuf>,
    /// One JSON event per line on stdout, for CI.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only errors and the summary (no progress, no per-stage lines).
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    /// A shared cache speaking the Bazel remote-cache HTTP protocol (default:
    /// $EFFECTC_REMOTE_CACHE, else `remote-cache "URL"` in the project's effectc.kdl).
    #[arg(long, global = true, value_name = "URL")]
    pub remote_cache: Option<String>,
    /// A header sent with every remote-cache request (credentials), repeatable:
    /// 'NAME: VALUE' with `${VAR}` read from the environment, or '@FILE' of such lines.
    /// Also $EFFECTC_REMOTE_HEADER and `remote-header` in effectc.kdl. Never printed.
    #[arg(long, global = true, value_name = "'NAME: VALUE'|@FILE")]
    pub remote_header: Vec<String>,
    /// Upload stages that ran to the remote cache (default true; also
    /// $EFFECTC_REMOTE_UPLOAD and `remote-upload #false` in effectc.kdl). With
    /// `--remote-upload=false` the shared cache is read and never written.
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub remote_upload: Option<bool>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build effects: run every stale stage, reuse the rest from the cache.
    Build {
        effects: Vec<String>,
        /// Stages run side by side (per-item CPU stages).
        #[arg(long, short, default_value_t = default_jobs())]
        jobs: usize,
        /// Build what can be built past a failure.
        #[arg(long)]
        keep_going: bool,
        /// auto | cpu | cuda | cuda:N (auto: CUDA when present).
        #[arg(long, default_value = "auto")]
        device: String,
        /// Build only slice I of N (0 ≤ I < N) of every per-item stage, and nothing
        /// else: one job of a Kubernetes Indexed Job, a Slurm array or a CI matrix.
        /// Use with --remote-cache; a final unsharded build then finds every item.
        /// `auto` reads the slice from the job engine (SLURM_ARRAY_TASK_ID with
        /// SLURM_ARRAY_TASK_COUNT or MIN/MAX; TEST_SHARD_INDEX and TEST_TOTAL_SHARDS);
        /// `auto/N` gives the count (JOB_COMPLETION_INDEX; with Slurm the task id is then
        /// the shard, so one index re-run alone keeps its slice).
        #[arg(long, value_name = "I/N|auto|auto/N", value_parser = shard::parse)]
        shard: Option<shard::ShardSpec>,
        /// Local GPUs for per-item GPU stages (pair generation), one worker per device
        /// and never more GPU jobs than devices: `--gpus 0,1`.
        #[arg(long, value_delimiter = ',', value_name = "N,N...")]
        gpus: Vec<usize>,
        /// Pairs generated together in one batch through the diffusion models.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
        batch: u16,
    },
    /// Build, then rebuild on every edit that changes something (recipe, its bases,
    /// registries, target profiles, sources), refreshing out/EFFECT/ each time.
    Watch {
        effect: String,
        #[arg(long, short, default_value_t = default_jobs())]
        jobs: usize,
        #[arg(long, default_value = "auto")]
        device: String,
        /// When an edit makes pairs stale, first rebuild the pairs of this many items
        /// (holdout items first, by name) and show them beside the previous ones in
        /// out/EFFECT/preview.html, then the full rebuild. 0: no preview.
        #[arg(long, default_value_t = 8)]
        preview: usize,
    },
    /// Show every stage: cached or stale, and why. Runs nothing.
    Plan { effect: String },
    /// Why one stage is stale: which input of its key changed since the last build.
    Explain { effect: String, stage: String },
    /// Print the stage graph.
    Graph {
        effect: String,
        /// Graphviz output (the only format so far).
        #[arg(long)]
        dot: bool,
    },
    /// Check and build effects (all by default), then write `DIR/<effect>-<version>.tar.gz`
    /// bundles and `DIR/SHA256SUMS`. Non-zero if any effect fails to build or verify.
    /// `release verify` and `release keygen` check and sign releases.
    #[command(args_conflicts_with_subcommands = true)]
    Release {
        #[command(subcommand)]
        action: Option<ReleaseAction>,
        effects: Vec<String>,
        #[arg(long, default_value = "release")]
        out: PathBuf,
        #[arg(long, short, default_value_t = default_jobs())]
        jobs: usize,
        #[arg(long, default_value = "auto")]
        device: String,
        /// Sign SHA256SUMS with this minisign secret key (unencrypted: from `effectc
        /// release keygen` or `minisign -G -W`), writing `DIR/SHA256SUMS.minisig`.
        #[arg(long, value_name = "KEYFILE")]
        sign: Option<PathBuf>,
    },
    /// Check recipes (all of them by default) without running anything.
    Check { effects: Vec<String> },
    /// The models directory ($EFFECTC_MODELS, else the project's `models/`, else
    /// ~/.cache/effectc/models): what the registry names, present or not, pinned or not.
    Models {
        #[command(subcommand)]
        action: ModelsAction,
    },
    /// Run the built student through one target's shipped file (tract) on photos,
    /// folders or videos: `before | after` PNGs (an MP4 per video, audio kept) and a page,
    /// in out/EFFECT/preview/; prints the frames per second tract reached.
    Preview {
        effect: String,
        /// Photos, folders of them, videos.
        inputs: Vec<PathBuf>,
        /// The target whose file runs (default: the effect's first).
        #[arg(long)]
        target: Option<String>,
        /// Square size in pixels (default: the recipe's crop size).
        #[arg(long)]
        size: Option<u32>,
        /// How a frame is cut square (default and only: `center`, short side to size).
        #[arg(long)]
        crop: Option<String>,
    },
    /// Inspect and maintain the cache.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
}

#[derive(Subcommand, Debug)]
pub enum ReleaseAction {
    /// Check a signed release: the signature of DIR/SHA256SUMS.minisig against the
    /// public key, then every file SHA256SUMS lists re-hashed. Non-zero on any mismatch.
    Verify {
        dir: PathBuf,
        /// The minisign public key: a `.pub` file, or its base64 line.
        #[arg(long, value_name = "PUBKEY")]
        key: String,
    },
    /// Make a signing key pair in minisign's format: PREFIX.key (secret, unencrypted,
    /// mode 600: keep it in the CI's secret store) and PREFIX.pub (commit or publish it).
    Keygen {
        #[arg(long, value_name = "PREFIX", default_value = "effectc-release")]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum ModelsAction {
    /// Every model of the registry: architecture, present or missing, pinned, path.
    List,
    /// Copy a weight file or diffusers folder into the models directory, checking it
    /// against the registry's pin when `--name` names a registry entry.
    Import {
        path: PathBuf,
        #[arg(long)]
        name: Option<String>,
    },
    /// Re-hash every present model and compare with its pin (stdlib/models.kdl, else
    /// models.lock); non-zero on a mismatch (a drift).
    Verify,
    /// Download models (by default every registry model with a source) into the models
    /// directory: resumable, checked against the pin before it appears; a model without
    /// a pin gets its digest recorded in models.lock. `HF_TOKEN` is sent as a bearer
    /// token; `EFFECTC_MODELS_MIRROR=URL` fetches `URL/<registry file>` instead.
    Fetch { names: Vec<String> },
}

#[derive(Subcommand, Debug)]
pub enum CacheAction {
    /// List stage records.
    Ls,
    /// Re-hash every blob; damaged ones are removed and rebuilt by the next build.
    Verify,
    /// Delete what no build still uses. By default: every record that no snapshot in
    /// the cache names (any project's, any shard's). With a policy (shared caches):
    /// records not used within --older-than, then the least recently used beyond
    /// --max-size. Refuses (exit 3) when a snapshot is damaged.
    Gc {
        /// Remove records not used within this long: `30d`, `12h`, `2w` (s, m, h, d, w).
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        older_than: Option<std::time::Duration>,
        /// Then remove the least recently used until the cache fits: `50G`, `800M`
        /// (B, K, M, G, T; powers of 1024).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_size: Option<u64>,
    },
    /// Upload one effect's built stages to the remote cache.
    Push { effect: String },
    /// Download one effect's stages from the remote cache.
    Pull { effect: String },
}

/// `30d` → 30 days. A bare number is seconds.
fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("`{text}`: expected an age such as 30d, 12h, 90m, 2w or 3600s");
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(secs)
        .map(std::time::Duration::from_secs)
        .ok_or_else(bad)
}

/// `50G` → 50 GiB. A bare number is bytes.
fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}`: expected a size such as 50G, 800M, 10K or 4096");
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    commands::run(cli)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_ages_and_sizes_parse_with_units() {
        assert_eq!(parse_age("30d").unwrap().as_secs(), 30 * 86_400);
        assert_eq!(parse_age("12h").unwrap().as_secs(), 12 * 3600);
        assert_eq!(parse_age("90").unwrap().as_secs(), 90);
        assert!(parse_age("30x").is_err() && parse_age("d").is_err());
        assert_eq!(parse_size("50G").unwrap(), 50 << 30);
        assert_eq!(parse_size("800MiB").unwrap(), 800 << 20);
        assert_eq!(parse_size("10kb").unwrap(), 10 << 10);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("1Q").is_err() && parse_size("99999999999T").is_err());
    }
}
