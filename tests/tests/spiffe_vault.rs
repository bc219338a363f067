//! JWT-SVIDs from `jss serve` (swtpm key, registered in a real OpenBao)
//! logging in at the SPIFFE role `cluster init --spiffe-trust-domain` writes,
//! fetched by py-spiffe in kubepods cgroups. Two pods of one service account
//! (one SPIFFE ID) with different images must keep apart: the role's
//! `user_claim` is `jss-sub`, so each image set has its own entity.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use jss_tests::cluster::{Cluster, DEMO_NS, MOUNT, PodDef};
use jss_tests::pods::PodProcess;
use jss_tests::spiffe::{py_client, require_py_spiffe};

const TD: &str = "example.org";

fn svid(c: &Cluster, socket: &Path, pod: &PodProcess) -> String {
    let r = py_client(socket, Some(pod), &["raw-fetch", "vault"], &|| {
        c.daemon.stderr()
    });
    assert_eq!(r["code"], "OK", "{r}");
    assert_eq!(
        r["spiffe_id"],
        format!("spiffe://{TD}/ns/{DEMO_NS}/sa/default")
    );
    r["token"].as_str().unwrap().to_string()
}

/// `bao write auth/<mount>/login role=jss-spiffe jwt=…`: the Vault token, or the error.
fn login(c: &Cluster, jwt: &str) -> Result<String, String> {
    let jwt = format!("jwt={jwt}");
    let path = format!("auth/{MOUNT}/login");
    let o = c.bao.run(
        "",
        &["write", "-field=token", &path, "role=jss-spiffe", &jwt],
    );
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

fn reads(c: &Cluster, token: &str, path: &str) -> bool {
    c.bao.run(token, &["kv", "get", path]).status.success()
}

#[test]
fn svids_log_in_and_two_images_of_one_service_account_stay_apart() {
    require_py_spiffe();
    let a = PodDef::new(DEMO_NS, "app-a", "app", "docker.io/library/ubuntu:24.04");
    let b = PodDef::new(DEMO_NS, "app-b", "app", "docker.io/library/busybox:1.36");
    let sock_dir = tempfile::tempdir().unwrap();
    let socket = sock_dir.path().join("spiffe.sock");
    let extra = format!(
        "[spiffe]\ntrust_domain = \"{TD}\"\nsocket = \"{}\"\n",
        socket.display()
    );
    let c = Cluster::start(&["--spiffe-trust-domain", TD], &extra, &[&a, &b]);
    c.put(&a.ti_demo_all("s"), &["owner=a"]);
    c.put(&b.ti_demo_all("s"), &["owner=b"]);

    let (pa, pb) = (c.pod(&a), c.pod(&b));
    let svid_a = svid(&c, &socket, &pa);
    let svid_b = svid(&c, &socket, &pb);
    // Both log in; b after a, so with `sub` as user_claim b's images would
    // now be the metadata of a's entity too.
    let ta = login(&c, &svid_a).unwrap();
    let tb = login(&c, &svid_b).unwrap();
    assert!(reads(&c, &ta, &a.ti_demo_all("s")));
    assert!(!reads(&c, &ta, &b.ti_demo_all("s")), "a read b's secret");
    assert!(reads(&c, &tb, &b.ti_demo_all("s")));
    assert!(!reads(&c, &tb, &a.ti_demo_all("s")), "b read a's secret");

    // A tampered SVID (another namespace) is refused.
    let parts: Vec<&str> = svid_a.split('.').collect();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: serde_json::Value =
        serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    claims["namespace"] = "kube-system".into();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(serde_json::to_vec(&claims).unwrap()),
        parts[2]
    );
    let err = login(&c, &tampered).unwrap_err();
    assert!(
        err.contains("error validating token") || err.contains("signature"),
        "{err}"
    );

    // A JSS token (sub not a SPIFFE ID) does not log in at the SPIFFE role.
    let o = c
        .spawn_jss(
            &pa,
            &["token", "--socket", c.daemon.socket.to_str().unwrap()],
            &[],
        )
        .wait_with_output()
        .unwrap();
    let jss_token = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = login(&c, &jss_token).unwrap_err();
    assert!(err.contains("sub"), "{err}");
}
