//! Pure image functions the first stages call (no caching, no I/O beyond what they name).

pub mod brick;
pub mod contact_sheet;
pub mod crop;
pub mod external;
pub mod synthetic;
