#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report
//! Vault identity entities (issue 21), against a real OpenBao with tokens
//! from `jss serve` for pods that are real processes in kubepods cgroups:
//! one entity per rollout and none per restart or replica; the alias's
//! `last_update_time` moves at every login (the mapped `jti`); `cluster
//! prune` removes only idle entities that are the mount's alone, `--dry-run`
//! deletes nothing, Vault going away mid-prune leaves nothing half-done and
//! a re-run finishes; a pruned workload logs in again and reads its secret.
//!
//! Needs root (cgroups) and OpenBao's `bao`; without them the tests fail.

mod bootstrap_common;

use std::time::{Duration, Instant};

use bootstrap_common::*;
use jss::signer::SignerKind;
use jss_tests::bao::Bao;
use jss_tests::cluster::layout;
use jss_tests::daemon::Daemon;
use jss_tests::freeze_proxy::{Act, FreezeProxy};
use jss_tests::kubelet::{Ctr, PodBuilder, pod_list};
use jss_tests::node::{Node, run_in};
use jss_tests::pods::{PodProcess, random_container_id, random_pod_uid};
use serde_json::Value;

const CLUSTER: &str = "EUCluster";
const MOUNT: &str = "jss-EUCluster";
const NS: &str = "shop";
/// Vault tokens from a login live this long; prune ages must exceed it.
const TOKEN_TTL: &str = "30s";
const OLDER_THAN: &str = "45s";
/// How long the idle workloads wait after their last login: above `OLDER_THAN`.
const IDLE: Duration = Duration::from_secs(48);

/// A node (software key) registered with the cluster, and `jss serve`
/// without its token cache: every request is a new token, a new `jti`.
struct Cluster {
    bao: Bao,
    node: Node,
    daemon: Daemon,
}

impl Cluster {
    fn start() -> Self {
        let bao = Bao::start();
        ok_v(&with(
            &[
                "cluster",
                "init",
                "--cluster",
                CLUSTER,
                "--region",
                REGION,
                "--token-ttl",
                TOKEN_TTL,
            ],
            &vault_args(&bao),
        ));
        let node = Node::new(SignerKind::Software, "[cache]\nenabled = false\n");
        ok_v(&register_args(
            &bao,
            CLUSTER,
            "node-1",
            &node.path().join("state"),
        ));
        let daemon = Daemon::start(node.path(), &node.config);
        Self { bao, node, daemon }
    }

    /// `jss-bootstrap cluster prune --older-than AGE EXTRA...` at `addr`.
    fn prune(&self, addr: &str, age: &str, extra: &[&str]) -> Result<String, String> {
        let mut args = with(
            &[
                "cluster",
                "prune",
                "--cluster",
                CLUSTER,
                "--older-than",
                age,
            ],
            &vault_args(&self.bao),
        );
        let i = args.iter().position(|a| a == "--vault-addr").unwrap();
        args[i + 1] = addr.to_string();
        args.extend(extra.iter().map(|s| s.to_string()));
        run_v(&args)
    }

    /// Entity IDs whose aliases include one on the cluster's mount.
    fn entities(&self) -> Vec<String> {
        listed(&self.bao, "identity/entity/id")
            .into_iter()
            .filter(|(_, info)| {
                info["aliases"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|x| x["mount_path"] == format!("auth/{MOUNT}/"))
                })
            })
            .map(|(id, _)| id)
            .collect()
    }

    fn entity(&self, id: &str) -> Value {
        let out = self
            .bao
            .ok(&["read", "-format=json", &format!("identity/entity/id/{id}")]);
        serde_json::from_str::<Value>(&out).unwrap()["data"].clone()
    }

    /// The entity whose alias is named `sub`.
    fn entity_of(&self, sub: &str) -> Option<String> {
        self.entities()
            .into_iter()
            .find(|id| self.entity(id)["aliases"][0]["name"] == sub)
    }
}

/// `LIST path` with key_info: (key, info) pairs.
fn listed(bao: &Bao, path: &str) -> Vec<(String, Value)> {
    let o = bao.run(
        jss_tests::bao::ROOT_TOKEN,
        &["read", "-format=json", path, "list=true"],
    );
    if !o.status.success() {
        return Vec::new(); // nothing listed yet: 404
    }
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["data"]["key_info"]
        .as_object()
        .map(|m| m.iter().map(|(k, i)| (k.clone(), i.clone())).collect())
        .unwrap_or_default()
}

/// One pod of the Deployment: its image for this rollout, a real process.
struct Pod {
    uid: String,
    name: String,
    image: String,
    process: PodProcess,
}

impl Pod {
    fn json(&self) -> Value {
        PodBuilder::new(&self.uid, NS, &self.name)
            .service_account("web")
            .container(Ctr::running("web", &self.image, &self.process.container_id))
            .json()
    }
}

fn image(rollout: usize) -> String {
    format!("registry.example.com/shop/web:1.{rollout}.0")
}

/// Starts a pod of the Deployment (`uid`: a restart of that pod, else a new
/// one) next to `running`, and lists them all at the kubelet.
fn start_pod(c: &Cluster, image: &str, name: &str, uid: Option<&str>, running: &[&Pod]) -> Pod {
    let uid = uid.map_or_else(random_pod_uid, String::from);
    let pod = Pod {
        process: PodProcess::spawn(layout(), &uid, &random_container_id()),
        uid,
        name: name.to_string(),
        image: image.to_string(),
    };
    let mut pods: Vec<Value> = running.iter().map(|p| p.json()).collect();
    pods.push(pod.json());
    c.node.kubelet.set_pods(pod_list(&pods));
    pod
}

/// The pod asks `jss serve` for a token and logs in: (Vault token, sub).
fn login_as(c: &Cluster, pod: &Pod) -> (String, String) {
    let sock = c.daemon.socket.display().to_string();
    let o = run_in(&pod.process, &["token", "--socket", &sock]);
    assert!(
        o.status.success(),
        "jss token in {}: {}",
        pod.name,
        String::from_utf8_lossy(&o.stderr)
    );
    let jwt = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let sub = jss::token::decode_unverified(&jwt).unwrap().1["sub"]
        .as_str()
        .unwrap()
        .to_string();
    let token = login(&c.bao, MOUNT, &jwt).unwrap_or_else(|e| panic!("login {}: {e}", pod.name));
    (token, sub)
}

fn secret_path(image: &str) -> String {
    let images = jss::claims::images_hash(&[image]);
    format!("secret/ti-demo-all/{REGION}/{CLUSTER}/{NS}/{images}/db")
}

fn deleted_count(err: &str) -> usize {
    let after = err
        .split("stopped after deleting ")
        .nth(1)
        .unwrap_or_else(|| panic!("not an interrupted prune: {err}"));
    after.split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn rollouts_make_entities_and_prune_removes_only_the_idle_ones() {
    let c = Cluster::start();
    let addr = c.bao.addr();

    // 19 rollouts whose workloads then go idle; each pod replaces the last.
    let mut first: Option<(String, String)> = None; // (image, sub) of rollout 0
    for r in 0..19 {
        let img = image(r);
        c.bao
            .ok(&["kv", "put", &secret_path(&img), &format!("v=db-pass-1.{r}")]);
        let mut pod = start_pod(&c, &img, &format!("web-{r}-a"), None, &[]);
        let (token, sub) = login_as(&c, &pod);
        assert_eq!(
            read_secret(&c.bao, &token, &secret_path(&img)).unwrap(),
            format!("db-pass-1.{r}")
        );
        first.get_or_insert((img, sub));
        pod.process.kill();
    }
    let idle_since = Instant::now();
    assert_eq!(c.entities().len(), 19, "one entity per rollout");

    // An entity of this mount that someone also linked to another mount: never pruned.
    c.bao.ok(&["auth", "enable", "userpass"]);
    let up = c.bao.ok(&["read", "-field=accessor", "sys/auth/userpass"]);
    let (_, sub0) = first.clone().unwrap();
    let entity0 = c.entity_of(&sub0).unwrap();
    let shared = c.entities().into_iter().find(|e| *e != entity0).unwrap();
    c.bao.ok(&[
        "write",
        "identity/entity-alias",
        "name=alice",
        &format!("canonical_id={shared}"),
        &format!("mount_accessor={}", up.trim()),
    ]);

    std::thread::sleep(IDLE.saturating_sub(idle_since.elapsed()));

    // Rollout 20, the one in use: a second replica and a restarted container
    // share its entity (same claim set, same sub).
    let img = image(19);
    let active_path = secret_path(&img);
    c.bao.ok(&["kv", "put", &active_path, "v=db-pass-1.19"]);
    let a = start_pod(&c, &img, "web-19-a", None, &[]);
    let a_uid = a.uid.clone();
    let (_, active_sub) = login_as(&c, &a);
    let active = c.entity_of(&active_sub).unwrap();
    let b = start_pod(&c, &img, "web-19-b", None, &[&a]);
    login_as(&c, &b);
    drop(a); // its container restarts: same pod, new container ID and process
    let a2 = start_pod(&c, &img, "web-19-a", Some(&a_uid), &[&b]);
    login_as(&c, &a2);
    assert_eq!(
        c.entities().len(),
        20,
        "20 rollouts: 20 entities; replicas and restarts add none"
    );
    // The same container logs in again: only `jti` differs, and Vault records it.
    let last_update = || c.entity(&active)["aliases"][0]["last_update_time"].clone();
    let before = last_update();
    let (active_token, _) = login_as(&c, &a2);
    assert_ne!(
        before,
        last_update(),
        "a login moves the alias's last_update_time (mapped jti)"
    );

    // An age within the role's token lifetime is refused.
    let e = c.prune(&addr, "20s", &[]).unwrap_err();
    assert!(e.contains("not above the longest token lifetime"), "{e}");

    // --dry-run names the 18 idle entities that are the mount's alone, deletes nothing.
    let report = c
        .prune(&addr, OLDER_THAN, &["--dry-run", "--rate", "200"])
        .unwrap();
    assert_eq!(report.matches("would prune entity").count(), 18, "{report}");
    assert!(!report.contains(&active_sub), "{report}");
    assert!(report.contains("1 in use"), "{report}");
    assert_eq!(c.entities().len(), 20, "dry run deleted something");

    // Vault goes away mid-prune: a clear error; every entity is either
    // whole or gone (no alias without its entity), and a re-run finishes.
    // The proxy forwards 15 requests, then drops every connection.
    let proxy = FreezeProxy::with(&c.bao, |n| if n >= 16 { Act::Cut } else { Act::Forward });
    let e = c
        .prune(
            &proxy.addr(),
            OLDER_THAN,
            &["--rate", "200", "--vault-attempts", "2"],
        )
        .unwrap_err();
    assert!(proxy.requests() >= 16);
    assert!(e.contains("cannot reach Vault"), "{e}");
    assert!(e.contains("run the same command again"), "{e}");
    let deleted = deleted_count(&e);
    assert!(deleted > 0 && deleted < 18, "{e}");
    let left = c.entities();
    assert_eq!(left.len(), 20 - deleted, "{e}");
    let aliases = listed(&c.bao, "identity/entity-alias/id");
    let ours: Vec<&Value> = aliases
        .iter()
        .map(|(_, i)| i)
        .filter(|i| i["mount_path"] == format!("auth/{MOUNT}/"))
        .collect();
    assert_eq!(ours.len(), left.len(), "an alias outlived its entity");
    assert!(
        ours.iter()
            .all(|i| left.iter().any(|id| i["canonical_id"] == *id.as_str()))
    );

    let report = c.prune(&addr, OLDER_THAN, &["--rate", "200"]).unwrap();
    assert_eq!(
        report.matches("pruned entity").count(),
        18 - deleted,
        "{report}"
    );
    let mut left = c.entities();
    left.sort();
    let mut want = vec![active.clone(), shared.clone()];
    want.sort();
    assert_eq!(left, want, "only the active entity and the shared one stay");

    // The active workload's Vault token still reads its secret.
    assert_eq!(
        read_secret(&c.bao, &active_token, &active_path).unwrap(),
        "db-pass-1.19"
    );

    // A pruned workload comes back: a new entity, the same secret.
    let (img0, sub0) = first.unwrap();
    let back = start_pod(&c, &img0, "web-0-back", None, &[&b, &a2]);
    let (token, sub) = login_as(&c, &back);
    assert_eq!(sub, sub0);
    assert_eq!(
        read_secret(&c.bao, &token, &secret_path(&img0)).unwrap(),
        "db-pass-1.0"
    );
    assert_eq!(c.entities().len(), 3);
}

/// Why policies may template only on claims that are part of `sub`: replicas
/// share one alias, and its metadata is whatever the last login wrote. A
/// policy templated on `pod` (forbidden by the README's rule) lets replica
/// A's Vault token read the path of replica B once B has logged in.
#[test]
fn per_replica_metadata_follows_the_last_replica_to_log_in() {
    let c = Cluster::start();
    let accessor = c
        .bao
        .ok(&["read", "-field=accessor", &format!("sys/auth/{MOUNT}")]);
    let policy = format!(
        "path \"secret/data/per-pod/{{{{identity.entity.aliases.{}.metadata.pod}}}}/*\" {{\n  capabilities = [\"read\"]\n}}\n",
        accessor.trim()
    );
    let file = c.node.path().join("per-pod.hcl");
    std::fs::write(&file, policy).unwrap();
    // The role grants ti-demo-ri: this test makes it the per-pod policy.
    c.bao
        .ok(&["policy", "write", "ti-demo-ri", file.to_str().unwrap()]);
    for pod in ["web-a", "web-b"] {
        let path = format!("secret/per-pod/{pod}/s");
        c.bao.ok(&["kv", "put", &path, &format!("v=for-{pod}")]);
    }

    let img = image(0);
    let a = start_pod(&c, &img, "web-a", None, &[]);
    let (token_a, _) = login_as(&c, &a);
    assert_eq!(
        read_secret(&c.bao, &token_a, "secret/per-pod/web-a/s").unwrap(),
        "for-web-a"
    );
    assert!(read_secret(&c.bao, &token_a, "secret/per-pod/web-b/s").is_err());

    let b = start_pod(&c, &img, "web-b", None, &[&a]);
    login_as(&c, &b);
    assert_eq!(c.entities().len(), 1, "replicas share one entity");
    // A's token, unchanged, now resolves `pod` to B's name.
    assert_eq!(
        read_secret(&c.bao, &token_a, "secret/per-pod/web-b/s").unwrap(),
        "for-web-b",
        "A reads what B's login made the metadata say"
    );
    assert!(read_secret(&c.bao, &token_a, "secret/per-pod/web-a/s").is_err());
}
