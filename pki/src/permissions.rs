//! Per-peer permissions, written into the peer's certificate by the hood:
//! which event selectors the peer may emit and which it may listen to
//! (NATS keeps these in its user JWTs, Nebula its groups in certificates).
//! No extension means everything, as before.
//!
//! The extension (non-critical, so other TLS stacks still take the
//! certificate) has the OID [`PERMISSIONS_OID`] and holds one DER
//! UTF8String: `emit=SEL,SEL;listen=SEL` where either part may be absent
//! (then that side is unrestricted) or empty (`emit=`: nothing). Selectors
//! cannot contain `,`, `;` or `=`. The node checks the selectors themselves.

use std::fmt;

/// 2.25.2532082002072708149: a UUID-form OID (X.667), chosen at random
/// for this extension.
pub const PERMISSIONS_OID: &[u64] = &[2, 25, 2532082002072708149];

/// What a peer may do; `None` on a side: anything.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Permissions {
    /// Selectors of the events the peer may emit.
    pub emit: Option<Vec<String>>,
    /// Selectors of the events the peer may listen to.
    pub listen: Option<Vec<String>>,
}

impl Permissions {
    /// Everything allowed (no extension is written).
    pub fn unrestricted(&self) -> bool {
        self.emit.is_none() && self.listen.is_none()
    }

    /// The extension's text.
    fn text(&self) -> String {
        let side = |key: &str, v: &Option<Vec<String>>| v.as_ref().map(|s| format!("{key}={}", s.join(",")));
        [side("emit", &self.emit), side("listen", &self.listen)].into_iter().flatten().collect::<Vec<_>>().join(";")
    }

    /// Checks that every selector can be written; `Err` names the bad one.
    pub fn check(&self) -> Result<(), String> {
        for s in self.emit.iter().chain(self.listen.iter()).flatten() {
            if s.is_empty() || s.contains([',', ';', '=']) || s.len() > 1024 {
                return Err(format!("selector {s:?} cannot be written into a certificate (empty, over 1024 bytes, or with , ; =)"));
            }
        }
        Ok(())
    }

    /// The extension's DER contents (a UTF8String).
    pub(crate) fn to_der(&self) -> Vec<u8> {
        let text = self.text().into_bytes();
        let mut out = vec![0x0c];
        let n = text.len();
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes = (n as u32).to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            out.push(0x80 | (4 - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
        out.extend_from_slice(&text);
        out
    }

    /// Reads the extension's DER contents.
    pub(crate) fn from_der(der: &[u8]) -> Result<Permissions, String> {
        let (tlv, rest) = crate::der::read(der).ok_or("not DER")?;
        if tlv.tag != 0x0c || !rest.is_empty() {
            return Err("not one UTF8String".into());
        }
        let text = std::str::from_utf8(tlv.value).map_err(|_| "not UTF-8")?;
        let mut p = Permissions::default();
        for part in text.split(';').filter(|s| !s.is_empty()) {
            let (key, list) = part.split_once('=').ok_or_else(|| format!("{part:?} has no '='"))?;
            let sels: Vec<String> = list.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect();
            match key {
                "emit" if p.emit.is_none() => p.emit = Some(sels),
                "listen" if p.listen.is_none() => p.listen = Some(sels),
                _ => return Err(format!("unknown or repeated part {key:?}")),
            }
        }
        Ok(p)
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |v: &Option<Vec<String>>| match v {
            None => "anything".to_owned(),
            Some(s) if s.is_empty() => "nothing".to_owned(),
            Some(s) => s.join(" "),
        };
        write!(f, "may emit {}; may listen to {}", side(&self.emit), side(&self.listen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_der() {
        for p in [
            Permissions { emit: Some(vec!["sensor.#".into()]), listen: None },
            Permissions { emit: Some(vec![]), listen: Some(vec!["a.+".into(), "$SYS.#".into()]) },
            Permissions { emit: Some(vec!["x".repeat(1000)]), listen: Some(vec!["y".into()]) },
        ] {
            assert_eq!(Permissions::from_der(&p.to_der()).unwrap(), p);
        }
        assert!(Permissions::from_der(b"\x0c\x05emit=x").is_err(), "length past the end");
        assert!(Permissions::from_der(b"\x0c\x06foo=ab").is_err());
        assert!(Permissions { emit: Some(vec!["a,b".into()]), listen: None }.check().is_err());
    }
}
