//! The release bundle: a reproducible tar.gz of the models, the manifest, golden frames
//! (`.npy`) and a static `report.html`. The same inputs give the same bytes.
pub mod golden;
pub mod manifest;
pub mod npy;
pub mod report;
pub mod tarball;

pub use manifest::Manifest;
pub use tarball::{entries_from_dir, write_reproducible_tar_gz, BundleError, EntrySource};
