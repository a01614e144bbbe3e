//! The executor: runs a plan's stale stages in dependency order, independent CPU stages
//! in parallel, everything else from the cache.

pub mod change;
pub mod dry;
pub mod events;
mod job;
mod scheduler;
mod slots;
mod summary;
pub mod transfer;

pub use events::{Event, HumanReporter, JsonReporter, Reporter};
pub use scheduler::{build, BuildOptions};
pub use summary::{BuildSummary, NodeOutcome, SkippedItem};
