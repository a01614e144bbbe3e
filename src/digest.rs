//! SHA-256 content digests: the identity of every blob, source file and stage key.

use sha2::{Digest as _, Sha256};
use std::fmt;
use std::io::Read;
use std::path::Path;

/// A SHA-256 digest. Displays and serialises as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of_bytes(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// Streams the file through SHA-256 (model weights can be gigabytes).
    pub fn of_file(path: &Path) -> std::io::Result<Digest> {
        let mut file = std::fs::File::open(path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(Digest(hasher.finalize().into()))
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn parse(text: &str) -> Option<Digest> {
        let bytes = hex::decode(text).ok()?;
        Some(Digest(bytes.try_into().ok()?))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", &self.hex()[..12])
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Hex in JSON for people; 32 raw bytes in binary formats (the build snapshot).
        if s.is_human_readable() {
            s.serialize_str(&self.hex())
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            Digest::parse(&text)
                .ok_or_else(|| serde::de::Error::custom("expected 64 hex characters"))
        } else {
            let bytes = <Vec<u8>>::deserialize(d)?;
            Ok(Digest(bytes.try_into().map_err(|_| {
                serde::de::Error::custom("expected 32 bytes")
            })?))
        }
    }
}

/// Incremental hasher for stage keys. Every field is length-prefixed and tagged so two
/// different sequences of fields can never encode to the same bytes (uv's CacheKey habit).
pub struct KeyHasher(Sha256);

impl KeyHasher {
    pub fn new(domain: &str) -> KeyHasher {
        let mut h = KeyHasher(Sha256::new());
        h.str(domain);
        h
    }
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.update(v.to_le_bytes());
        self
    }
    pub fn digest(&mut self, d: &Digest) -> &mut Self {
        self.0.update(d.0);
        self
    }
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}
