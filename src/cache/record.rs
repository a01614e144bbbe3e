//! What the cache remembers about a stage run.

use crate::digest::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRef {
    pub digest: Digest,
    pub size_bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageRecord {
    pub key: Digest,
    pub stage_id: String,
    pub kind: String,
    pub effect: String,
    pub outputs: BTreeMap<String, OutputRef>,
    #[serde(default)]
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// Canonical params by recipe path, so `explain` can say which one changed.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Input name → content digest, for `explain`.
    #[serde(default)]
    pub inputs: BTreeMap<String, Digest>,
    pub duration_ms: u64,
    /// The same time in microseconds (0 in records of older versions): a per-item stage
    /// often takes under a millisecond, and the report sums thousands of them.
    #[serde(default)]
    pub duration_us: u64,
    pub finished_at_unix: u64,
    #[serde(default)]
    pub log: String,
}

/// The metric that marks a skipped item's record (its value: the reason). A metric, so
/// records, snapshots and the remote cache carry it without a format change.
pub const SKIPPED_METRIC: &str = "skipped";

impl StageRecord {
    /// How long the stage ran, in microseconds (from the millisecond figure for records
    /// of older versions).
    pub fn run_time_us(&self) -> u64 {
        if self.duration_us > 0 {
            self.duration_us
        } else {
            self.duration_ms.saturating_mul(1000)
        }
    }

    /// Why the stage skipped its item, when it did (such a record has no outputs).
    pub fn skipped(&self) -> Option<&str> {
        self.metrics.get(SKIPPED_METRIC).and_then(|v| v.as_str())
    }

    /// The in-memory record of a per-item stage not run because an earlier stage of its
    /// item skipped it: never stored, never keyed.
    pub fn skipped_by_upstream(
        stage_id: &str,
        kind: &str,
        effect: &str,
        reason: &str,
    ) -> StageRecord {
        let mut metrics = serde_json::Map::new();
        metrics.insert(SKIPPED_METRIC.into(), reason.into());
        StageRecord {
            key: Digest::of_bytes(format!("skipped:{stage_id}").as_bytes()),
            stage_id: stage_id.to_string(),
            kind: kind.to_string(),
            effect: effect.to_string(),
            outputs: BTreeMap::new(),
            metrics,
            params: BTreeMap::new(),
            inputs: BTreeMap::new(),
            duration_ms: 0,
            duration_us: 0,
            finished_at_unix: 0,
            log: String::new(),
        }
    }
}

/// The outcome of an effect's last build, one entry per stage id, stored as one compact
/// binary file: a no-op build of 10,000 items reads this instead of 30,000 records.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub entries: BTreeMap<String, SnapshotEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotEntry {
    pub key: Digest,
    pub kind: String,
    pub outputs: Vec<(String, OutputRef)>,
    /// Metrics as JSON text (the binary format cannot hold free-form JSON values).
    pub metrics_json: String,
}

impl SnapshotEntry {
    pub fn from_record(r: &StageRecord) -> SnapshotEntry {
        SnapshotEntry {
            key: r.key,
            kind: r.kind.clone(),
            outputs: r.outputs.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            metrics_json: if r.metrics.is_empty() {
                String::new()
            } else {
                serde_json::Value::Object(r.metrics.clone()).to_string()
            },
        }
    }

    /// A record with what the snapshot keeps (no params, inputs or log).
    pub fn to_record(&self, stage_id: &str, effect: &str) -> StageRecord {
        StageRecord {
            key: self.key,
            stage_id: stage_id.to_string(),
            kind: self.kind.clone(),
            effect: effect.to_string(),
            outputs: self.outputs.iter().cloned().collect(),
            metrics: if self.metrics_json.is_empty() {
                Default::default()
            } else {
                serde_json::from_str(&self.metrics_json).unwrap_or_default()
            },
            params: Default::default(),
            inputs: Default::default(),
            duration_ms: 0,
            duration_us: 0,
            finished_at_unix: 0,
            log: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_says_its_run_time_in_microseconds_and_an_older_one_from_its_milliseconds() {
        let mut r = StageRecord::skipped_by_upstream("crop/a", "crop", "e", "");
        r.duration_ms = 0;
        r.duration_us = 300;
        assert_eq!(r.run_time_us(), 300);
        // A record written before `duration_us` existed.
        let mut json = serde_json::to_value(&r).unwrap();
        json.as_object_mut().unwrap().remove("duration_us");
        json["duration_ms"] = 12.into();
        let old: StageRecord = serde_json::from_value(json).unwrap();
        assert_eq!(old.run_time_us(), 12_000);
    }
}
