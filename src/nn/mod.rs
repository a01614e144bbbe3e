//! The tch models: the image-to-image "accordion" (one definition for the wide teacher
//! and the real-time student), the PatchGAN discriminator, losses and metrics, and the
//! optimizer whose state we can checkpoint.
//!
//! Only ops every phone target runs natively: conv, depthwise conv, add, relu,
//! depth-to-space, pad, tanh. No normalisation layers, so nothing needs folding at export.

pub mod accordion;
pub mod adam;
pub mod config;
pub mod device;
pub mod discriminator;
pub mod layers;
pub mod metrics;

pub use accordion::Accordion;
pub use config::AccordionConfig;
pub use device::DeviceSpec;
