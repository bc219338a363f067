//! The `images-names` and `images` claims.
//!
//! As in the original TSI: the pod spec's image references, containers in
//! spec order then init containers, comma-joined; `images` is the lowercase
//! hex SHA-256 of that string, so for a one-container pod it equals
//! `echo -n "$IMG" | sha256sum`.

use sha2::{Digest as _, Sha256};

/// The comma-joined image references.
pub fn images_names<S: AsRef<str>>(images: &[S]) -> String {
    images
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(",")
}

/// Lowercase hex SHA-256 of [`images_names`].
pub fn images_hash<S: AsRef<str>>(images: &[S]) -> String {
    hex::encode(Sha256::digest(images_names(images).as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_image_matches_sha256sum() {
        // echo -n "nginx:1.27" | sha256sum
        assert_eq!(images_names(&["nginx:1.27"]), "nginx:1.27");
        assert_eq!(
            images_hash(&["nginx:1.27"]),
            "cd4495bb73de9b01bf009710b80ecf4be2d298db47492f4e9e7d0b04981c4614"
        );
    }

    #[test]
    fn order_is_kept() {
        assert_eq!(images_names(&["a:1", "b:2"]), "a:1,b:2");
        assert_ne!(images_hash(&["a:1", "b:2"]), images_hash(&["b:2", "a:1"]));
    }
}
