//! Reloading a running node's configuration (SIGHUP, `partybus status
//! --reload`): the config file is read again and merged with the flags the
//! node started with (flags stay in force over the file, as at start), then
//! checked in full, and only then applied. A config that does not load,
//! resolve or check leaves the node as it was.
//!
//! What a reload applies ([`Reloadable`]): the static peer list (`connect`),
//! the limits `queue_limit`, `max_event_size`, `max_subscriptions_per_peer`,
//! the log filter (`log`), the node's certificate and key (rotation), and
//! the revocation list (`revoked`).
//! Everything else (port, bind, discovery services, relays, the hood CA,
//! ...) needs a restart: a reload that changes it says so and leaves it.

use anyhow::{bail, Context, Result};
use partybus::Bus;
use tokio::sync::watch;

use super::control::protocol::ReloadOutcome;
use super::logs::LogHandle;
use super::opts::{NodeOpts, Resolved};

/// Everything a reload applies, loaded and checked before any of it is
/// applied. To make more settings reloadable, add a field here, fill it in
/// [`Reloader::load`] (fail there, not later) and apply it in
/// [`Reloader::apply`].
///
/// The revocation list (`--revoked FILE` / config `revoked`) is read and its
/// signature checked in `load` (by `NodeOpts::config_from`), so a forged
/// list is refused like any other bad config.
pub struct Reloadable {
    resolved: Resolved,
    queue_limit: usize,
    max_event_size: usize,
    max_subscriptions_per_peer: usize,
    identity: partybus::pki::Identity,
    revoked: Option<partybus::pki::RevocationList>,
}

/// A node's reload state: the flags it started with, what is in force.
pub struct Reloader {
    opts: NodeOpts,
    current: Resolved,
    static_peers: watch::Sender<Vec<String>>,
    logs: Option<LogHandle>,
}

/// The settings a reload does not apply, by name, when they differ.
fn restart_needed(old: &Resolved, new: &Resolved) -> Vec<String> {
    let mut out = Vec::new();
    macro_rules! fields {
        ($($f:ident),*) => {$(
            if old.$f != new.$f {
                out.push(format!("{}: {:?} -> {:?}", stringify!($f), old.$f, new.$f));
            }
        )*};
    }
    fields!(
        port,
        bind,
        advertise,
        allow_non_global,
        idle_timeout,
        keep_alive,
        congestion,
        connect_interval,
        mdns,
        port_mapping,
        dht,
        dht_serve,
        socket_buffer,
        express_max,
        full_policy,
        relay_serve,
        relay_limits,
        relays,
        control,
        metrics
    );
    out
}

impl Reloader {
    pub fn new(opts: NodeOpts, current: Resolved, static_peers: watch::Sender<Vec<String>>, logs: Option<LogHandle>) -> Reloader {
        Reloader { opts, current, static_peers, logs }
    }

    /// Reads and checks the config as a reload would, applying nothing.
    pub fn load(&self, bus: &Bus) -> Result<Reloadable> {
        let resolved = self.opts.resolve()?;
        if let Some(f) = &resolved.log {
            super::logs::parse(f)?;
        }
        // Everything the node checks at start: the CA, the certificate and
        // its key (issued by the hood, valid now, matching), the limits.
        let cfg = NodeOpts::config_from(resolved.clone(), Some(watch::channel(Vec::new()).1))?;
        cfg.validate()?;
        if cfg.hood.fingerprint() != bus.fingerprint() {
            bail!(
                "the CA {} is hood {}, this node is in hood {}; a node cannot change hoods by reload (restart it)",
                resolved.ca.display(),
                cfg.hood.fingerprint(),
                bus.fingerprint()
            );
        }
        if cfg.identity.name() != bus.me().name {
            bail!(
                "the certificate {} is for {:?}, this node is {:?}; a rotated certificate keeps the name (restart the node to rename it)",
                resolved.cert.display(),
                cfg.identity.name(),
                bus.me().name
            );
        }
        Ok(Reloadable {
            queue_limit: cfg.queue_limit,
            max_event_size: cfg.max_event_size,
            max_subscriptions_per_peer: cfg.max_subscriptions_per_peer,
            identity: cfg.identity,
            revoked: cfg.revoked,
            resolved,
        })
    }

    /// Applies a loaded config. The one step that can still fail (the new
    /// key not usable by TLS) goes first, so a failure applies nothing.
    pub fn apply(&mut self, bus: &Bus, new: Reloadable) -> Result<ReloadOutcome> {
        let mut out = ReloadOutcome::default();
        let new_cert = partybus::pki::CertInfo::from_der(new.identity.cert_der(), "the new certificate")?;
        let old_cert = bus.certificate();
        if old_cert.as_ref().map(|c| &c.fingerprint) != Some(&new_cert.fingerprint) {
            bus.rotate_identity(new.identity).context("cannot take the new certificate")?;
            out.applied.push(format!(
                "certificate: serial {} (valid until {}) replaces serial {}",
                new_cert.serial,
                new_cert.not_after,
                old_cert.map(|c| c.serial).unwrap_or_default()
            ));
        }
        let r = &new.resolved;
        if r.connect != self.current.connect {
            let added: Vec<_> = r.connect.iter().filter(|t| !self.current.connect.contains(t)).cloned().collect();
            let removed: Vec<_> = self.current.connect.iter().filter(|t| !r.connect.contains(t)).cloned().collect();
            self.static_peers.send_replace(r.connect.clone());
            out.applied.push(format!("connect: added {added:?}, removed {removed:?}"));
        }
        if (r.queue_limit, r.max_event_size, r.max_subscriptions_per_peer)
            != (self.current.queue_limit, self.current.max_event_size, self.current.max_subscriptions_per_peer)
        {
            bus.set_limits(new.queue_limit, new.max_event_size, new.max_subscriptions_per_peer);
            out.applied.push(format!(
                "limits: queue_limit {} (for new neighbours), max_event_size {}, max_subscriptions_per_peer {}",
                new.queue_limit, new.max_event_size, new.max_subscriptions_per_peer
            ));
        }
        if let Some(list) = &new.revoked {
            let current = bus.revocation_sequence();
            if list.sequence() > current {
                bus.set_revocations(list).context("cannot apply the revocation list")?;
                out.applied.push(format!(
                    "revoked: sequence {} ({} certificates) replaces sequence {current}",
                    list.sequence(),
                    list.len()
                ));
            } else if list.sequence() < current {
                // A newer list reached the node from a neighbour meanwhile.
                out.applied.push(format!("revoked: keeping sequence {current}, newer than the file's {}", list.sequence()));
            }
        }
        if let Some(logs) = &self.logs {
            if logs.apply(r.log.as_deref(), "info")? {
                out.applied.push(format!("log: {}", r.log.as_deref().unwrap_or("info")));
            }
        }
        out.restart_needed = restart_needed(&self.current, r);
        self.current = new.resolved;
        Ok(out)
    }

    /// [`Reloader::load`] and [`Reloader::apply`].
    pub fn reload(&mut self, bus: &Bus) -> Result<ReloadOutcome> {
        let new = self.load(bus)?;
        self.apply(bus, new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_needed_names_the_settings_a_reload_leaves() {
        let old = Resolved::default();
        let mut new = old.clone();
        new.connect = vec!["127.0.0.1:1".into()];
        new.queue_limit = Some(1);
        assert!(restart_needed(&old, &new).is_empty(), "reloadable settings");
        new.mdns = true;
        new.port = Some(partybus::PortSpec::single(1));
        let names: Vec<_> = restart_needed(&old, &new).iter().map(|s| s.split(':').next().unwrap().to_owned()).collect();
        assert_eq!(names, ["port", "mdns"]);
    }
}
