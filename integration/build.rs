//! Decides, when the integration tests are built, whether the network-lab
//! tests can run here. Where they cannot (not root, no `ip` or `nft`; see
//! `src/prereq.rs`) it sets `cfg(partybus_no_lab)`, which makes every lab
//! test `#[ignore]`d with its reason (the test runner reports it as ignored),
//! and warns. `PARTYBUS_LAB` (the only place it is read):
//!
//! - unset or empty: that automatic rule;
//! - `required` (what `.ci/run` sets): never ignored; a lab that cannot run fails;
//! - `skip`: always ignored (a quick run).

#[allow(dead_code)]
#[path = "src/prereq.rs"]
mod prereq;

fn main() {
    println!("cargo:rustc-check-cfg=cfg(partybus_no_lab)");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/prereq.rs");
    println!("cargo:rerun-if-env-changed=PARTYBUS_LAB");
    println!("cargo:rerun-if-env-changed=PATH");
    // The uid is no environment variable; USER changes with sudo/su/runuser.
    println!("cargo:rerun-if-env-changed=USER");

    let setting = std::env::var("PARTYBUS_LAB").unwrap_or_default();
    match setting.trim().to_ascii_lowercase().as_str() {
        "required" => {}
        "skip" => no_lab("PARTYBUS_LAB=skip"),
        "" => {
            let missing = prereq::missing();
            if !missing.is_empty() {
                no_lab(&format!("this machine lacks {}", missing.join(", ")));
            }
        }
        _ => {
            eprintln!("PARTYBUS_LAB={setting:?} is not understood: use `required` (lab tests run, and fail if they cannot), `skip` (lab tests are ignored), or leave it unset (ignored only where the lab cannot run)");
            std::process::exit(1);
        }
    }
}

fn no_lab(why: &str) {
    println!("cargo:rustc-cfg=partybus_no_lab");
    println!(
        "cargo:warning=the network-lab tests will be reported as ignored: {why}. \
         PARTYBUS_LAB=required (as .ci/run sets it) runs them, and they fail if they cannot run"
    );
}
