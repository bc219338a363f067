//! The containers `jss-injector` adds to a pod, defined once: the injector
//! writes their names and commands from here, and the daemon recognises
//! them here to leave them out of `images-names` and `images` (README.md,
//! "Token format"), so an injected pod keeps the application's `images`.
//!
//! A container is left out only when its name, its place in the pod, its
//! image (the node's `[injector] image`) and its command all are what the
//! injector writes, and it has no `args`: anything else counts, so neither
//! an annotation nor a name can hide a container from `images`.

use crate::kubelet::ContainerKind;

/// The first init container: `jss secrets --once`.
pub const INIT_NAME: &str = "jss-secrets-init";
/// The refreshing `jss secrets`: a native sidecar (an init container with
/// `restartPolicy: Always`) or, for clusters before 1.29, a container.
pub const SIDECAR_NAME: &str = "jss-secrets";
/// TSI's layout: the app reads its secrets here.
pub const SECRETS_MOUNT: &str = "/tsi-secrets";
/// The downward-API volume with the `tsi.secrets` annotation as a file.
pub const SPEC_DIR: &str = "/var/run/jss-secrets-spec";
pub const SPEC_FILE: &str = "secrets.yaml";
/// The native sidecar's private state (its ready file).
pub const STATE_DIR: &str = "/var/run/jss-secrets-state";
pub const READY_FILE: &str = "/var/run/jss-secrets-state/ready";
/// `jss secrets --format` values.
pub const FORMATS: &[&str] = &["json", "raw"];
/// The program injected containers run: `jss-agent`, the workload side
/// alone (`jss secrets` without the TPM stack; README.md, "Getting
/// secrets into a pod").
pub const PROGRAM: &str = "jss-agent";

/// How the injected `jss secrets` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Run {
    /// `--once`: the init container.
    Once,
    /// `--refresh-seconds N`, and `--ready-file` for a native sidecar's
    /// startupProbe.
    Refresh { seconds: u32, ready_file: bool },
}

/// The command of an injected container: what varies between injections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretsCommand {
    /// One of [`FORMATS`].
    pub format: String,
    /// Octal mode of the secret files, 3 or 4 digits (`0644`).
    pub file_mode: String,
    /// `--auth-mount`; `None` leaves `jss secrets`' default.
    pub auth_mount: Option<String>,
    pub run: Run,
}

impl SecretsCommand {
    /// The container's `command` (the injector sets no `args`):
    /// `jss-agent secrets --spec SPEC --out /tsi-secrets --format F --file-mode M
    /// [--auth-mount A]`, then `--once` or `--refresh-seconds N
    /// [--ready-file READY_FILE]`.
    pub fn argv(&self) -> Vec<String> {
        let mut a: Vec<String> = [PROGRAM, "secrets", "--spec"]
            .into_iter()
            .map(String::from)
            .collect();
        a.push(format!("{SPEC_DIR}/{SPEC_FILE}"));
        a.extend(
            ["--out", SECRETS_MOUNT, "--format", &self.format]
                .into_iter()
                .map(String::from),
        );
        a.extend(["--file-mode".into(), self.file_mode.clone()]);
        if let Some(m) = &self.auth_mount {
            a.extend(["--auth-mount".into(), m.clone()]);
        }
        match self.run {
            Run::Once => a.push("--once".into()),
            Run::Refresh {
                seconds,
                ready_file,
            } => {
                a.extend(["--refresh-seconds".into(), seconds.to_string()]);
                if ready_file {
                    a.extend(["--ready-file".into(), READY_FILE.into()]);
                }
            }
        }
        a
    }

    /// Where the injector puts a container running this command: its name
    /// and whether it is an init container or a container.
    pub fn placement(&self) -> (&'static str, ContainerKind) {
        match self.run {
            Run::Once => (INIT_NAME, ContainerKind::Init),
            Run::Refresh {
                ready_file: true, ..
            } => (SIDECAR_NAME, ContainerKind::Init),
            Run::Refresh {
                ready_file: false, ..
            } => (SIDECAR_NAME, ContainerKind::Container),
        }
    }

    /// The command whose [`argv`](Self::argv) is exactly `argv`, with valid
    /// values; `None` for anything else (another order, a flag more or
    /// less, `--opt=value`, `0600` seconds…).
    pub fn parse(argv: &[String]) -> Option<Self> {
        let words: Vec<&str> = argv.iter().map(String::as_str).collect();
        // Values are read in the builder's order; the rebuild at the end
        // rejects whatever this walk lets through (other paths, `0600`).
        let [
            program,
            "secrets",
            "--spec",
            _,
            "--out",
            _,
            "--format",
            format,
            "--file-mode",
            file_mode,
            rest @ ..,
        ] = words.as_slice()
        else {
            return None;
        };
        if *program != PROGRAM {
            return None;
        }
        let (auth_mount, rest) = match rest {
            ["--auth-mount", m, tail @ ..] => (Some((*m).to_string()), tail),
            tail => (None, tail),
        };
        let run = match rest {
            ["--once"] => Run::Once,
            ["--refresh-seconds", n] => Run::Refresh {
                seconds: n.parse().ok()?,
                ready_file: false,
            },
            ["--refresh-seconds", n, "--ready-file", _] => Run::Refresh {
                seconds: n.parse().ok()?,
                ready_file: true,
            },
            _ => return None,
        };
        let cmd = Self {
            format: (*format).to_string(),
            file_mode: (*file_mode).to_string(),
            auth_mount,
            run,
        };
        (cmd.is_valid() && cmd.argv() == argv).then_some(cmd)
    }

    fn is_valid(&self) -> bool {
        valid_format(&self.format)
            && valid_file_mode(&self.file_mode)
            && self.auth_mount.as_deref().is_none_or(valid_auth_mount)
            && !matches!(self.run, Run::Refresh { seconds: 0, .. })
    }
}

/// One of [`FORMATS`].
pub fn valid_format(format: &str) -> bool {
    FORMATS.contains(&format)
}

/// 3 or 4 octal digits, at most `0777`.
pub fn valid_file_mode(mode: &str) -> bool {
    (3..=4).contains(&mode.len())
        && mode.bytes().all(|b| (b'0'..=b'7').contains(&b))
        && u32::from_str_radix(mode, 8).is_ok_and(|m| m <= 0o777)
}

/// A mount path such as `jss-prod-1` or `auth/jss-prod-1`: not empty, no
/// whitespace, and not starting with `-` (it would read as a flag).
pub fn valid_auth_mount(mount: &str) -> bool {
    !mount.is_empty() && !mount.starts_with('-') && !mount.contains(char::is_whitespace)
}

/// One container of the pod spec as the recogniser needs it.
#[derive(Debug, Clone, Copy)]
pub struct SpecView<'a> {
    pub kind: ContainerKind,
    pub name: &'a str,
    pub image: &'a str,
    pub command: &'a [String],
    pub args: &'a [String],
}

/// Recognises injected containers against the node's JSS image reference
/// (`[injector] image`); without one nothing is recognised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InjectedContainers {
    image: Option<String>,
}

impl InjectedContainers {
    pub fn new(image: Option<String>) -> Self {
        Self { image }
    }

    /// Whether `c` is exactly a container the injector writes: name and
    /// place from [`SecretsCommand::placement`], image equal to the
    /// configured one (as written, no normalisation), a command that
    /// [`SecretsCommand::parse`] accepts, and no `args`.
    pub fn is_injected(&self, c: SpecView<'_>) -> bool {
        let Some(image) = self.image.as_deref() else {
            return false;
        };
        // The name first: every app container fails here, at no cost.
        if (c.name != INIT_NAME && c.name != SIDECAR_NAME) || c.image != image || !c.args.is_empty()
        {
            return false;
        }
        SecretsCommand::parse(c.command).is_some_and(|cmd| cmd.placement() == (c.name, c.kind))
    }
}

/// Why `image` cannot be the JSS image reference the injector writes and
/// the daemon compares with, or `None` when it can: not empty, no
/// whitespace or control characters, and a digest after `@`, if any, of
/// the form `sha256:<64 lowercase hex>`.
pub fn image_reference_problem(image: &str) -> Option<&'static str> {
    if image.is_empty() {
        return Some("is empty");
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("holds whitespace or control characters");
    }
    if let Some((_, digest)) = image.split_once('@') {
        let hex = digest.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Some("has a digest that is not sha256:<64 lowercase hex>");
        }
    }
    None
}
