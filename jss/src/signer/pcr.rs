//! Which PCRs a TPM-held node key is bound to.
//!
//! A bound key is created with a policy (TPM2_PolicyPCR over the SHA-256
//! bank) as its only authorisation, so the TPM itself refuses to sign once
//! those PCRs hold other values than at creation (README, "Boot-state
//! binding"). PCR 7 (Secure Boot state) is the default: it survives kernel
//! updates, unlike PCRs 0, 2, 4, 8 and 9.

use std::fmt;
use std::str::FromStr;

/// The PCR bank every binding uses.
pub const PCR_BANK: &str = "sha256";

/// PCR indices (0–23) of the SHA-256 bank, sorted, without repeats; empty
/// means "not bound".
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "Vec<u8>", into = "Vec<u8>")]
pub struct PcrSelection(Vec<u8>);

impl PcrSelection {
    /// Not bound to any PCR.
    pub fn none() -> Self {
        Self(Vec::new())
    }

    /// The default for a TPM-held key: PCR 7.
    pub fn secure_boot() -> Self {
        Self(vec![7])
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn indices(&self) -> &[u8] {
        &self.0
    }
}

impl TryFrom<Vec<u8>> for PcrSelection {
    type Error = String;
    fn try_from(mut v: Vec<u8>) -> Result<Self, String> {
        if let Some(bad) = v.iter().find(|&&i| i > 23) {
            return Err(format!(
                "PCR {bad} does not exist: indices run from 0 to 23"
            ));
        }
        v.sort_unstable();
        v.dedup();
        Ok(Self(v))
    }
}

impl From<PcrSelection> for Vec<u8> {
    fn from(s: PcrSelection) -> Self {
        s.0
    }
}

/// `7`, `0,2,7` or `none` (also `sha256:7`, as tpm2-tools writes it).
impl FromStr for PcrSelection {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("none") || s.is_empty() {
            return Ok(Self::none());
        }
        let list = match s.split_once(':') {
            Some((bank, list)) if bank.eq_ignore_ascii_case(PCR_BANK) => list,
            Some((bank, _)) => {
                return Err(format!(
                    "PCR bank {bank:?} is not supported: JSS binds keys to the {PCR_BANK} bank"
                ));
            }
            None => s,
        };
        let indices = list
            .split(',')
            .map(|p| {
                p.trim().parse::<u8>().map_err(|_| {
                    format!("{p:?} is not a PCR index (0–23); write e.g. 7 or 0,7, or none")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::try_from(indices)
    }
}

impl fmt::Display for PcrSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let list: Vec<String> = self.0.iter().map(u8::to_string).collect();
        write!(f, "{PCR_BANK}:{}", list.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_banks_and_none() {
        assert_eq!("7".parse::<PcrSelection>().unwrap().indices(), [7]);
        assert_eq!(
            "7,0, 2,7".parse::<PcrSelection>().unwrap().indices(),
            [0, 2, 7]
        );
        assert_eq!(
            "sha256:7".parse::<PcrSelection>().unwrap().to_string(),
            "sha256:7"
        );
        assert!("none".parse::<PcrSelection>().unwrap().is_empty());
        assert_eq!(PcrSelection::none().to_string(), "none");
        for bad in ["24", "x", "7,", "sha1:7", "-1"] {
            assert!(bad.parse::<PcrSelection>().is_err(), "{bad}");
        }
        let e = "sha1:7".parse::<PcrSelection>().unwrap_err();
        assert!(e.contains("sha256"), "{e}");
    }
}
