//! Helpers for driving the `partybus` binary (CLI contract of the node crate)
//! from lab tests: locating the binary, creating certificates, node arguments.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Path of the `partybus` binary built alongside the running test.
///
/// `env!("CARGO_BIN_EXE_partybus")` only exists in tests of the crate that
/// defines the binary, so this looks next to the test executable
/// (`target/<profile>/deps/<test>` → `target/<profile>/partybus`).
/// `PARTYBUS_BIN` overrides it.
pub fn partybus_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PARTYBUS_BIN") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("PARTYBUS_BIN={} does not exist", p.display());
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let mut candidates = Vec::new();
    for dir in exe.ancestors().skip(1).take(3) {
        candidates.push(dir.join("partybus"));
    }
    for c in &candidates {
        if c.is_file() {
            return Ok(c.clone());
        }
    }
    bail!(
        "the partybus binary was not found (looked at {}); build it with `cargo build -p partybus` \
         (same profile and target dir as the tests), or set PARTYBUS_BIN",
        candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )
}

/// The `partybus` binary for a lab test, checked to have each `(subcommand
/// args, word)` in its `--help`; fails the test ([`crate::lab::unavailable`])
/// when it is missing or lacks one.
#[track_caller]
pub fn require_bin(features: &[(&[&str], &str)]) -> PathBuf {
    let bin = partybus_bin().unwrap_or_else(|e| crate::lab::unavailable(&format!("{e:#}")));
    for (args, word) in features {
        if !partybus_has(&bin, args, word) {
            crate::lab::unavailable(&format!("{} has no `{} {word}` (stale binary? rebuild it)", bin.display(), args.join(" ")));
        }
    }
    bin
}

/// Does `partybus --help` list `word` (a subcommand or option)? For tests
/// that must wait until the binary grows a feature.
pub fn partybus_has(bin: &Path, args: &[&str], word: &str) -> bool {
    Command::new(bin)
        .args(args)
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(word) || String::from_utf8_lossy(&o.stderr).contains(word))
        .unwrap_or(false)
}

/// Files of a hood CA.
#[derive(Clone, Debug)]
pub struct HoodFiles {
    pub name: String,
    pub crt: PathBuf,
    pub key: PathBuf,
}

/// Files of a peer certificate.
#[derive(Clone, Debug)]
pub struct PeerFiles {
    pub name: String,
    pub crt: PathBuf,
    pub key: PathBuf,
}

fn run_ok(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}):\n{}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// `partybus hood create NAME --dir DIR` (runs in the root namespace: no network).
pub fn create_hood(bin: &Path, dir: &Path, name: &str) -> Result<HoodFiles> {
    run_ok(Command::new(bin).args(["hood", "create", name, "--dir"]).arg(dir))?;
    let h = HoodFiles { name: name.into(), crt: dir.join(format!("{name}.crt")), key: dir.join(format!("{name}.key")) };
    if !h.crt.is_file() || !h.key.is_file() {
        bail!("`partybus hood create` did not write {} and {}", h.crt.display(), h.key.display());
    }
    Ok(h)
}

/// `partybus peer create HOOD NAME --dir DIR`.
pub fn create_peer(bin: &Path, dir: &Path, hood: &HoodFiles, name: &str) -> Result<PeerFiles> {
    run_ok(Command::new(bin).args(["peer", "create", &hood.name, name, "--dir"]).arg(dir).current_dir(dir))?;
    let p = PeerFiles {
        name: name.into(),
        crt: dir.join(format!("{}.{name}.crt", hood.name)),
        key: dir.join(format!("{}.{name}.key", hood.name)),
    };
    if !p.crt.is_file() || !p.key.is_file() {
        bail!("`partybus peer create` did not write {} and {}", p.crt.display(), p.key.display());
    }
    Ok(p)
}

/// `--ca F --cert F --key F` for a peer of a hood.
pub fn identity_args(hood: &HoodFiles, peer: &PeerFiles) -> Vec<String> {
    vec![
        "--ca".into(),
        hood.crt.display().to_string(),
        "--cert".into(),
        peer.crt.display().to_string(),
        "--key".into(),
        peer.key.display().to_string(),
    ]
}

/// A hood for a lab test: its CA in a folder of the lab, a new peer
/// certificate for each process, and `partybus` processes started in lab
/// namespaces with that identity and a log filter.
pub struct LabHood {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub hood: HoodFiles,
    /// `RUST_LOG` of the processes it starts.
    pub log: String,
}

impl LabHood {
    /// Creates hood `name` in `<lab dir>/certs-<name>`.
    pub fn new(lab: &crate::lab::Lab, bin: &Path, name: &str, log: &str) -> Result<LabHood> {
        let dir = lab.dir().join(format!("certs-{name}"));
        std::fs::create_dir_all(&dir)?;
        let hood = create_hood(bin, &dir, name)?;
        Ok(LabHood { bin: bin.to_path_buf(), dir, hood, log: log.to_owned() })
    }

    /// `--ca --cert --key` of a new peer `name` (names must be unique in the hood).
    pub fn identity(&self, name: &str) -> Result<Vec<String>> {
        let peer = create_peer(&self.bin, &self.dir, &self.hood, name)?;
        Ok(identity_args(&self.hood, &peer))
    }

    /// `partybus CMD <identity of a new peer NAME> ARGS...` in `ns`.
    pub fn spawn(
        &self,
        lab: &crate::lab::Lab,
        ns: &crate::lab::Ns,
        cmd: &str,
        name: &str,
        args: &[String],
    ) -> Result<crate::lab::LabProcess> {
        let mut a = vec![cmd.to_owned()];
        a.extend(self.identity(name)?);
        a.extend(args.iter().cloned());
        lab.spawn_env(ns, &self.bin, a, [("RUST_LOG", self.log.as_str())])
    }
}
