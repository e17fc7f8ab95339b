//! `partybus cert revoke` and `partybus cert show` of a revocation list.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use partybus_pki::revocation::{revoke, RevocationInfo, RevokeTarget};
use partybus_pki::{Hood, RevocationList};

#[derive(Args)]
pub struct RevokeArgs {
    /// The hood: signs with DIR/HOOD.key, writes DIR/HOOD.revoked.
    pub hood: String,
    /// The peer certificate to revoke (PEM).
    #[arg(long, value_name = "FILE", conflicts_with = "fingerprint", required_unless_present = "fingerprint")]
    pub cert: Option<PathBuf>,
    /// The SHA-256 fingerprint of the certificate to revoke (64 hex digits, as `cert show` prints it).
    #[arg(long, value_name = "HEX")]
    pub fingerprint: Option<String>,
    /// The folder holding HOOD.crt and HOOD.key.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
}

pub fn revoke_cmd(args: RevokeArgs) -> Result<ExitCode> {
    let target = match (args.cert, args.fingerprint) {
        (Some(c), _) => RevokeTarget::Cert(c),
        (None, Some(f)) => RevokeTarget::Fingerprint(f),
        (None, None) => unreachable!("clap requires one of --cert and --fingerprint"),
    };
    let out = revoke(&args.hood, &args.dir, target)?;
    let who = if out.name.is_empty() { out.fingerprint.clone() } else { format!("{} ({})", out.name, out.fingerprint) };
    println!("{}", out.path.display());
    if out.added {
        println!("revoked {who}: sequence {}, {} certificate(s) revoked", out.list.sequence(), out.list.len());
    } else {
        println!("already revoked {who}: {} unchanged (sequence {})", out.path.display(), out.list.sequence());
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether the file holds a revocation list (`cert show` then shows it as one).
pub fn is_list(pem: &[u8]) -> bool {
    RevocationInfo::is_list(pem)
}

/// `cert show FILE` for a list: checked against `ca`, or `HOOD.crt` next to
/// `DIR/HOOD.revoked` when there is one; a bad signature is an error.
pub fn show(file: &Path, pem: &[u8], ca: Option<&Path>, json: bool) -> Result<ExitCode> {
    let origin = file.display().to_string();
    let info = RevocationInfo::from_pem(pem, &origin)?;
    let beside = file
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".revoked"))
        .map(|stem| file.with_file_name(format!("{stem}.crt")));
    let hood_path = ca.map(Path::to_path_buf).or(beside.filter(|p| p.exists()));
    let signature = match &hood_path {
        Some(p) => {
            let hood = Hood::load(p).with_context(|| format!("cannot check the list's signature with {}", p.display()))?;
            RevocationList::from_pem(pem, &hood, &origin)?;
            format!("valid (hood \"{}\", {})", hood.name(), p.display())
        }
        None => "not checked (no hood certificate next to it; pass --ca HOOD.crt)".to_string(),
    };
    if json {
        let mut v = serde_json::to_value(&info).context("cannot encode JSON")?;
        v["signature"] = serde_json::Value::String(signature);
        println!("{}", serde_json::to_string(&v).context("cannot encode JSON")?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("revocation list");
    println!("  hood fingerprint: {}", info.hood_fingerprint);
    println!("  signature:   {signature}");
    println!("  sequence:    {}", info.sequence);
    println!("  issued:      {}", info.issued_at);
    println!("  revoked:     {}", info.revoked.len());
    for r in &info.revoked {
        let name = if r.name.is_empty() { "(name unknown)" } else { &r.name };
        println!("    {}  {name}", r.fingerprint);
    }
    Ok(ExitCode::SUCCESS)
}
