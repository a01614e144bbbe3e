//! Signed releases in minisign's format (https://jedisct1.github.io/minisign/), so
//! `minisign -Vm SHA256SUMS -p KEY.pub` checks them with no effectc installed.
//!
//! - Public key: `base64("Ed" ‖ key id (8) ‖ Ed25519 public key (32))`.
//! - Secret key: `base64("Ed" ‖ KDF ‖ "B2" ‖ salt (32) ‖ opslimit ‖ memlimit ‖ key id ‖
//!   secret key (64) ‖ checksum (32))`. effectc reads unencrypted keys only (KDF `\0\0`,
//!   as `minisign -G -W` and `effectc release keygen` write them): a CI secret store
//!   already guards the file, and a password prompt cannot run in CI.
//! - Signature: `"ED" ‖ key id ‖ Ed25519(BLAKE2b-512(file))` (the prehashed mode), then
//!   a trusted comment and a global signature, Ed25519(signature ‖ trusted comment).
//!
//! Ed25519 is deterministic and the trusted comment holds no time, so signing the same
//! SHA256SUMS with the same key gives the same `.minisig`.

use base64::Engine;
use blake2::Digest as _;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use std::path::Path;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub struct SecretKey {
    key_id: [u8; 8],
    signing: SigningKey,
}

pub struct PublicKey {
    key_id: [u8; 8],
    verifying: VerifyingKey,
}

/// The key id as minisign prints it (little-endian, upper-case hex).
fn key_id_hex(id: &[u8; 8]) -> String {
    format!("{:016X}", u64::from_le_bytes(*id))
}

/// The base64 line of a minisign file: the first line that is not a comment.
fn payload(text: &str, what: &str) -> Result<Vec<u8>, String> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
        .ok_or_else(|| format!("no {what} in it"))?;
    B64.decode(line)
        .map_err(|e| format!("its {what} is not base64: {e}"))
}

fn checksum(key_id: &[u8; 8], sk: &[u8; 64]) -> [u8; 32] {
    let mut h = blake2::Blake2b::<blake2::digest::consts::U32>::new();
    h.update(b"Ed");
    h.update(key_id);
    h.update(sk);
    h.finalize().into()
}

impl SecretKey {
    /// A fresh key from the OS's random source.
    pub fn generate() -> Result<SecretKey, String> {
        let mut seed = [0u8; 32];
        let mut key_id = [0u8; 8];
        getrandom::getrandom(&mut seed)
            .and_then(|_| getrandom::getrandom(&mut key_id))
            .map_err(|e| format!("no random numbers from the OS: {e}"))?;
        Ok(SecretKey {
            key_id,
            signing: SigningKey::from_bytes(&seed),
        })
    }

    pub fn load(path: &Path) -> Result<SecretKey, String> {
        let fail = |m: String| format!("{}: {m}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let b = payload(&text, "secret key").map_err(fail)?;
        if b.len() != 158 || &b[0..2] != b"Ed" || &b[4..6] != b"B2" {
            return Err(fail(
                "not a minisign Ed25519 secret key (make one with `effectc release keygen` or `minisign -G -W`)"
                    .into(),
            ));
        }
        match &b[2..4] {
            [0, 0] => {}
            b"Sc" => {
                return Err(fail(
                    "a password-protected (scrypt) minisign key; effectc signs with unencrypted keys \
                     only: make one with `effectc release keygen` or `minisign -G -W` and keep it in \
                     the CI's secret store"
                        .into(),
                ))
            }
            _ => return Err(fail("an unknown key-derivation in this minisign key".into())),
        }
        let key_id: [u8; 8] = b[54..62].try_into().unwrap();
        let sk: [u8; 64] = b[62..126].try_into().unwrap();
        let chk: [u8; 32] = b[126..158].try_into().unwrap();
        // `minisign -W` leaves the checksum zero; any other must match.
        if chk != [0; 32] && chk != checksum(&key_id, &sk) {
            return Err(fail(
                "the key's checksum does not match: the file is damaged".into(),
            ));
        }
        let signing = SigningKey::from_bytes(sk[..32].try_into().unwrap());
        if signing.verifying_key().as_bytes()[..] != sk[32..] {
            return Err(fail(
                "the key's public half does not match its secret half".into(),
            ));
        }
        Ok(SecretKey { key_id, signing })
    }

    /// The file's text (unencrypted, as `minisign -G -W` writes it).
    pub fn to_file_text(&self) -> String {
        let mut sk = [0u8; 64];
        sk[..32].copy_from_slice(self.signing.as_bytes());
        sk[32..].copy_from_slice(self.signing.verifying_key().as_bytes());
        let mut b = Vec::with_capacity(158);
        b.extend_from_slice(b"Ed");
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(b"B2");
        b.extend_from_slice(&[0; 48]); // salt, opslimit, memlimit: no KDF
        b.extend_from_slice(&self.key_id);
        b.extend_from_slice(&sk);
        b.extend_from_slice(&checksum(&self.key_id, &sk));
        format!(
            "untrusted comment: minisign secret key {} (unencrypted, from effectc)\n{}\n",
            key_id_hex(&self.key_id),
            B64.encode(b)
        )
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            key_id: self.key_id,
            verifying: self.signing.verifying_key(),
        }
    }

    /// The `.minisig` text of `data`, named `file_name` in its trusted comment.
    pub fn sign(&self, data: &[u8], file_name: &str) -> String {
        let prehash = blake2::Blake2b512::digest(data);
        let sig = self.signing.sign(&prehash).to_bytes();
        let trusted = format!("file:{file_name}\tprehashed");
        let mut global_msg = sig.to_vec();
        global_msg.extend_from_slice(trusted.as_bytes());
        let global = self.signing.sign(&global_msg).to_bytes();
        let mut line = Vec::with_capacity(74);
        line.extend_from_slice(b"ED");
        line.extend_from_slice(&self.key_id);
        line.extend_from_slice(&sig);
        format!(
            "untrusted comment: signature from effectc secret key {}\n{}\ntrusted comment: {trusted}\n{}\n",
            key_id_hex(&self.key_id),
            B64.encode(line),
            B64.encode(global)
        )
    }
}

impl PublicKey {
    /// A public key file, or the key itself (the base64 line `minisign -P` takes).
    pub fn load(arg: &str) -> Result<PublicKey, String> {
        let path = Path::new(arg);
        let (text, name) = match std::fs::read_to_string(path) {
            Ok(t) => (t, path.display().to_string()),
            // Base64 may hold '/', so a key is told from a path by decoding to 42 bytes.
            Err(_) if B64.decode(arg.trim()).is_ok_and(|b| b.len() == 42) => {
                (arg.to_string(), "the key given".to_string())
            }
            Err(e) => return Err(format!("{arg}: {e}")),
        };
        let fail = |m: String| format!("{name}: {m}");
        let b = payload(&text, "public key").map_err(fail)?;
        if b.len() != 42 || &b[0..2] != b"Ed" {
            return Err(fail("not a minisign Ed25519 public key".into()));
        }
        let verifying = VerifyingKey::from_bytes(b[10..42].try_into().unwrap())
            .map_err(|e| fail(format!("not a valid Ed25519 key: {e}")))?;
        Ok(PublicKey {
            key_id: b[2..10].try_into().unwrap(),
            verifying,
        })
    }

    pub fn to_file_text(&self) -> String {
        let mut b = b"Ed".to_vec();
        b.extend_from_slice(&self.key_id);
        b.extend_from_slice(self.verifying.as_bytes());
        format!(
            "untrusted comment: minisign public key {}\n{}\n",
            key_id_hex(&self.key_id),
            B64.encode(b)
        )
    }

    /// Checks a `.minisig` over `data`: the key id, the signature (prehashed `ED` or
    /// legacy `Ed`), then the global signature over the trusted comment. Ok: the
    /// trusted comment.
    pub fn verify(&self, data: &[u8], minisig: &str) -> Result<String, String> {
        let mut lines = minisig.lines().map(str::trim_end);
        let bad = || "not a minisign signature file".to_string();
        let _untrusted = lines
            .next()
            .filter(|l| l.starts_with("untrusted comment:"))
            .ok_or_else(bad)?;
        let sig_line = B64
            .decode(lines.next().ok_or_else(bad)?)
            .map_err(|_| bad())?;
        let trusted = lines
            .next()
            .and_then(|l| l.strip_prefix("trusted comment: "))
            .ok_or_else(bad)?;
        let global = B64
            .decode(lines.next().ok_or_else(bad)?)
            .map_err(|_| bad())?;
        if sig_line.len() != 74 || global.len() != 64 {
            return Err(bad());
        }
        if sig_line[2..10] != self.key_id {
            return Err(format!(
                "signed with key {}, not with this key ({})",
                key_id_hex(sig_line[2..10].try_into().unwrap()),
                key_id_hex(&self.key_id)
            ));
        }
        let sig = Signature::from_bytes(sig_line[10..74].try_into().unwrap());
        let ok = match &sig_line[0..2] {
            b"ED" => self
                .verifying
                .verify(&blake2::Blake2b512::digest(data), &sig),
            b"Ed" => self.verifying.verify(data, &sig),
            _ => return Err("an unknown signature algorithm".into()),
        };
        ok.map_err(|_| "the signature does not match the file: it changed since it was signed, or another key signed it".to_string())?;
        let mut global_msg = sig_line[10..74].to_vec();
        global_msg.extend_from_slice(trusted.as_bytes());
        let global = Signature::from_bytes(global.as_slice().try_into().unwrap());
        self.verifying.verify(&global_msg, &global).map_err(|_| {
            "the trusted comment's signature does not match: it was edited".to_string()
        })?;
        Ok(trusted.to_string())
    }
}

/// Everything `release verify` found wrong, one line each; empty: the release is whole.
pub fn verify_release(dir: &Path, key: &PublicKey) -> Result<Vec<String>, String> {
    let sums_path = dir.join("SHA256SUMS");
    let sig_path = dir.join("SHA256SUMS.minisig");
    let sums = std::fs::read(&sums_path).map_err(|e| format!("{}: {e}", sums_path.display()))?;
    let sig = std::fs::read_to_string(&sig_path).map_err(|e| {
        format!(
            "{}: {e} (was the release made with --sign?)",
            sig_path.display()
        )
    })?;
    let mut problems = Vec::new();
    if let Err(e) = key.verify(&sums, &sig) {
        // Nothing in an unsigned list can be trusted: stop here.
        return Ok(vec![format!("{}: {e}", sig_path.display())]);
    }
    let text = String::from_utf8_lossy(&sums);
    let mut listed = std::collections::BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let Some((hex, name)) = line.split_once("  ") else {
            problems.push(format!(
                "{} line {}: not `SHA256  FILE`",
                sums_path.display(),
                n + 1
            ));
            continue;
        };
        listed.insert(name.to_string());
        let path = dir.join(name);
        match crate::digest::Digest::of_file(&path) {
            Ok(d) if d.hex() == hex => {}
            Ok(d) => problems.push(format!(
                "{name}: hashes to {}, SHA256SUMS says {hex}",
                d.hex()
            )),
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    // A bundle beside the list but not in it was not signed.
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut extra: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tar.gz") && !listed.contains(n))
            .collect();
        extra.sort();
        for name in extra {
            problems.push(format!("{name}: not in SHA256SUMS, so not signed"));
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_with_its_key_and_not_after_a_change_or_with_another_key() {
        let key = SecretKey::generate().unwrap();
        let data = b"abc  lego-1.0.tar.gz\n";
        let sig = key.sign(data, "SHA256SUMS");
        assert_eq!(sig, key.sign(data, "SHA256SUMS"), "deterministic");
        let public = PublicKey::load(key.public().to_file_text().lines().nth(1).unwrap()).unwrap();
        assert_eq!(
            public.verify(data, &sig).unwrap(),
            "file:SHA256SUMS\tprehashed"
        );
        assert!(public.verify(b"abd  lego-1.0.tar.gz\n", &sig).is_err());
        let other = SecretKey::generate().unwrap().public();
        assert!(other
            .verify(data, &sig)
            .unwrap_err()
            .contains("not with this key"));
        let edited = sig.replace("prehashed", "prehashed, trust me");
        assert!(public
            .verify(data, &edited)
            .unwrap_err()
            .contains("trusted comment"));
    }

    #[test]
    fn a_key_file_round_trips_and_damage_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, key.to_file_text()).unwrap();
        let back = SecretKey::load(&path).unwrap();
        assert_eq!(back.signing.as_bytes(), key.signing.as_bytes());
        let mut text = key.to_file_text();
        let line = text.lines().nth(1).unwrap().to_string();
        let mut b = B64.decode(&line).unwrap();
        b[100] ^= 1;
        text = text.replace(&line, &B64.encode(&b));
        std::fs::write(&path, text).unwrap();
        assert!(SecretKey::load(&path).is_err());
        // minisign's default, a password-protected key: refused, naming what to use.
        let mut b = B64
            .decode(key.to_file_text().lines().nth(1).unwrap())
            .unwrap();
        b[2..4].copy_from_slice(b"Sc");
        std::fs::write(&path, format!("untrusted comment: x\n{}\n", B64.encode(&b))).unwrap();
        let e = SecretKey::load(&path).err().unwrap();
        assert!(
            e.contains("password-protected") && e.contains("minisign -G -W"),
            "{e}"
        );
    }
}
