//! The accordion's architecture parameters (plain data: no libtorch).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccordionConfig {
    pub width: i64,
    pub blocks: i64,
}

impl AccordionConfig {
    /// Channels at full, 1/2, 1/4 and 1/8 resolution.
    pub fn channels(&self) -> [i64; 4] {
        let w = self.width;
        [w, 2 * w, 4 * w, 4 * w]
    }
}
