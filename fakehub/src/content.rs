//! File contents served by the fake hub.
//!
//! Benchmarks download 1 GiB attachments (PROTOCOL §4 "Files up to 1 Go", §9 "stream them"),
//! so generated content is position-addressable: any byte range can be produced on demand
//! without ever holding the whole file in memory.

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use std::fmt;

/// Size of the pieces used when streaming or hashing generated content.
pub(crate) const CHUNK: usize = 64 * 1024;

/// What a file contains.
#[derive(Clone, PartialEq, Eq)]
pub enum Content {
    /// Literal bytes (small files, uploads kept for comparison).
    Bytes(Vec<u8>),
    /// Deterministic pseudo-random bytes, `size` long, derived from `seed`.
    /// Produced in chunks on demand, never materialised whole.
    Generated { size: u64, seed: u64 },
}

impl fmt::Debug for Content {
    // A derived Debug would dump megabytes of bytes into test failure messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Content::Bytes(b) => write!(f, "Content::Bytes({} bytes)", b.len()),
            Content::Generated { size, seed } => {
                write!(f, "Content::Generated {{ size: {size}, seed: {seed} }}")
            }
        }
    }
}

/// splitmix64: a cheap, well-mixed function of (seed, word index), so that any 8-byte word of a
/// generated file can be computed independently of the others.
fn word(seed: u64, index: u64) -> u64 {
    let mut z = seed
        .wrapping_mul(0xD6E8_FEB8_6659_FD93)
        .wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Content {
    /// Number of bytes of the content.
    pub fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Generated { size, .. } => *size,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the bytes at `offset..` into `buf`; returns how many were written
    /// (fewer than `buf.len()` only at the end of the content).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> usize {
        let len = self.len();
        if offset >= len {
            return 0;
        }
        let n = buf
            .len()
            .min(usize::try_from(len - offset).unwrap_or(usize::MAX));
        match self {
            Content::Bytes(b) => {
                let start = offset as usize;
                buf[..n].copy_from_slice(&b[start..start + n]);
            }
            Content::Generated { seed, .. } => {
                let buf = &mut buf[..n];
                // An unaligned head, then whole words (the hot path when streaming), then a tail.
                let head = ((8 - offset % 8) % 8).min(n as u64) as usize;
                if head > 0 {
                    let w = word(*seed, offset / 8).to_le_bytes();
                    let within = (offset % 8) as usize;
                    buf[..head].copy_from_slice(&w[within..within + head]);
                }
                let mut index = (offset + head as u64) / 8;
                let mut words = buf[head..].chunks_exact_mut(8);
                for out in &mut words {
                    out.copy_from_slice(&word(*seed, index).to_le_bytes());
                    index += 1;
                }
                let tail = words.into_remainder();
                let len = tail.len();
                tail.copy_from_slice(&word(*seed, index).to_le_bytes()[..len]);
            }
        }
        n
    }

    /// SHA-256 of the whole content, computed chunk by chunk.
    pub fn sha256(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        match self {
            Content::Bytes(b) => h.update(b),
            Content::Generated { .. } => {
                let mut buf = vec![0u8; CHUNK];
                let mut off = 0u64;
                loop {
                    let n = self.read_at(off, &mut buf);
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                    off += n as u64;
                }
            }
        }
        h.finalize().into()
    }

    /// Lower-case hex SHA-256, as `sha256sum` prints it (the client's SHA256SUMS).
    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256())
    }

    /// The `digest` header value HubEE sends: base64(SHA-256) [OAS 1.2.7, PROTOCOL §3].
    pub fn digest_b64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.sha256())
    }

    /// The whole content as a vector, for tests comparing small files.
    ///
    /// # Panics
    /// If the content is larger than 256 MiB: use `sha256_hex` for big ones.
    pub fn bytes_for_test(&self) -> Vec<u8> {
        let len = self.len();
        assert!(
            len <= 256 * 1024 * 1024,
            "bytes_for_test on {len} bytes: compare sha256_hex() instead"
        );
        let mut v = vec![0u8; len as usize];
        self.read_at(0, &mut v);
        v
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_content_is_position_addressable() {
        let c = Content::Generated {
            size: 1000,
            seed: 7,
        };
        let whole = c.bytes_for_test();
        assert_eq!(whole.len(), 1000);
        let mut part = vec![0u8; 13];
        assert_eq!(c.read_at(501, &mut part), 13);
        assert_eq!(&part[..], &whole[501..514]);
        let mut tail = vec![0u8; 50];
        assert_eq!(c.read_at(990, &mut tail), 10);
        assert_eq!(&tail[..10], &whole[990..]);
        // Every alignment of start and length agrees with the whole.
        for start in 0..20u64 {
            for len in 0..20usize {
                let mut b = vec![0u8; len];
                let got = c.read_at(start, &mut b);
                assert_eq!(&b[..got], &whole[start as usize..start as usize + len]);
            }
        }
        assert_eq!(c.sha256_hex(), hex(&Sha256::digest(&whole)));
        let other = Content::Generated {
            size: 1000,
            seed: 8,
        };
        assert_ne!(other.bytes_for_test(), whole);
    }
}
