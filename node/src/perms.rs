//! A peer's permissions, as its certificate states them
//! (`partybus_pki::Permissions`), compiled into selectors: which events it
//! may emit (checked by the reader on receipt: others are dropped and
//! counted) and which it may listen to (checked when routing: others are
//! never sent to it, whatever it subscribed).

use std::sync::Arc;

use crate::name::Selector;

#[derive(Debug)]
pub(crate) struct PeerPerms {
    /// `None`: anything.
    emit: Option<Vec<Selector>>,
    listen: Option<Vec<Selector>>,
}

/// A side's selectors; one the node cannot read allows nothing.
fn compile(side: Option<Vec<String>>) -> Option<Vec<Selector>> {
    side.map(|v| v.iter().filter_map(|s| Selector::new(s).ok()).collect())
}

impl PeerPerms {
    /// The permissions in the certificate of `conn`'s peer; `None` when it
    /// may do anything (no extension).
    pub(crate) fn of_conn(conn: &quinn::Connection) -> Option<Arc<PeerPerms>> {
        let chain = conn.peer_identity()?.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>().ok()?;
        Self::of(partybus_pki::peer_permissions(chain.first()?)?)
    }

    pub(crate) fn of(p: partybus_pki::Permissions) -> Option<Arc<PeerPerms>> {
        (!p.unrestricted()).then(|| Arc::new(PeerPerms { emit: compile(p.emit), listen: compile(p.listen) }))
    }

    pub(crate) fn may_emit(&self, name: &str) -> bool {
        self.emit.as_ref().is_none_or(|s| s.iter().any(|s| s.matches(name)))
    }

    pub(crate) fn may_listen(&self, name: &str) -> bool {
        self.listen.as_ref().is_none_or(|s| s.iter().any(|s| s.matches(name)))
    }

    pub(crate) fn listen_restricted(&self) -> bool {
        self.listen.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_are_separate_and_unreadable_selectors_allow_nothing() {
        let p =
            PeerPerms::of(partybus_pki::Permissions { emit: Some(vec!["sensor.#".into(), "bad selector".into()]), listen: None }).unwrap();
        assert!(p.may_emit("sensor.kitchen.temp") && !p.may_emit("alarm.fire"));
        assert!(p.may_listen("anything") && !p.listen_restricted());
        let none = PeerPerms::of(partybus_pki::Permissions { emit: Some(vec!["bad selector".into()]), listen: Some(vec![]) }).unwrap();
        assert!(!none.may_emit("bad") && !none.may_listen("x"));
        assert!(PeerPerms::of(partybus_pki::Permissions::default()).is_none());
    }
}
