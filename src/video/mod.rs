//! Video sources: `video "clips/*.mp4" fps=2` in a recipe's `sources`. Each clip is
//! decoded with ffmpeg when the plan is made (`ffmpeg`), frames are taken on a fixed
//! time grid (`select`), and stored in the cache by the digest of their pixels
//! (`store`), so a frame is an ordinary source item named `clip@T` whose content is its
//! pixels: the crop reads it like a photo.

pub mod ffmpeg;
pub mod select;
pub mod store;

pub use ffmpeg::VideoError;
pub use select::frame_name;
pub use store::{Frame, FrameStore};
