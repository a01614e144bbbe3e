//! Signed releases: `effectc release --sign KEY` writes SHA256SUMS.minisig in minisign's
//! format, Debian's `minisign -V` checks it (the independent check), and
//! `effectc release verify` refuses a changed tarball, a changed SHA256SUMS and another key.

mod common;

use common::{TestProject, SMALL_BRICK};
use std::path::Path;
use std::process::Command;

fn small_with_target() -> String {
    let end = SMALL_BRICK.rfind('}').unwrap();
    format!(
        "{}    target \"onnx\" quantize=\"fp32\"\n{}",
        &SMALL_BRICK[..end],
        &SMALL_BRICK[end..]
    )
}

fn minisign() -> &'static str {
    assert!(
        Command::new("minisign").arg("-v").output().is_ok(),
        "minisign not found: install Debian's `minisign` (make test does, through scripts/test-deps.sh)"
    );
    "minisign"
}

/// `minisign -Vm DIR/SHA256SUMS -p PUB`: (exit ok, what it printed).
fn minisign_verifies(dir: &Path, public: &Path) -> (bool, String) {
    let out = Command::new(minisign())
        .arg("-Vm")
        .arg(dir.join("SHA256SUMS"))
        .arg("-p")
        .arg(public)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = at.min(bytes.len() - 1);
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

/// `effectc release verify DIR --key PUBLIC` fails as the data's fault (exit 1), saying why.
fn verify_is_refused(p: &TestProject, dir: &str, public: &Path, why: &str) {
    let r = p.run(&["release", "verify", dir, "--key", public.to_str().unwrap()]);
    assert_eq!(r.code(), 1);
    assert!(r.stderr().contains(why), "{}", r.stderr());
}

#[test]
fn a_signed_release_verifies_with_minisign_and_effectc_and_any_change_is_refused() {
    let p = TestProject::new();
    p.recipe("small", &small_with_target());
    let keys = tempfile::tempdir().unwrap();
    let prefix = keys.path().join("team");

    let r = p.run(&["release", "keygen", "--out", prefix.to_str().unwrap()]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let (secret, public) = (prefix.with_extension("key"), prefix.with_extension("pub"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = p.run(&["release", "keygen", "--out", prefix.to_str().unwrap()]);
    assert_eq!(again.code(), 2, "never overwrites a key");

    let rel = p.root().join("rel");
    let r = p.run(&[
        "release",
        "small",
        "--out",
        "rel",
        "--sign",
        secret.to_str().unwrap(),
    ]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stderr(), r.stdout());
    assert!(rel.join("SHA256SUMS.minisig").is_file());

    // The independent check: Debian's minisign.
    let (ok, said) = minisign_verifies(&rel, &public);
    assert!(ok, "minisign refused effectc's signature: {said}");
    println!("minisign -V: {said}");
    let r = p.run(&[
        "release",
        "verify",
        "rel",
        "--key",
        public.to_str().unwrap(),
    ]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    println!("effectc release verify: {}", r.stdout());

    // A key minisign made (`minisign -G -W`: unencrypted) signs as well; the same
    // inputs give the same SHA256SUMS.
    let (mkey, mpub) = (keys.path().join("mini.key"), keys.path().join("mini.pub"));
    let made = Command::new(minisign())
        .args(["-G", "-W", "-s"])
        .arg(&mkey)
        .arg("-p")
        .arg(&mpub)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let r = p.run(&[
        "release",
        "small",
        "--out",
        "rel2",
        "--sign",
        mkey.to_str().unwrap(),
    ]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let rel2 = p.root().join("rel2");
    assert_eq!(
        std::fs::read(rel.join("SHA256SUMS")).unwrap(),
        std::fs::read(rel2.join("SHA256SUMS")).unwrap()
    );
    assert!(minisign_verifies(&rel2, &mpub).0);
    let r = p.run(&["release", "verify", "rel2", "--key", mpub.to_str().unwrap()]);
    assert_eq!(r.code(), 0, "{}", r.stderr());

    // Another key is refused, by both.
    verify_is_refused(&p, "rel", &mpub, "not with this key");
    assert!(!minisign_verifies(&rel, &mpub).0);

    // A changed byte in a tarball.
    let tampered = p.root().join("tampered-tar");
    copy_dir(&rel, &tampered);
    let tarball = std::fs::read_dir(&tampered)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .unwrap();
    flip_byte(&tarball, 100);
    let name = tarball.file_name().unwrap().to_string_lossy().into_owned();
    verify_is_refused(
        &p,
        "tampered-tar",
        &public,
        &format!("refused: {name}: hashes to"),
    );

    // A changed byte in SHA256SUMS.
    let tampered = p.root().join("tampered-sums");
    copy_dir(&rel, &tampered);
    flip_byte(&tampered.join("SHA256SUMS"), 3);
    verify_is_refused(&p, "tampered-sums", &public, "signature does not match");
    assert!(!minisign_verifies(&tampered, &public).0);

    // A bundle slipped in beside the list was never signed.
    let extra = p.root().join("extra");
    copy_dir(&rel, &extra);
    std::fs::write(extra.join("evil-1.0.tar.gz"), b"not signed").unwrap();
    verify_is_refused(&p, "extra", &public, "evil-1.0.tar.gz: not in SHA256SUMS");

    // A release without --sign leaves no stale signature behind.
    let r = p.run(&["release", "small", "--out", "rel"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(!rel.join("SHA256SUMS.minisig").exists());
}

#[test]
fn a_key_that_cannot_sign_fails_before_anything_builds() {
    let p = TestProject::new();
    p.recipe("small", &small_with_target());
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, "untrusted comment: nope\nAAAA\n").unwrap();
    let r = p.run(&[
        "release",
        "small",
        "--out",
        "rel",
        "--sign",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(r.code(), 2);
    assert!(r.stderr().contains("bad.key"), "{}", r.stderr());
    assert!(!p.root().join("cache").exists(), "nothing built");
}
