//! TPM2_PolicyPCR: the authorisation of a PCR-bound node key.
//!
//! At creation a trial session computes the policy digest over the current
//! values of the selected PCRs; the key gets it as `authPolicy` with
//! `userWithAuth` clear, so no password or HMAC can use the key. Each
//! signature then runs PolicyPCR in a policy session (one extra command);
//! the TPM compares the PCRs itself and the signature fails with
//! `TPM_RC_POLICY_FAIL` when they differ. JSS never compares PCR values in
//! software.

use tss_esapi::Context;
use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{Digest, PcrSelectionList, PcrSlot, SymmetricDefinition};

use super::tpm_err;
use crate::signer::{PcrSelection, SignerError};

fn selection_list(sel: &PcrSelection) -> Result<PcrSelectionList, SignerError> {
    let slots = sel
        .indices()
        .iter()
        .map(|&i| PcrSlot::try_from(1u32 << i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(tpm_err("select PCRs"))?;
    PcrSelectionList::builder()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(tpm_err("select PCRs"))
}

fn start(ctx: &mut Context, kind: SessionType) -> Result<PolicySession, SignerError> {
    let session = ctx
        .execute_without_session(|ctx| {
            ctx.start_auth_session(
                None,
                None,
                None,
                kind,
                SymmetricDefinition::Null,
                HashingAlgorithm::Sha256,
            )
        })
        .map_err(tpm_err("start policy session"))?
        .ok_or(SignerError::TpmAnswer {
            op: "start policy session",
            what: "no session handle",
        })?;
    PolicySession::try_from(session).map_err(tpm_err("start policy session"))
}

/// The policy digest binding a key to the current values of `sel`.
pub(super) fn trial_digest(ctx: &mut Context, sel: &PcrSelection) -> Result<Digest, SignerError> {
    let session = start(ctx, SessionType::Trial)?;
    let list = selection_list(sel)?;
    let digest = ctx.execute_without_session(|ctx| {
        ctx.policy_pcr(session, Digest::default(), list)?;
        ctx.policy_get_digest(session)
    });
    let _ = ctx.flush_context(tss_esapi::handles::SessionHandle::from(session).into());
    digest.map_err(tpm_err("compute PCR policy digest"))
}

/// A policy session kept across signatures (continueSession set: after each
/// use the TPM resets its digest, so every signature runs PolicyPCR anew).
pub(super) fn start_session(ctx: &mut Context) -> Result<AuthSession, SignerError> {
    let session = start(ctx, SessionType::Policy)?;
    let (attrs, mask) = SessionAttributesBuilder::new()
        .with_continue_session(true)
        .build();
    let auth = AuthSession::from(session);
    ctx.execute_without_session(|ctx| ctx.tr_sess_set_attributes(auth, attrs, mask))
        .map_err(tpm_err("set policy session attributes"))?;
    Ok(auth)
}

/// Runs PolicyPCR in `session` before a signature.
pub(super) fn satisfy(
    ctx: &mut Context,
    session: AuthSession,
    sel: &PcrSelection,
) -> Result<(), SignerError> {
    let policy = PolicySession::try_from(session).map_err(tpm_err("policy session"))?;
    let list = selection_list(sel)?;
    ctx.execute_without_session(|ctx| ctx.policy_pcr(policy, Digest::default(), list))
        .map_err(tpm_err("PolicyPCR"))
}

/// Whether the TPM refused a command because the policy did not match.
pub(super) fn is_policy_fail(e: &tss_esapi::Error) -> bool {
    matches!(e, tss_esapi::Error::Tss2Error(rc) if rc.kind() == Some(Tss2ResponseCodeKind::PolicyFail))
}
