//! Vault ACL policies: the templated policies `cluster init` writes (the
//! original TSI policy types), and the minimal policy each command needs,
//! printed when Vault answers 403.

use jss::workload::secrets::paths::Constraints;

/// The claims every role maps into entity-alias metadata: anything a
/// policy may template on (docs/design.md, "Token format"), as the daemon
/// names them, and [`LAST_USE_CLAIM`].
pub fn mapped_claims() -> impl Iterator<Item = &'static str> {
    jss::claims::WORKLOAD_CLAIMS
        .iter()
        .copied()
        .chain([LAST_USE_CLAIM])
}

/// Mapped so that every login changes the alias metadata: Vault then
/// rewrites the alias, and its `last_update_time` is the last login, the
/// evidence `cluster prune` decides on. Never a policy template: it names
/// one token (README, "Vault identity entities").
pub const LAST_USE_CLAIM: &str = "jti";

/// Names of the templated policies, as in TSI.
pub const TI_DEMO_ALL: &str = "ti-demo-all";
pub const TI_DEMO_RI: &str = "ti-demo-ri";

/// TSI's later `tsi.secret/constraints` kinds (`cluster init --tsi-compat`):
/// role `tsi-role-<kind>` with policy `tsi-<kind>` on
/// `secret/tsi-<kind>/<claims>/*`, as `jss secrets` reads them.
pub const TSI_CONSTRAINTS: [Constraints; 4] = [
    Constraints::R,
    Constraints::Ri,
    Constraints::Rcn,
    Constraints::Rcni,
];

/// The policy name for a constraints kind: `tsi-<kind>`.
pub fn tsi_policy(c: Constraints) -> String {
    format!("tsi-{}", c.kind())
}

fn meta(accessor: &str, claim: &str) -> String {
    format!("{{{{identity.entity.aliases.{accessor}.metadata.{claim}}}}}")
}

/// One cluster's block of a templated policy, between marker lines so that
/// several clusters (several mount accessors) can share one policy.
pub fn block(policy: &str, kv_mount: &str, accessor: &str) -> String {
    let m = |c| meta(accessor, c);
    let tsi = TSI_CONSTRAINTS
        .into_iter()
        .find(|c| tsi_policy(*c) == policy);
    let path = match (tsi, policy) {
        (Some(c), _) => {
            let claims: Vec<String> = c.claims().iter().map(|c| m(c)).collect();
            format!("{kv_mount}/data/{policy}/{}/*", claims.join("/"))
        }
        (None, TI_DEMO_ALL) => format!(
            "{kv_mount}/data/ti-demo-all/{}/{}/{}/{}/*",
            m("cluster-region"),
            m("cluster-name"),
            m("namespace"),
            m("images")
        ),
        (None, _) => format!(
            "{kv_mount}/data/ti-demo-ri/{}/{}/*",
            m("cluster-region"),
            m("images")
        ),
    };
    format!(
        "# jss-begin {accessor}\npath \"{path}\" {{\n  capabilities = [\"read\"]\n}}\n# jss-end {accessor}\n"
    )
}

/// Puts this accessor's block into an existing policy text, replacing an
/// older block for the same accessor and keeping everything else.
pub fn merge(existing: &str, policy: &str, kv_mount: &str, accessor: &str) -> String {
    let begin = format!("# jss-begin {accessor}");
    let end = format!("# jss-end {accessor}");
    let mut out = String::new();
    let mut in_old_block = false;
    for line in existing.lines() {
        if line.trim() == begin {
            in_old_block = true;
            continue;
        }
        if in_old_block {
            if line.trim() == end {
                in_old_block = false;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !out.trim().is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
    if out.trim().is_empty() {
        out = format!(
            "# {policy}: managed by jss-bootstrap cluster init (one block per cluster)\n\n"
        );
    }
    out.push_str(&block(policy, kv_mount, accessor));
    out
}

/// Capabilities on registry records for commands that write them.
const RECORD_WRITE: &str = "\"create\", \"read\", \"update\"";

/// What the commands touch, to name in the minimal policies.
#[derive(Debug, Clone)]
pub struct Paths {
    pub mount: String,
    pub pki_mount: String,
    pub kv_mount: String,
    pub lock_path: String,
}

impl Paths {
    fn lock(&self) -> String {
        format!(
            "path \"{kv}/data/{p}\" {{\n  capabilities = [\"create\", \"read\", \"update\"]\n}}\npath \"{kv}/metadata/{p}\" {{\n  capabilities = [\"read\"]\n}}\n",
            kv = self.kv_mount,
            p = self.lock_path
        )
    }

    /// The node registry: `caps` on the records, list on the folder.
    fn registry(&self, caps: &str) -> String {
        format!(
            "path \"{kv}/data/jss/registry/{m}/*\" {{\n  capabilities = [{caps}]\n}}\npath \"{kv}/metadata/jss/registry/{m}/*\" {{\n  capabilities = [\"read\", \"list\"{del}]\n}}\npath \"{kv}/metadata/jss/registry/{m}\" {{\n  capabilities = [\"list\"]\n}}\n",
            kv = self.kv_mount,
            m = self.mount,
            del = if caps.contains("update") {
                ", \"delete\""
            } else {
                ""
            },
        )
    }

    /// `discovery serve` and `cluster jwks`: read the registry, nothing else.
    pub fn discovery(&self) -> String {
        self.registry("\"read\"")
    }

    /// Name of the policy `cluster init` writes for the discovery server.
    pub fn discovery_policy_name(&self) -> String {
        format!("jss-discovery-{}", self.mount)
    }

    fn config(&self) -> String {
        format!(
            "path \"auth/{}/config\" {{\n  capabilities = [\"read\", \"update\"]\n}}\n",
            self.mount
        )
    }

    /// `node register`, `node renew`, `node sign`.
    pub fn register(&self) -> String {
        // The roles are read by `--rotate`: their leeways say when the old
        // key's tokens are dead.
        format!(
            "path \"{pki}/cert/ca\" {{\n  capabilities = [\"read\"]\n}}\npath \"{pki}/root/sign-intermediate\" {{\n  capabilities = [\"update\"]\n}}\npath \"auth/{m}/role\" {{\n  capabilities = [\"list\"]\n}}\npath \"auth/{m}/role/*\" {{\n  capabilities = [\"read\"]\n}}\n{}{}{}",
            self.config(),
            self.lock(),
            self.registry(RECORD_WRITE),
            pki = self.pki_mount,
            m = self.mount
        )
    }

    /// `node deregister`.
    pub fn deregister(&self) -> String {
        format!(
            "{}{}{}",
            self.config(),
            self.lock(),
            self.registry(RECORD_WRITE)
        )
    }

    /// `node status`, `cluster status`.
    pub fn status(&self) -> String {
        format!(
            "path \"auth/{}/config\" {{\n  capabilities = [\"read\"]\n}}\npath \"{}/cert/ca\" {{\n  capabilities = [\"read\"]\n}}\n{}",
            self.mount,
            self.pki_mount,
            self.discovery()
        )
    }

    /// `cluster prune`.
    pub fn prune(&self) -> String {
        format!(
            "path \"sys/auth\" {{\n  capabilities = [\"read\"]\n}}\npath \"auth/{m}/role\" {{\n  capabilities = [\"list\"]\n}}\npath \"auth/{m}/role/*\" {{\n  capabilities = [\"read\"]\n}}\npath \"identity/entity/id\" {{\n  capabilities = [\"list\"]\n}}\npath \"identity/entity/id/*\" {{\n  capabilities = [\"read\", \"delete\"]\n}}\n",
            m = self.mount
        )
    }

    /// `cluster init`.
    pub fn cluster_init(&self) -> String {
        format!(
            "path \"sys/mounts\" {{\n  capabilities = [\"read\"]\n}}\npath \"sys/mounts/{pki}\" {{\n  capabilities = [\"create\", \"update\"]\n}}\npath \"sys/mounts/{kv}\" {{\n  capabilities = [\"create\", \"update\"]\n}}\npath \"{pki}/cert/ca\" {{\n  capabilities = [\"read\"]\n}}\npath \"{pki}/root/generate/internal\" {{\n  capabilities = [\"update\"]\n}}\npath \"sys/auth\" {{\n  capabilities = [\"read\"]\n}}\npath \"sys/auth/{m}\" {{\n  capabilities = [\"create\", \"update\", \"sudo\"]\n}}\npath \"auth/{m}/role/*\" {{\n  capabilities = [\"create\", \"read\", \"update\"]\n}}\npath \"sys/policy/{all}\" {{\n  capabilities = [\"create\", \"read\", \"update\"]\n}}\npath \"sys/policy/{ri}\" {{\n  capabilities = [\"create\", \"read\", \"update\"]\n}}\npath \"sys/policy/{disc}\" {{\n  capabilities = [\"create\", \"read\", \"update\"]\n}}\npath \"sys/policy/tsi-*\" {{\n  capabilities = [\"create\", \"read\", \"update\"]\n}}\n{}{}{}",
            self.config(),
            self.lock(),
            self.discovery(),
            disc = self.discovery_policy_name(),
            pki = self.pki_mount,
            kv = self.kv_mount,
            m = self.mount,
            all = TI_DEMO_ALL,
            ri = TI_DEMO_RI,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_replaced_per_accessor_and_others_kept() {
        let a = merge("", TI_DEMO_ALL, "secret", "auth_jwt_a");
        assert!(a.contains("identity.entity.aliases.auth_jwt_a.metadata.namespace"));
        let ab = merge(&a, TI_DEMO_ALL, "secret", "auth_jwt_b");
        assert!(ab.contains("auth_jwt_a") && ab.contains("auth_jwt_b"));
        let again = merge(&ab, TI_DEMO_ALL, "secret", "auth_jwt_a");
        assert_eq!(again.matches("# jss-begin auth_jwt_a").count(), 1);
        assert_eq!(again.matches("# jss-begin auth_jwt_b").count(), 1);
        // Merging is stable: a second merge of the same block changes nothing.
        assert_eq!(merge(&again, TI_DEMO_ALL, "secret", "auth_jwt_a"), again);
        assert_eq!(merge(&a, TI_DEMO_ALL, "secret", "auth_jwt_a"), a);
    }

    #[test]
    fn tsi_constraint_policies_template_their_claims_in_order() {
        let b = block("tsi-rcn", "secret", "acc");
        let m = |c| meta("acc", c);
        assert!(
            b.contains(&format!(
                "secret/data/tsi-rcn/{}/{}/{}/*",
                m("cluster-region"),
                m("cluster-name"),
                m("namespace")
            )),
            "{b}"
        );
        assert!(!block("tsi-r", "secret", "acc").contains("images"));
    }

    #[test]
    fn ri_path_has_region_and_images_only() {
        let b = block(TI_DEMO_RI, "secret", "acc");
        assert!(b.contains("secret/data/ti-demo-ri/{{identity.entity.aliases.acc.metadata.cluster-region}}/{{identity.entity.aliases.acc.metadata.images}}/*"));
        assert!(!b.contains("namespace"));
    }
}
