//! `partybus hood|peer|cert`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use partybus_pki::{CertInfo, KeyKind, DEFAULT_HOOD_DAYS, DEFAULT_PEER_DAYS};

#[derive(Clone, Copy, ValueEnum)]
pub enum KeyType {
    /// ECDSA P-256 (default: widely supported, small, fast).
    Ecdsa,
    /// Ed25519.
    Ed25519,
}

impl From<KeyType> for KeyKind {
    fn from(k: KeyType) -> KeyKind {
        match k {
            KeyType::Ecdsa => KeyKind::EcdsaP256,
            KeyType::Ed25519 => KeyKind::Ed25519,
        }
    }
}

#[derive(Subcommand)]
pub enum HoodCmd {
    /// Write NAME.crt and NAME.key (CN = O = NAME).
    Create {
        name: String,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        #[arg(long, default_value_t = DEFAULT_HOOD_DAYS)]
        days: u32,
        #[arg(long, value_enum, default_value = "ecdsa")]
        key_type: KeyType,
    },
}

#[derive(Subcommand)]
pub enum PeerCmd {
    /// Write HOOD.NAME.crt and HOOD.NAME.key, signed by DIR/HOOD.crt + DIR/HOOD.key.
    Create {
        hood: String,
        name: String,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        #[arg(long, default_value_t = DEFAULT_PEER_DAYS)]
        days: u32,
        #[arg(long, value_enum, default_value = "ecdsa")]
        key_type: KeyType,
        /// The peer may emit only events matching these selectors (repeatable;
        /// written into its certificate, enforced by every node). Default: any.
        #[arg(long = "emit", value_name = "SEL")]
        emit: Vec<String>,
        /// The peer may listen only to events matching these selectors
        /// (repeatable; written into its certificate). Default: any.
        #[arg(long = "listen", value_name = "SEL")]
        listen: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum CertCmd {
    /// Print subject, issuer, validity, key type and fingerprint; or a revocation list (HOOD.revoked).
    Show {
        file: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// For a revocation list: the hood certificate to check its signature with
        /// (default: HOOD.crt next to HOOD.revoked, if there is one).
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
    },
    /// Revoke a peer certificate: add it to DIR/HOOD.revoked, signed with DIR/HOOD.key.
    Revoke(super::revoke_cmd::RevokeArgs),
}

pub fn hood(cmd: HoodCmd) -> Result<ExitCode> {
    let HoodCmd::Create { name, dir, days, key_type } = cmd;
    let files = partybus_pki::create_hood_with(&name, &dir, days, key_type.into())?;
    println!("{}", files.cert.display());
    println!("{}", files.key.display());
    Ok(ExitCode::SUCCESS)
}

pub fn peer(cmd: PeerCmd) -> Result<ExitCode> {
    let PeerCmd::Create { hood, name, dir, days, key_type, emit, listen } = cmd;
    for (flag, sel) in emit.iter().map(|s| ("--emit", s)).chain(listen.iter().map(|s| ("--listen", s))) {
        partybus::name::validate_selector(sel).with_context(|| format!("{flag} {sel:?}"))?;
    }
    let some = |v: Vec<String>| (!v.is_empty()).then_some(v);
    let permissions = partybus_pki::Permissions { emit: some(emit), listen: some(listen) };
    let files = partybus_pki::create_peer_with_permissions(&hood, &name, &dir, days, key_type.into(), &permissions)?;
    println!("{}", files.cert.display());
    println!("{}", files.key.display());
    Ok(ExitCode::SUCCESS)
}

pub fn cert(cmd: CertCmd) -> Result<ExitCode> {
    let (file, json, ca) = match cmd {
        CertCmd::Show { file, json, ca } => (file, json, ca),
        CertCmd::Revoke(args) => return super::revoke_cmd::revoke_cmd(args),
    };
    if let Ok(pem) = std::fs::read(&file) {
        if super::revoke_cmd::is_list(&pem) {
            return super::revoke_cmd::show(&file, &pem, ca.as_deref(), json);
        }
    }
    let info = CertInfo::from_file(&file)?;
    if json {
        println!("{}", serde_json::to_string(&info).context("cannot encode JSON")?);
    } else {
        print!("{info}");
        if !info.to_string().ends_with('\n') {
            println!();
        }
    }
    Ok(ExitCode::SUCCESS)
}
