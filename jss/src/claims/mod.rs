//! Token claims: built from the attested workload and the node's own facts.

mod images;

pub use images::{images_hash, images_names};
