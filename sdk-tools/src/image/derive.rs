//! Everything an image build would otherwise take from a clock or a random
//! source — the timestamp, the verity salt and uuid, filesystem and
//! partition uuids — derived from one digest of the inputs, so the same
//! inputs give the same bytes.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Namespace for the name-based (v5) uuids of this project.
const NAMESPACE: Uuid = Uuid::from_u128(0x5d4b_7c1e_93a0_4f62_8b0e_6a1d_2c3f_4e50);

/// The inputs of one build, hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seed {
    pub digest: [u8; 32],
    /// Seconds since the epoch for every timestamp in the image.
    pub epoch: u64,
}

/// Read `SOURCE_DATE_EPOCH` from the environment; `Ok(None)` when unset.
pub fn env_epoch() -> Result<Option<u64>, String> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map(Some).map_err(|_| {
            format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds; unset it or set e.g. SOURCE_DATE_EPOCH=1700000000")
        }),
        _ => Ok(None),
    }
}

impl Seed {
    /// Combine the tree digest with the other inputs (board, layout,
    /// versions, options). `epoch` is SOURCE_DATE_EPOCH or, by default,
    /// the newest modification time among the inputs.
    pub fn new(parts: &[&[u8]], epoch: u64) -> Seed {
        let mut h = Sha256::new();
        for p in parts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
        h.update(epoch.to_le_bytes());
        Seed {
            digest: h.finalize().into(),
            epoch,
        }
    }

    fn sub(&self, purpose: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.digest);
        h.update(purpose.as_bytes());
        h.finalize().into()
    }

    /// A salt for `purpose` (the verity salt is 32 bytes, like veritysetup's
    /// default).
    pub fn salt(&self, purpose: &str) -> [u8; 32] {
        self.sub(purpose)
    }

    /// A uuid for `purpose` (filesystem, partition, verity superblock).
    pub fn uuid(&self, purpose: &str) -> Uuid {
        Uuid::new_v5(&NAMESPACE, &self.sub(purpose))
    }

    pub fn hex(&self) -> String {
        hex::encode(self.digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inputs_same_values_different_purposes_differ() {
        let a = Seed::new(&[b"tree", b"board"], 5);
        let b = Seed::new(&[b"tree", b"board"], 5);
        assert_eq!(a, b);
        assert_eq!(a.uuid("usr"), b.uuid("usr"));
        assert_ne!(a.uuid("usr"), a.uuid("root"));
        assert_ne!(
            a.salt("verity"),
            Seed::new(&[b"tree", b"board"], 6).salt("verity")
        );
        // Length-prefixed: moving a byte between parts changes the seed.
        assert_ne!(Seed::new(&[b"ab", b"c"], 0), Seed::new(&[b"a", b"bc"], 0));
    }
}
