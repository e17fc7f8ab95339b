//! Event payloads: MessagePack.
//!
//! Why MessagePack: it is self-describing (any peer, and the CLI, can decode a
//! payload without knowing its Rust type, which a schema-less bus needs),
//! compact, fast, has a real binary type (Node's `Buffer`) and a standard
//! timestamp extension (Node's `Date`), and has mature implementations in
//! every language. JSON lacks bytes and timestamps; bincode is not
//! self-describing. Structs are encoded as maps with field names
//! (`rmp_serde::to_vec_named`) so that they read naturally as JSON.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod transcode;
pub use transcode::{write_json, MAX_DEPTH};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Errors encoding or decoding a payload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    #[error("cannot encode the payload as MessagePack: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("cannot decode the payload into the requested type: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("the payload is not valid MessagePack: {0}")]
    Invalid(String),
    #[error("cannot convert JSON to a payload: {0}")]
    Json(String),
}

/// Encodes any serde value as a payload.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, PayloadError> {
    Ok(rmp_serde::to_vec_named(value)?)
}

/// Decodes a payload into `T`.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, PayloadError> {
    Ok(rmp_serde::from_slice(bytes)?)
}

/// A point in time that travels as a MessagePack timestamp (extension type
/// -1), the equivalent of partybus' `Date`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp(SystemTime::now())
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        Timestamp(t)
    }
}

const EXT_TIMESTAMP: i8 = -1;

fn ts_to_parts(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let mut secs = -(d.as_secs() as i64);
            let mut nanos = d.subsec_nanos();
            if nanos > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - nanos;
            }
            (secs, nanos)
        }
    }
}

fn ts_from_parts(secs: i64, nanos: u32) -> Option<SystemTime> {
    if nanos >= 1_000_000_000 {
        return None;
    }
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(secs as u64, nanos))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))?.checked_add(Duration::from_nanos(nanos as u64))
    }
}

/// The MessagePack timestamp 96 body: nanoseconds (u32 BE) + seconds (i64 BE).
fn ts_encode(t: SystemTime) -> Vec<u8> {
    let (secs, nanos) = ts_to_parts(t);
    let mut v = Vec::with_capacity(12);
    v.extend_from_slice(&nanos.to_be_bytes());
    v.extend_from_slice(&secs.to_be_bytes());
    v
}

/// Decodes timestamp 32, 64 and 96 bodies.
fn ts_decode(b: &[u8]) -> Option<SystemTime> {
    match b.len() {
        4 => ts_from_parts(u32::from_be_bytes(b.try_into().ok()?) as i64, 0),
        8 => {
            let v = u64::from_be_bytes(b.try_into().ok()?);
            ts_from_parts((v & 0x3_ffff_ffff) as i64, (v >> 34) as u32)
        }
        12 => ts_from_parts(i64::from_be_bytes(b[4..].try_into().ok()?), u32::from_be_bytes(b[..4].try_into().ok()?)),
        _ => None,
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // rmp-serde turns this newtype into a MessagePack extension.
        s.serialize_newtype_struct(rmp_serde::MSGPACK_EXT_STRUCT_NAME, &(EXT_TIMESTAMP, serde_bytes::ByteBuf::from(ts_encode(self.0))))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename = "_ExtStruct")]
        struct Ext((i8, serde_bytes::ByteBuf));
        let Ext((tag, body)) = Ext::deserialize(d)?;
        if tag != EXT_TIMESTAMP {
            return Err(serde::de::Error::custom(format!("expected a timestamp (extension -1), found extension {tag}")));
        }
        ts_decode(&body).map(Timestamp).ok_or_else(|| serde::de::Error::custom("malformed MessagePack timestamp"))
    }
}

/// Converts a payload to JSON for display ([`write_json`] writes the same as
/// text without building a tree, in bounded memory). Values JSON cannot hold keep a
/// marker: binary becomes `{"$base64": "..."}`, a timestamp
/// `{"$date": "RFC 3339"}`, another extension `{"$ext": type, "$base64": ...}`,
/// non-string map keys are rendered as JSON text.
pub fn to_json(bytes: &[u8]) -> Result<serde_json::Value, PayloadError> {
    let mut rd = bytes;
    let v = rmpv::decode::read_value(&mut rd).map_err(|e| PayloadError::Invalid(e.to_string()))?;
    if !rd.is_empty() {
        return Err(PayloadError::Invalid(format!("{} bytes after the value", rd.len())));
    }
    Ok(value_to_json(&v))
}

/// A timestamp extension as RFC 3339 text (milliseconds when not whole
/// seconds); `None` for another extension or a time before 1970.
fn date_text(tag: i8, body: &[u8]) -> Option<String> {
    if tag != EXT_TIMESTAMP {
        return None;
    }
    let d = ts_decode(body)?.duration_since(UNIX_EPOCH).ok()?;
    let secs = UNIX_EPOCH + Duration::from_secs(d.as_secs());
    let base = humantime::format_rfc3339_seconds(secs).to_string();
    let ms = d.subsec_millis();
    Some(if ms == 0 { base } else { format!("{}.{:03}Z", base.trim_end_matches('Z'), ms) })
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn value_to_json(v: &rmpv::Value) -> serde_json::Value {
    use rmpv::Value as V;
    use serde_json::Value as J;
    match v {
        V::Nil => J::Null,
        V::Boolean(b) => J::Bool(*b),
        V::Integer(i) => {
            if let Some(u) = i.as_u64() {
                J::from(u)
            } else {
                J::from(i.as_i64().unwrap_or_default())
            }
        }
        V::F32(f) => serde_json::Number::from_f64(*f as f64).map(J::Number).unwrap_or(J::Null),
        V::F64(f) => serde_json::Number::from_f64(*f).map(J::Number).unwrap_or(J::Null),
        V::String(s) => match s.as_str() {
            Some(s) => J::String(s.to_owned()),
            None => serde_json::json!({ "$base64": b64(s.as_bytes()) }),
        },
        V::Binary(b) => serde_json::json!({ "$base64": b64(b) }),
        V::Array(a) => J::Array(a.iter().map(value_to_json).collect()),
        V::Map(m) => {
            let mut o = serde_json::Map::new();
            for (k, v) in m {
                let key = match k {
                    V::String(s) if s.as_str().is_some() => s.as_str().unwrap_or_default().to_owned(),
                    other => value_to_json(other).to_string(),
                };
                o.insert(key, value_to_json(v));
            }
            J::Object(o)
        }
        V::Ext(tag, body) => {
            if let Some(text) = date_text(*tag, body) {
                return serde_json::json!({ "$date": text });
            }
            serde_json::json!({ "$ext": tag, "$base64": b64(body) })
        }
    }
}

/// Converts JSON (from the CLI) to a payload, honouring the markers that
/// [`to_json`] writes: `{"$base64": s}` becomes binary, `{"$date": s}` a timestamp.
pub fn from_json(j: &serde_json::Value) -> Result<Vec<u8>, PayloadError> {
    let v = json_to_value(j)?;
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &v).map_err(|e| PayloadError::Json(e.to_string()))?;
    Ok(out)
}

fn json_to_value(j: &serde_json::Value) -> Result<rmpv::Value, PayloadError> {
    use rmpv::Value as V;
    use serde_json::Value as J;
    Ok(match j {
        J::Null => V::Nil,
        J::Bool(b) => V::Boolean(*b),
        J::Number(n) => {
            if let Some(u) = n.as_u64() {
                V::from(u)
            } else if let Some(i) = n.as_i64() {
                V::from(i)
            } else {
                V::F64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        J::String(s) => V::from(s.as_str()),
        J::Array(a) => V::Array(a.iter().map(json_to_value).collect::<Result<_, _>>()?),
        J::Object(o) => {
            if o.len() == 1 {
                if let Some(J::String(s)) = o.get("$base64") {
                    let b = base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .map_err(|e| PayloadError::Json(format!("\"$base64\" value is not base64: {e}")))?;
                    return Ok(V::Binary(b));
                }
                if let Some(J::String(s)) = o.get("$date") {
                    let t = humantime::parse_rfc3339_weak(s)
                        .map_err(|e| PayloadError::Json(format!("\"$date\" value {s:?} is not an RFC 3339 date: {e}")))?;
                    return Ok(V::Ext(EXT_TIMESTAMP, ts_encode(t)));
                }
            }
            V::Map(o.iter().map(|(k, v)| Ok((V::from(k.as_str()), json_to_value(v)?))).collect::<Result<_, PayloadError>>()?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Beat {
        n: u32,
        sound: String,
        #[serde(with = "serde_bytes")]
        raw: Vec<u8>,
        at: Timestamp,
    }

    #[test]
    fn typed_round_trip_with_bytes_and_time() {
        let b =
            Beat { n: 7, sound: "utz".into(), raw: vec![0, 1, 255], at: Timestamp(UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789)) };
        let bytes = encode(&b).unwrap();
        let back: Beat = decode(&bytes).unwrap();
        assert_eq!(back, b);
        let j = to_json(&bytes).unwrap();
        assert_eq!(j["n"], 7);
        assert_eq!(j["sound"], "utz");
        assert_eq!(j["raw"]["$base64"], "AAH/");
        assert_eq!(j["at"]["$date"], "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn json_round_trip_with_markers() {
        let j =
            serde_json::json!({"a": [1, -2, 2.5, null, true], "b": {"$base64": "AAH/"}, "c": {"$date": "2023-11-14T22:13:20Z"}, "s": "x"});
        let bytes = from_json(&j).unwrap();
        assert_eq!(to_json(&bytes).unwrap(), j);
        let t: std::collections::HashMap<String, rmpv::Value> = decode(&bytes).unwrap();
        assert!(t.contains_key("c"));
    }

    #[test]
    fn timestamps_before_epoch_and_small_forms() {
        for t in [UNIX_EPOCH - Duration::new(5, 250), UNIX_EPOCH, UNIX_EPOCH + Duration::new(1, 1)] {
            let b = encode(&Timestamp(t)).unwrap();
            assert_eq!(decode::<Timestamp>(&b).unwrap().0, t);
        }
        assert_eq!(ts_decode(&10u32.to_be_bytes()), Some(UNIX_EPOCH + Duration::from_secs(10)));
        let v64: u64 = (5u64 << 34) | 10;
        assert_eq!(ts_decode(&v64.to_be_bytes()), Some(UNIX_EPOCH + Duration::new(10, 5)));
    }

    #[test]
    fn bad_payload_is_an_error() {
        assert!(to_json(&[0x92, 0x01]).is_err(), "truncated array");
        assert!(to_json(&[0x01, 0x02]).is_err(), "trailing bytes");
        assert!(decode::<u32>(&encode("text").unwrap()).is_err());
    }
}
