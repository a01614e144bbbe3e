//! The shared cache over the Bazel remote-cache HTTP protocol, against a real nginx with
//! WebDAV PUT on loopback (Debian's `nginx`; `make test` installs it), and sharded builds
//! that meet in it.

mod common;

use common::nginx::{free_port, Nginx};
use common::{Run, TestProject, SMALL_BRICK};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;

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
    for shard in ["0/2", "1/2"] {
        let cache = tempfile::tempdir().unwrap();
        let r = build(
            &p,
            cache.path(),
            &["--shard", shard, "--remote-cache", &url],
        );
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
