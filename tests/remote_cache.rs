//! The shared cache over the Bazel remote-cache HTTP protocol, against a real nginx with
//! WebDAV PUT on loopback (Debian's `nginx`; `make test` installs it), and sharded builds
//! that meet in it.

mod common;

use common::nginx::{free_port, Nginx};
use common::{Run, TestProject, SMALL_BRICK};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;

/// The job-engine variables `--shard auto` reads, cleared so a test run inside a Slurm
/// job or a sharded CI runner sees only what the test sets.
const ENGINE_VARS: [&str; 7] = [
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
    "JOB_COMPLETION_INDEX",
    "TEST_SHARD_INDEX",
    "TEST_TOTAL_SHARDS",
];

/// effectc with these environment variables (and no remote settings from the caller's).
fn run_env(p: &TestProject, args: &[&str], vars: &[(&str, &str)]) -> Run {
    let mut cmd = p.command(args);
    for v in ENGINE_VARS.iter().chain(&[
        "EFFECTC_REMOTE_CACHE",
        "EFFECTC_REMOTE_HEADER",
        "EFFECTC_REMOTE_UPLOAD",
        "SLURM_ARRAY_TASK_STEP",
    ]) {
        cmd.env_remove(v);
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let output = cmd.output().expect("run effectc");
    let events = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    Run { output, events }
}

/// nginx serving a temp folder with WebDAV PUT, as a team's remote cache would.
fn start_nginx() -> Nginx {
    Nginx::start(
        "access_log off;\n  client_max_body_size 0;",
        "location / { dav_methods PUT; create_full_put_path on; dav_access user:rw group:r all:r; }",
    )
}

impl Nginx {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/effectc", self.port)
    }

    fn files_under(&self, sub: &str) -> u64 {
        walkdir::WalkDir::new(self.dir.path().join("data/effectc").join(sub))
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_file())
            .count() as u64
    }
}

fn small_with_target() -> String {
    let end = SMALL_BRICK.rfind('}').unwrap();
    format!(
        "{}    target \"onnx\" quantize=\"fp32\"\n{}",
        &SMALL_BRICK[..end],
        &SMALL_BRICK[end..]
    )
}

/// `effectc build --json small` with a cache folder and extra flags; must succeed.
fn build(p: &TestProject, cache: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["build", "--json", "--cache", cache.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push("small");
    let r = p.run(&args);
    assert_eq!(r.code(), 0, "{}\n{}", r.stderr(), r.stdout());
    r
}

fn bundle(p: &TestProject) -> Vec<u8> {
    std::fs::read(p.root().join("out/small/bundle-bundle.tar.gz")).unwrap()
}

/// The bundle's files by name (to say which one differs when the bytes do).
fn shipped(p: &TestProject) -> std::collections::BTreeMap<String, Vec<u8>> {
    let file = std::fs::File::open(p.root().join("out/small/bundle-bundle.tar.gz")).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut files = std::collections::BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        files.insert(name, bytes);
    }
    assert!(
        files.contains_key("models/onnx/model.onnx"),
        "{:?}",
        files.keys()
    );
    files
}

#[test]
fn an_empty_cache_builds_everything_from_the_shared_cache_without_running_a_stage() {
    let server = start_nginx();
    let p = TestProject::new();
    p.recipe("small", &small_with_target());
    let url = server.url();
    let first_cache = tempfile::tempdir().unwrap();
    let first = build(&p, first_cache.path(), &["--remote-cache", &url]);
    assert!(first.ran() > 0);
    assert_eq!(
        server.files_under("ac"),
        first.ran(),
        "one record per stage run"
    );
    assert!(server.files_under("cas") > 0);
    let bundle_first = bundle(&p);

    let empty = tempfile::tempdir().unwrap();
    let second = build(&p, empty.path(), &["--remote-cache", &url]);
    assert_eq!(second.ran(), 0, "ran: {:?}", second.ran_stages());
    assert_eq!(second.cached(), first.ran() + first.cached());
    assert!(bundle(&p) == bundle_first, "the same bundle, fetched");
    // Fetched results are verified into the local cache: it now builds alone.
    let offline = build(&p, empty.path(), &[]);
    assert_eq!(offline.ran(), 0);
    let verify = p.run(&["cache", "verify", "--cache", empty.path().to_str().unwrap()]);
    assert_eq!(verify.code(), 0, "{}", verify.stdout());
}

#[test]
fn a_dead_or_garbage_server_is_reported_and_the_build_goes_on_locally() {
    let p = TestProject::new();
    p.recipe("small", SMALL_BRICK);

    // Nothing listens on this port.
    let dead = format!("http://127.0.0.1:{}/effectc", free_port());
    let cache = tempfile::tempdir().unwrap();
    let r = build(&p, cache.path(), &["--remote-cache", &dead]);
    assert!(r.ran() > 0);
    assert!(
        r.stderr().contains("warning: remote cache"),
        "{}",
        r.stderr()
    );
    assert_eq!(
        r.stderr().matches("warning: remote cache").count(),
        1,
        "reported once, then the remote is off:\n{}",
        r.stderr()
    );

    // A server that answers 200 with garbage to everything.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 65536];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\ngarbage",
            );
        }
    });
    let cache = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/effectc");
    let r = build(&p, cache.path(), &["--remote-cache", &url]);
    assert!(r.ran() > 0, "everything built locally");
    assert!(r.stderr().contains("not a stage record"), "{}", r.stderr());
    let verify = p.run(&["cache", "verify", "--cache", cache.path().to_str().unwrap()]);
    assert_eq!(verify.code(), 0, "no garbage reached the local cache");
}

#[test]
fn cache_push_and_pull_move_one_effect_explicitly() {
    let server = start_nginx();
    let p = TestProject::new();
    p.recipe("small", SMALL_BRICK);
    let local = tempfile::tempdir().unwrap();
    let built = build(&p, local.path(), &[]);
    let url = server.url();
    let cache_arg = |d: &Path| d.to_str().unwrap().to_string();

    let push = p.run(&[
        "cache",
        "push",
        "small",
        "--cache",
        &cache_arg(local.path()),
        "--remote-cache",
        &url,
    ]);
    assert_eq!(push.code(), 0, "{}", push.stderr());
    let stages = built.ran() + built.cached();
    assert!(
        push.stdout().contains(&format!("{stages} stage(s) pushed")),
        "{}",
        push.stdout()
    );

    let other = tempfile::tempdir().unwrap();
    let pull = p.run(&[
        "cache",
        "pull",
        "small",
        "--cache",
        &cache_arg(other.path()),
        "--remote-cache",
        &url,
    ]);
    assert_eq!(pull.code(), 0, "{}", pull.stderr());
    assert!(
        pull.stdout().contains(&format!("{stages} stage(s) pulled")),
        "{}",
        pull.stdout()
    );
    let offline = build(&p, other.path(), &[]);
    assert_eq!(offline.ran(), 0, "{:?}", offline.ran_stages());
}

#[test]
fn two_shards_and_a_final_build_ship_what_one_build_ships() {
    let server = start_nginx();
    let p = TestProject::new();
    p.recipe("small", &small_with_target());
    let url = server.url();

    let whole_cache = tempfile::tempdir().unwrap();
    build(&p, whole_cache.path(), &[]);
    let whole = shipped(&p);
    let whole_bytes = bundle(&p);

    let mut per_item = 0u64;
    // Shard 0 by hand, shard 1 as task 2 of a Slurm array `--array=1-2` (`--shard auto`).
    for shard in ["0/2", "auto"] {
        let cache = tempfile::tempdir().unwrap();
        let mut args = vec!["build", "--json", "--cache", cache.path().to_str().unwrap()];
        args.extend_from_slice(&["--shard", shard, "--remote-cache", &url, "small"]);
        let r = run_env(
            &p,
            &args,
            &[
                ("SLURM_ARRAY_TASK_ID", "2"),
                ("SLURM_ARRAY_TASK_MIN", "1"),
                ("SLURM_ARRAY_TASK_MAX", "2"),
            ],
        );
        assert_eq!(r.code(), 0, "{}", r.stderr());
        if shard == "auto" {
            assert!(
                r.stderr().contains("shard 1/2 (from SLURM_ARRAY_TASK_ID)"),
                "{}",
                r.stderr()
            );
        }
        assert_eq!(r.ran_of_kind("train-teacher"), 0, "shards build items only");
        assert!(
            r.ran_of_kind("pairs") >= 3 - 1,
            "{shard}: {:?}",
            r.ran_stages()
        );
        per_item += r.ran();
    }
    assert_eq!(
        per_item,
        6 * 3,
        "every item's synthetic, crop and pairs stages, once"
    );

    let final_cache = tempfile::tempdir().unwrap();
    let last = build(&p, final_cache.path(), &["--remote-cache", &url]);
    assert_eq!(last.ran_of_kind("pairs"), 0);
    assert_eq!(last.ran_of_kind("crop"), 0);
    assert_eq!(last.ran_of_kind("train-teacher"), 1);
    let sharded = shipped(&p);
    assert_eq!(
        sharded.keys().collect::<Vec<_>>(),
        whole.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &whole {
        assert!(
            sharded[name] == *bytes,
            "{name} differs from the unsharded build's:\n{}\n{}",
            String::from_utf8_lossy(&sharded[name]),
            String::from_utf8_lossy(bytes)
        );
    }
    // Measurements live beside the bundle, so the tarballs agree byte for byte.
    assert!(
        bundle(&p) == whole_bytes,
        "the sharded build's bundle.tar.gz differs"
    );

    let bad = p.run(&["build", "--shard", "2/2", "small"]);
    assert_eq!(bad.code(), 2);
    assert!(bad.stderr().contains("0 <= I < N"), "{}", bad.stderr());
}

#[test]
fn shard_auto_without_a_job_engine_names_the_variables_it_reads() {
    let p = TestProject::new();
    p.recipe("small", SMALL_BRICK);
    let r = run_env(&p, &["build", "--shard", "auto", "small"], &[]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    for v in [
        "SLURM_ARRAY_TASK_ID",
        "JOB_COMPLETION_INDEX",
        "TEST_SHARD_INDEX",
        "TEST_TOTAL_SHARDS",
    ] {
        assert!(r.stderr().contains(v), "{}", r.stderr());
    }
    // A Kubernetes pod is not told the completion count.
    let r = run_env(
        &p,
        &["build", "--shard", "auto", "small"],
        &[("JOB_COMPLETION_INDEX", "3")],
    );
    assert_eq!(r.code(), 2);
    assert!(r.stderr().contains("--shard auto/N"), "{}", r.stderr());
    let r = run_env(
        &p,
        &["build", "--shard", "auto/4", "small"],
        &[("TEST_SHARD_INDEX", "1"), ("TEST_TOTAL_SHARDS", "3")],
    );
    assert_eq!(r.code(), 2);
    assert!(r.stderr().contains("says 3 shards"), "{}", r.stderr());
}

/// nginx that answers only requests carrying `Authorization: Bearer <token>`, logging
/// every request (method and path) to `<dir>/access.log`.
fn start_nginx_wanting(token: &str) -> Nginx {
    Nginx::start(
        "log_format m '$request_method $uri $status';\n  access_log {dir}/access.log m;\n  client_max_body_size 0;",
        &format!(
            "location / {{ if ($http_authorization != \"Bearer {token}\") {{ return 401; }} \
             dav_methods PUT; create_full_put_path on; dav_access user:rw group:r all:r; }}"
        ),
    )
}

/// nginx as start_nginx, logging every request to `<dir>/access.log`.
fn start_logged_nginx() -> Nginx {
    Nginx::start(
        "log_format m '$request_method $uri $status';\n  access_log {dir}/access.log m;\n  client_max_body_size 0;",
        "location / { dav_methods PUT; create_full_put_path on; dav_access user:rw group:r all:r; }",
    )
}

fn access_log(server: &Nginx) -> String {
    std::fs::read_to_string(server.dir.path().join("access.log")).unwrap_or_default()
}

/// Every byte effectc left behind: its cache and `out/`.
fn everything_written(dirs: &[&Path]) -> Vec<u8> {
    let mut all = Vec::new();
    for d in dirs {
        for e in walkdir::WalkDir::new(d).into_iter().filter_map(|e| e.ok()) {
            if e.file_type().is_file() {
                all.extend(std::fs::read(e.path()).unwrap_or_default());
            }
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn a_cache_that_wants_credentials_gets_them_from_a_header_that_is_never_shown() {
    const TOKEN: &str = "s3cret-7f3a9c";
    let server = start_nginx_wanting(TOKEN);
    let p = TestProject::new();
    p.recipe("small", SMALL_BRICK);
    let url = server.url();

    // Without credentials: one message naming the option, and the build goes on locally.
    let none = tempfile::tempdir().unwrap();
    let r = run_env(
        &p,
        &[
            "build",
            "--json",
            "--cache",
            none.path().to_str().unwrap(),
            "--remote-cache",
            &url,
            "small",
        ],
        &[],
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(r.ran() > 0);
    assert_eq!(r.stderr().matches("HTTP 401").count(), 1, "{}", r.stderr());
    assert!(r.stderr().contains("--remote-header"), "{}", r.stderr());
    println!(
        "without credentials: {}",
        r.stderr().lines().find(|l| l.contains("401")).unwrap()
    );
    assert_eq!(server.files_under("ac"), 0);

    // CI: the token from a variable named on the command line; it uploads.
    let ci = tempfile::tempdir().unwrap();
    let r = run_env(
        &p,
        &[
            "build",
            "--json",
            "--cache",
            ci.path().to_str().unwrap(),
            "--remote-cache",
            &url,
            "--remote-header",
            "Authorization: Bearer ${CACHE_TOKEN}",
            "small",
        ],
        &[("CACHE_TOKEN", TOKEN)],
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(!r.stderr().contains("warning"), "{}", r.stderr());
    assert_eq!(
        server.files_under("ac"),
        r.ran(),
        "one record per stage run"
    );
    let mut seen = r.output.stdout.clone();
    seen.extend(&r.output.stderr);

    // A teammate: the header in effectc.kdl, read from a file, so nothing secret is committed.
    let secret_dir = tempfile::tempdir().unwrap();
    let header_file = secret_dir.path().join("cache-headers");
    std::fs::write(&header_file, format!("Authorization: Bearer {TOKEN}\n")).unwrap();
    p.write(
        "effectc.kdl",
        &format!(
            "remote-cache \"{url}\"\nremote-header \"@{}\"\n",
            header_file.display()
        ),
    );
    let mate = tempfile::tempdir().unwrap();
    let r = run_env(
        &p,
        &[
            "build",
            "--json",
            "--cache",
            mate.path().to_str().unwrap(),
            "small",
        ],
        &[],
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(
        r.ran(),
        0,
        "every stage from the shared cache: {}",
        r.stderr()
    );
    seen.extend(&r.output.stdout);
    seen.extend(&r.output.stderr);

    // The environment's header, with a wrong token: refused, and the message names the
    // header, never its value.
    let wrong = tempfile::tempdir().unwrap();
    let r = run_env(
        &p,
        &[
            "build",
            "--json",
            "--cache",
            wrong.path().to_str().unwrap(),
            "small",
        ],
        &[(
            "EFFECTC_REMOTE_HEADER",
            "Authorization: Bearer wrong-c0ffee",
        )],
    );
    assert_eq!(r.code(), 0);
    assert!(
        r.stderr().contains("Authorization were sent and refused"),
        "{}",
        r.stderr()
    );
    assert!(!r.stderr().contains("wrong-c0ffee") && !r.stdout().contains("wrong-c0ffee"));

    // A malformed header is refused without echoing what it holds.
    let r = run_env(
        &p,
        &[
            "plan",
            "small",
            "--remote-header",
            "Authorization Bearer hunter2",
        ],
        &[],
    );
    assert_eq!(r.code(), 2);
    assert!(
        r.stderr().contains("--remote-header #1") && !r.stderr().contains("hunter2"),
        "{}",
        r.stderr()
    );

    seen.extend(everything_written(&[
        ci.path(),
        mate.path(),
        &p.root().join("out"),
    ]));
    assert!(seen.len() > 1000);
    assert!(
        !contains(&seen, TOKEN),
        "the token appears in output, events, records or out/"
    );
}

#[test]
fn a_read_only_client_reads_the_shared_cache_and_never_writes_it() {
    let server = start_logged_nginx();
    let p = TestProject::new();
    p.recipe("small", SMALL_BRICK);
    let url = server.url();
    let puts = |server: &Nginx| {
        access_log(server)
            .lines()
            .filter(|l| l.starts_with("PUT"))
            .count()
    };

    // A laptop with uploads off in effectc.kdl: builds everything, writes nothing.
    p.write(
        "effectc.kdl",
        &format!("remote-cache \"{url}\"\nremote-upload #false\n"),
    );
    let laptop = tempfile::tempdir().unwrap();
    let r = run_env(
        &p,
        &[
            "build",
            "--json",
            "--cache",
            laptop.path().to_str().unwrap(),
            "small",
        ],
        &[],
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(r.ran() > 0);
    assert!(
        access_log(&server).contains("GET /effectc/ac/"),
        "it did read"
    );
    assert_eq!(puts(&server), 0, "{}", access_log(&server));
    assert_eq!(server.files_under("ac") + server.files_under("cas"), 0);
    // Asked to push explicitly, it says why not.
    let push = run_env(
        &p,
        &[
            "cache",
            "push",
            "small",
            "--cache",
            laptop.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(push.code(), 2);
    assert!(
        push.stderr().contains("--remote-upload=true"),
        "{}",
        push.stderr()
    );
    assert_eq!(puts(&server), 0);

    // CI overrides the file and writes.
    let ci = tempfile::tempdir().unwrap();
    let r = run_env(
        &p,
        &[
            "build",
            "--json",
            "--remote-upload",
            "--cache",
            ci.path().to_str().unwrap(),
            "small",
        ],
        &[],
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(puts(&server) > 0);
    let after_ci = puts(&server);

    // Another read-only laptop (the environment says so) gets every stage from CI's work.
    p.write("effectc.kdl", &format!("remote-cache \"{url}\"\n"));
    let other = tempfile::tempdir().unwrap();
    let r = run_env(
        &p,
        &[
            "build",
            "--json",
            "--cache",
            other.path().to_str().unwrap(),
            "small",
        ],
        &[("EFFECTC_REMOTE_UPLOAD", "false")],
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.ran(), 0);
    // A changed recipe runs stages locally, and still puts nothing.
    p.recipe("small", &SMALL_BRICK.replace("stud-size 4", "stud-size 6"));
    let r = run_env(
        &p,
        &[
            "build",
            "--json",
            "--remote-upload=false",
            "--cache",
            other.path().to_str().unwrap(),
            "small",
        ],
        &[],
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(r.ran() > 0);
    assert_eq!(puts(&server), after_ci, "a read-only client PUT something");
}

#[test]
fn tampered_answers_are_refused_with_a_warning_and_built_locally() {
    let server = start_nginx();
    let p = TestProject::new();
    p.recipe("small", SMALL_BRICK);
    let url = server.url();
    let ci = tempfile::tempdir().unwrap();
    let first = build(&p, ci.path(), &["--remote-cache", &url]);

    // The server's records, and which digests more than one of them names.
    let ac = server.dir.path().join("data/effectc/ac");
    let cas = server.dir.path().join("data/effectc/cas");
    let mut records: Vec<(std::path::PathBuf, serde_json::Value)> = std::fs::read_dir(&ac)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let v = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            (p, v)
        })
        .collect();
    records.sort_by(|a, b| a.1["stage_id"].as_str().cmp(&b.1["stage_id"].as_str()));
    let mut named = std::collections::BTreeMap::<String, usize>::new();
    for (_, r) in &records {
        for o in r["outputs"].as_object().unwrap().values() {
            *named
                .entry(o["digest"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    // Three per-item pairs records whose blobs no other record shares.
    let crops: Vec<&(std::path::PathBuf, serde_json::Value)> = records
        .iter()
        .filter(|(_, r)| r["stage_id"].as_str().unwrap().starts_with("pairs/"))
        .filter(|(_, r)| {
            let outs = r["outputs"].as_object().unwrap();
            !outs.is_empty()
                && outs
                    .values()
                    .all(|o| named[o["digest"].as_str().unwrap()] == 1)
        })
        .take(3)
        .collect();
    assert_eq!(
        crops.len(),
        3,
        "{:?}",
        records.iter().map(|r| &r.1["stage_id"]).collect::<Vec<_>>()
    );
    let first_output = |r: &serde_json::Value| {
        r["outputs"]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .clone()
    };

    // 1. A blob changed under its record: the output no longer hashes to what it names.
    let blob = cas.join(first_output(&crops[0].1)["digest"].as_str().unwrap());
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&blob, bytes).unwrap();
    // 2. Another stage's record under this key.
    std::fs::write(&crops[1].0, std::fs::read(&crops[2].0).unwrap()).unwrap();
    // 3. A record that gives its blob the wrong size.
    let mut rec = crops[2].1.clone();
    let name = rec["outputs"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let size = rec["outputs"][&name]["size_bytes"].as_u64().unwrap();
    rec["outputs"][&name]["size_bytes"] = (size + 1).into();
    std::fs::write(&crops[2].0, serde_json::to_vec(&rec).unwrap()).unwrap();

    let fresh = tempfile::tempdir().unwrap();
    let r = build(&p, fresh.path(), &["--remote-cache", &url]);
    let err = r.stderr();
    println!("{err}");
    assert!(
        err.contains("does not hash to the digest its record names"),
        "{err}"
    );
    assert!(err.contains("the record is for key"), "{err}");
    assert!(
        err.contains(&format!("is {size} bytes, its record says {}", size + 1)),
        "{err}"
    );
    assert_eq!(
        err.matches("building that stage locally").count(),
        3,
        "{err}"
    );
    let ran = r.ran_stages();
    for (_, c) in &crops {
        let id = c["stage_id"].as_str().unwrap();
        assert!(ran.iter().any(|s| s == id), "{id} built locally: {ran:?}");
    }
    assert!(r.ran() < first.ran(), "the rest came from the shared cache");
    let verify = p.run(&["cache", "verify", "--cache", fresh.path().to_str().unwrap()]);
    assert_eq!(
        verify.code(),
        0,
        "nothing tampered reached the local cache: {}",
        verify.stdout()
    );
}
