//! `effectc models fetch` against a real nginx on loopback (Debian's `nginx`; `make test`
//! installs it through scripts/test-deps.sh) serving a fake model tree: fetch then
//! verify, resume after a cut connection (HTTP Range, 206 in nginx's log), a wrong
//! digest refused with nothing left behind, a bearer token from HF_TOKEN, and
//! models.lock recording and holding unpinned digests.

mod common;

use common::nginx::Nginx;
use common::TestProject;
use effectc::digest::Digest;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// nginx serving `data/` with `/slow/` rate-limited and `/private/` behind
/// `Authorization: Bearer secret`, logging status, URI and Range of each request.
fn start_nginx() -> Nginx {
    Nginx::start(
        "log_format fetch '$status $uri \"$http_range\"';\n  access_log {dir}/access.log fetch;",
        "location /slow/ { limit_rate 64k; }\n    \
         location /private/ { if ($http_authorization != \"Bearer secret\") { return 401; } }",
    )
}

impl Nginx {
    fn url(&self, sub: &str) -> String {
        format!("http://127.0.0.1:{}/{sub}", self.port)
    }

    /// Puts `bytes` at `data/<rel>`.
    fn serve(&self, rel: &str, bytes: &[u8]) {
        let p = self.dir.path().join("data").join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

/// `n` bytes that do not repeat in any short period.
fn bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

fn sha(b: &[u8]) -> String {
    Digest::of_bytes(b).hex()
}

struct Setup {
    server: Nginx,
    project: TestProject,
    models: tempfile::TempDir,
}

impl Setup {
    /// A project whose registry (stdlib/models.kdl) is `registry`, with `{url}` replaced
    /// by the server's address.
    fn new(registry: impl Fn(&Nginx) -> String) -> Setup {
        let server = start_nginx();
        let project = TestProject::new();
        project.write("stdlib/models.kdl", &registry(&server));
        Setup {
            server,
            project,
            models: tempfile::tempdir().unwrap(),
        }
    }

    fn fetch(&self, args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
        self.command(args, envs).output().unwrap()
    }

    fn command(&self, args: &[&str], envs: &[(&str, &str)]) -> Command {
        let mut cmd = self.project.command(&[&["models"][..], args].concat());
        cmd.env("EFFECTC_MODELS", self.models.path())
            .env_remove("HF_TOKEN")
            .env_remove("EFFECTC_MODELS_MIRROR");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd
    }

    fn model(&self, rel: &str) -> PathBuf {
        self.models.path().join(rel)
    }

    /// Everything in the models directory, relative paths, sorted.
    fn listing(&self) -> Vec<String> {
        let mut v: Vec<String> = walkdir::WalkDir::new(self.models.path())
            .min_depth(1)
            .into_iter()
            .filter_map(|e| e.ok())
            .map(|e| {
                e.path()
                    .strip_prefix(self.models.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        v.sort();
        v
    }
}

fn text(o: &std::process::Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The digest `effectc` gives a folder: SHA-256 of its sorted `sha256sum` listing.
fn folder_digest(files: &[(&str, &[u8])]) -> String {
    let mut files = files.to_vec();
    files.sort_by(|a, b| a.0.cmp(b.0));
    let listing: String = files
        .iter()
        .map(|(n, b)| format!("{}  {n}\n", sha(b)))
        .collect();
    sha(listing.as_bytes())
}

#[test]
fn a_pinned_file_and_an_unpinned_folder_fetch_verify_and_lock() {
    let weights = bytes(50_000, 1);
    let vocab = bytes(3_000, 2);
    let merges = bytes(2_000, 3);
    let pin = sha(&weights);
    let s = Setup::new(|_| {
        format!(
            "model \"tiny\" file=\"tiny.safetensors\" arch=\"lora-sd15\" sha256=\"{pin}\"\n\
             model \"tok\" file=\"tok\" arch=\"clip-tokenizer\" {{\n  file \"vocab.json\"\n  file \"sub/merges.txt\"\n}}\n"
        )
    });
    s.server.serve("models/tiny.safetensors", &weights);
    s.server.serve("models/tok/vocab.json", &vocab);
    s.server.serve("models/tok/sub/merges.txt", &merges);
    let mirror = s.server.url("models");
    let envs = [("EFFECTC_MODELS_MIRROR", mirror.as_str())];
    let out = s.fetch(&["fetch", "tiny", "tok"], &envs);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(std::fs::read(s.model("tiny.safetensors")).unwrap(), weights);
    assert_eq!(std::fs::read(s.model("tok/vocab.json")).unwrap(), vocab);
    assert_eq!(
        std::fs::read(s.model("tok/sub/merges.txt")).unwrap(),
        merges
    );
    assert!(
        !s.listing().iter().any(|p| p.contains(".part")),
        "{:?}",
        s.listing()
    );
    // Only the unpinned folder goes to the lock, with the folder digest builds use.
    let lock = std::fs::read_to_string(s.project.root().join("models.lock")).unwrap();
    let want = folder_digest(&[("vocab.json", &vocab), ("sub/merges.txt", &merges)]);
    assert!(
        lock.contains(&format!("model \"tok\" sha256=\"{want}\"")),
        "{lock}"
    );
    assert!(!lock.contains("tiny"), "{lock}");

    let verify = s.fetch(&["verify"], &[]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    let v = String::from_utf8_lossy(&verify.stdout).into_owned();
    assert!(
        v.contains("ok       tiny") && v.contains("ok       tok"),
        "{v}"
    );
    // A second fetch finds both and downloads nothing.
    let again = s.fetch(&["fetch", "tiny", "tok"], &envs);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("present  tok"),
        "{}",
        text(&again)
    );

    // Drift: the local folder changes; verify names it against models.lock.
    std::fs::write(s.model("tok/vocab.json"), b"edited").unwrap();
    let verify = s.fetch(&["verify"], &[]);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    let v = String::from_utf8_lossy(&verify.stdout).into_owned();
    assert!(
        v.contains("MISMATCH tok") && v.contains("models.lock"),
        "{v}"
    );

    // The server's copy changes: a fresh fetch holds to the lock and keeps nothing.
    std::fs::remove_dir_all(s.model("tok")).unwrap();
    s.server.serve("models/tok/vocab.json", &bytes(3_000, 9));
    let out = s.fetch(&["fetch", "tok"], &envs);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("models.lock pins") && err.contains(&want) && err.contains("refused"),
        "{err}"
    );
    assert_eq!(s.listing(), vec!["tiny.safetensors".to_string()]);
    let lock_after = std::fs::read_to_string(s.project.root().join("models.lock")).unwrap();
    assert_eq!(lock_after, lock, "a refused fetch must not move the lock");
}

#[test]
fn a_wrong_digest_is_refused_and_nothing_is_left() {
    let s = Setup::new(|_| {
        format!(
            "model \"bad\" file=\"deep/bad.bin\" arch=\"lora-sd15\" sha256=\"{}\"\n",
            "0".repeat(64)
        )
    });
    s.server.serve("models/deep/bad.bin", &bytes(10_000, 4));
    let mirror = s.server.url("models");
    let out = s.fetch(&["fetch", "bad"], &[("EFFECTC_MODELS_MIRROR", &mirror)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("model `bad`")
            && err.contains(&sha(&bytes(10_000, 4)))
            && err.contains("stdlib/models.kdl pins")
            && err.contains("refused"),
        "{err}"
    );
    let files: Vec<String> = s
        .listing()
        .into_iter()
        .filter(|p| !s.model(p).is_dir())
        .collect();
    assert!(files.is_empty(), "left behind: {files:?}");
    assert!(!s.project.root().join("models.lock").exists());
}

#[test]
fn a_partial_file_is_completed_with_a_range_request() {
    let weights = bytes(200_000, 5);
    let s = Setup::new(|_| {
        format!(
            "model \"big\" file=\"big.bin\" arch=\"lora-sd15\" sha256=\"{}\"\n",
            sha(&bytes(200_000, 5))
        )
    });
    s.server.serve("models/big.bin", &weights);
    std::fs::write(s.model("big.bin.part"), &weights[..70_000]).unwrap();
    let mirror = s.server.url("models");
    let out = s.fetch(&["fetch", "big"], &[("EFFECTC_MODELS_MIRROR", &mirror)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("resumed after 70000 bytes"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read(s.model("big.bin")).unwrap(), weights);
    assert!(!s.model("big.bin.part").exists());
    let log = s.server.log();
    assert!(
        log.contains("206 /models/big.bin \"bytes=70000-\""),
        "nginx log:\n{log}"
    );
}

#[test]
fn a_cut_connection_resumes_on_the_next_run() {
    let weights = bytes(600_000, 6);
    let s = Setup::new(|_| {
        format!(
            "model \"slow\" file=\"slow.bin\" arch=\"lora-sd15\" sha256=\"{}\"\n",
            sha(&bytes(600_000, 6))
        )
    });
    // 64 KiB/s: the transfer takes seconds, long enough to be cut in the middle.
    s.server.serve("slow/slow.bin", &weights);
    let mirror = s.server.url("slow");
    let part = s.model("slow.bin.part");
    let mut child = s
        .command(&["fetch", "slow"], &[("EFFECTC_MODELS_MIRROR", &mirror)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the first bytes on disk, then kill the client (the deadline bounds a hang).
    let deadline = Instant::now() + Duration::from_secs(60);
    while part.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "no bytes arrived");
        assert!(
            child.try_wait().unwrap().is_none(),
            "fetch ended before the cut"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let kept = part.metadata().unwrap().len();
    assert!(kept > 0 && kept < weights.len() as u64, "kept {kept}");
    assert!(!s.model("slow.bin").exists());

    let out = s.fetch(&["fetch", "slow"], &[("EFFECTC_MODELS_MIRROR", &mirror)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(std::fs::read(s.model("slow.bin")).unwrap(), weights);
    let log = s.server.log();
    assert!(
        log.lines()
            .any(|l| l.starts_with("206 /slow/slow.bin \"bytes=") && !l.contains("bytes=0-")),
        "nginx log:\n{log}"
    );
}

#[test]
fn a_gated_model_names_hf_token_and_fetches_with_it() {
    let weights = bytes(5_000, 7);
    let pin = sha(&weights);
    let s = Setup::new(|n| {
        format!(
            "model \"gated\" file=\"gated.bin\" arch=\"lora-sd15\" sha256=\"{pin}\" fetch=\"{}\"\n",
            n.url("private/gated.bin")
        )
    });
    s.server.serve("private/gated.bin", &weights);
    let out = s.fetch(&["fetch", "gated"], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("HTTP 401") && err.contains("Set HF_TOKEN"),
        "{err}"
    );
    let out = s.fetch(&["fetch", "gated"], &[("HF_TOKEN", "nope")]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the token in HF_TOKEN was refused"),
        "{}",
        text(&out)
    );
    assert!(s.listing().is_empty(), "{:?}", s.listing());
    let out = s.fetch(&["fetch", "gated"], &[("HF_TOKEN", "secret")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(std::fs::read(s.model("gated.bin")).unwrap(), weights);
}

/// A build holds to models.lock: a model whose bytes differ from its locked digest is
/// refused before any work, naming the lock.
#[test]
fn a_build_refuses_a_model_that_differs_from_models_lock() {
    let src = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/projects/tiny-diffusion"
    ));
    let p = TestProject::new();
    for e in walkdir::WalkDir::new(&src).follow_links(true) {
        let e = e.unwrap();
        let to = p.root().join(e.path().strip_prefix(&src).unwrap());
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&to).unwrap();
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
    // Unpin the LoRA in the registry; the lock pins it instead.
    let reg = p.root().join("stdlib/models.kdl");
    let text = std::fs::read_to_string(&reg).unwrap();
    let line = text.lines().find(|l| l.contains("\"tiny-lora\"")).unwrap();
    let unpinned = line[..line.find(" sha256=").unwrap()].to_string();
    std::fs::write(&reg, text.replace(line, &unpinned)).unwrap();
    let lora = std::fs::read(p.root().join("models/tiny-lora.safetensors")).unwrap();
    let wrong = "ab".repeat(32);
    p.write(
        "models.lock",
        &format!("model \"tiny-lora\" sha256=\"{wrong}\"\n"),
    );
    let r = p.run(&["build", "tiny"]);
    assert_ne!(r.code(), 0, "{}", r.stderr());
    assert!(
        r.stderr().contains("tiny-lora") && r.stderr().contains("pinned in models.lock"),
        "{}",
        r.stderr()
    );
    assert!(
        !p.root().join("cache/records").exists()
            || walkdir::WalkDir::new(p.root().join("cache/records"))
                .into_iter()
                .filter_map(|e| e.ok())
                .all(|e| !e.file_type().is_file()),
        "nothing ran"
    );
    // With the real digest locked, `models verify` agrees.
    p.write(
        "models.lock",
        &format!("model \"tiny-lora\" sha256=\"{}\"\n", sha(&lora)),
    );
    let v = p.run(&["models", "verify"]);
    assert_eq!(v.code(), 0, "{}{}", v.stdout(), v.stderr());
    assert!(v.stdout().contains("ok       tiny-lora"), "{}", v.stdout());
}
