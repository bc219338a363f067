use super::*;

fn key() -> NodePublicKey {
    NodePublicKey::new(p256::SecretKey::random(&mut rand_core::OsRng).public_key())
}

#[test]
fn a_record_with_a_foreign_kid_is_left_out() {
    let (a, b) = (key(), key());
    let good = NodeRecord::new("n1", &a, String::new(), 0, None);
    let mut bad = NodeRecord::new("n2", &b, String::new(), 0, None);
    bad.kid = a.kid.clone();
    let doc = jwks([good, bad]);
    let keys = doc["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kid"], a.kid);
    assert_eq!(keys[0]["alg"], "ES256");
    assert_eq!(keys[0]["use"], "sig");
    assert!(keys[0].get("x5c").is_none());
}

#[test]
fn retiring_keys_are_served_until_dropped() {
    let (old, new) = (key(), key());
    let before = NodeRecord::new("n1", &old, String::new(), 0, None);
    let mut after = NodeRecord::new("n1", &new, String::new(), 0, None);
    after.retiring.push(before.retire(1));
    let doc = jwks([after.clone()]);
    let kids: Vec<&str> = doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    let mut want = vec![old.kid.as_str(), new.kid.as_str()];
    want.sort();
    assert_eq!(kids, want);
    assert_eq!(after.public_keys().len(), 2);
    let v = serde_json::to_value(&after).unwrap();
    assert_eq!(v["retiring"][0]["kid"], old.kid);
    assert!(
        v["retiring"][0].get("remove_after").is_none(),
        "no removal time before the switch is confirmed"
    );
    after.retiring[0].remove_after = Some(7);
    let v = serde_json::to_value(&after).unwrap();
    assert_eq!(v["retiring"][0]["remove_after"], 7);
    let back: NodeRecord = serde_json::from_value(v).unwrap();
    assert_eq!(back.retiring[0].remove_after, Some(7));
    let plain = serde_json::to_value(&before).unwrap();
    assert!(
        plain.get("retiring").is_none(),
        "records without retiring keys keep their shape"
    );
}

#[test]
fn unbound_records_carry_no_pcr_fields() {
    let r = NodeRecord::new("n1", &key(), String::new(), 0, None);
    let v = serde_json::to_value(&r).unwrap();
    assert!(v.get("pcrs").is_none() && v.get("policy_digest").is_none());
    let bound = NodeRecord::new(
        "n1",
        &key(),
        String::new(),
        0,
        Some(PcrBinding {
            pcrs: PcrSelection::secure_boot(),
            policy_digest: "ab".into(),
        }),
    );
    let v = serde_json::to_value(&bound).unwrap();
    assert_eq!(v["pcrs"], serde_json::json!([7]));
    assert_eq!(v["policy_digest"], "ab");
}
