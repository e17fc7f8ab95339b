//! MessagePack to JSON text in one pass, without building a tree: printing
//! a payload costs about what its JSON text takes. Through `rmpv::Value` and
//! `serde_json::Value` a 16 MB array of zeros once took 1.17 GB (some 40
//! bytes per element, twice).
//!
//! The same markers as [`super::to_json`]: binary `{"$base64": ...}`, a
//! timestamp `{"$date": ...}`, another extension `{"$base64": ..., "$ext": type}`,
//! a non-string map key as its JSON text. Map entries keep the sender's order.

use std::io::Write as _;

use super::{b64, date_text, PayloadError};

/// Arrays and maps nested deeper than this are refused: the recursion's
/// bound, and serde_json's own (so the text can be read back).
pub const MAX_DEPTH: usize = 128;

/// Appends the JSON text of the MessagePack value `bytes` to `out`. On
/// error `out` may hold part of it.
pub fn write_json(bytes: &[u8], out: &mut Vec<u8>) -> Result<(), PayloadError> {
    let mut r = Reader { rest: bytes };
    value(&mut r, out, 0)?;
    if !r.rest.is_empty() {
        return Err(PayloadError::Invalid(format!("{} bytes after the value", r.rest.len())));
    }
    Ok(())
}

struct Reader<'a> {
    rest: &'a [u8],
}

fn truncated() -> PayloadError {
    PayloadError::Invalid("truncated".into())
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PayloadError> {
        if n > self.rest.len() {
            return Err(truncated());
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn be<const N: usize>(&mut self) -> Result<[u8; N], PayloadError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn len8(&mut self) -> Result<usize, PayloadError> {
        Ok(self.be::<1>()?[0] as usize)
    }

    fn len16(&mut self) -> Result<usize, PayloadError> {
        Ok(u16::from_be_bytes(self.be()?) as usize)
    }

    fn len32(&mut self) -> Result<usize, PayloadError> {
        Ok(u32::from_be_bytes(self.be()?) as usize)
    }

    /// `n` items of at least `each` bytes cannot be in what is left: refused
    /// before any loop runs (a 5-byte array header may claim 4 G elements).
    fn check_items(&self, n: usize, each: usize) -> Result<(), PayloadError> {
        if n.saturating_mul(each) > self.rest.len() {
            return Err(truncated());
        }
        Ok(())
    }
}

fn put(out: &mut Vec<u8>, v: impl serde::Serialize) {
    // Writing to a Vec cannot fail; the values are plain numbers and strings.
    let _ = serde_json::to_writer(out, &v);
}

fn float(out: &mut Vec<u8>, f: f64) {
    match serde_json::Number::from_f64(f) {
        Some(n) => put(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

fn string(out: &mut Vec<u8>, raw: &[u8]) {
    match std::str::from_utf8(raw) {
        Ok(s) => put(out, s),
        Err(_) => binary(out, raw),
    }
}

fn binary(out: &mut Vec<u8>, raw: &[u8]) {
    let _ = write!(out, "{{\"$base64\":\"{}\"}}", b64(raw));
}

fn ext(out: &mut Vec<u8>, tag: i8, body: &[u8]) {
    match date_text(tag, body) {
        Some(text) => {
            out.extend_from_slice(b"{\"$date\":");
            put(out, text);
            out.push(b'}');
        }
        None => {
            let _ = write!(out, "{{\"$base64\":\"{}\",\"$ext\":{tag}}}", b64(body));
        }
    }
}

fn value(r: &mut Reader<'_>, out: &mut Vec<u8>, depth: usize) -> Result<(), PayloadError> {
    let m = r.be::<1>()?[0];
    match m {
        0x00..=0x7f => put(out, m),
        0x80..=0x8f => map(r, out, (m & 0x0f) as usize, depth)?,
        0x90..=0x9f => array(r, out, (m & 0x0f) as usize, depth)?,
        0xa0..=0xbf => string(out, r.take((m & 0x1f) as usize)?),
        0xc0 => out.extend_from_slice(b"null"),
        0xc1 => return Err(PayloadError::Invalid("reserved marker 0xc1".into())),
        0xc2 => out.extend_from_slice(b"false"),
        0xc3 => out.extend_from_slice(b"true"),
        0xc4 => {
            let n = r.len8()?;
            binary(out, r.take(n)?)
        }
        0xc5 => {
            let n = r.len16()?;
            binary(out, r.take(n)?)
        }
        0xc6 => {
            let n = r.len32()?;
            binary(out, r.take(n)?)
        }
        0xc7..=0xc9 => {
            let n = match m {
                0xc7 => r.len8()?,
                0xc8 => r.len16()?,
                _ => r.len32()?,
            };
            let tag = r.be::<1>()?[0] as i8;
            ext(out, tag, r.take(n)?)
        }
        0xca => float(out, f32::from_be_bytes(r.be()?) as f64),
        0xcb => float(out, f64::from_be_bytes(r.be()?)),
        0xcc => put(out, r.be::<1>()?[0]),
        0xcd => put(out, u16::from_be_bytes(r.be()?)),
        0xce => put(out, u32::from_be_bytes(r.be()?)),
        0xcf => put(out, u64::from_be_bytes(r.be()?)),
        0xd0 => put(out, r.be::<1>()?[0] as i8),
        0xd1 => put(out, i16::from_be_bytes(r.be()?)),
        0xd2 => put(out, i32::from_be_bytes(r.be()?)),
        0xd3 => put(out, i64::from_be_bytes(r.be()?)),
        0xd4..=0xd8 => {
            let tag = r.be::<1>()?[0] as i8;
            ext(out, tag, r.take(1 << (m - 0xd4))?)
        }
        0xd9 => {
            let n = r.len8()?;
            string(out, r.take(n)?)
        }
        0xda => {
            let n = r.len16()?;
            string(out, r.take(n)?)
        }
        0xdb => {
            let n = r.len32()?;
            string(out, r.take(n)?)
        }
        0xdc => {
            let n = r.len16()?;
            array(r, out, n, depth)?
        }
        0xdd => {
            let n = r.len32()?;
            array(r, out, n, depth)?
        }
        0xde => {
            let n = r.len16()?;
            map(r, out, n, depth)?
        }
        0xdf => {
            let n = r.len32()?;
            map(r, out, n, depth)?
        }
        0xe0..=0xff => put(out, m as i8),
    }
    Ok(())
}

fn deeper(depth: usize) -> Result<usize, PayloadError> {
    if depth >= MAX_DEPTH {
        return Err(PayloadError::Invalid(format!("nested deeper than {MAX_DEPTH}")));
    }
    Ok(depth + 1)
}

fn array(r: &mut Reader<'_>, out: &mut Vec<u8>, n: usize, depth: usize) -> Result<(), PayloadError> {
    let depth = deeper(depth)?;
    r.check_items(n, 1)?;
    out.push(b'[');
    for i in 0..n {
        if i > 0 {
            out.push(b',');
        }
        value(r, out, depth)?;
    }
    out.push(b']');
    Ok(())
}

fn map(r: &mut Reader<'_>, out: &mut Vec<u8>, n: usize, depth: usize) -> Result<(), PayloadError> {
    let depth = deeper(depth)?;
    r.check_items(n, 2)?;
    out.push(b'{');
    let mut key = Vec::new();
    for i in 0..n {
        if i > 0 {
            out.push(b',');
        }
        // A string key as it is; any other key as its JSON text.
        let before = r.rest;
        let m = r.be::<1>()?[0];
        let short = match m {
            0xa0..=0xbf => Some((m & 0x1f) as usize),
            0xd9 => Some(r.len8()?),
            0xda => Some(r.len16()?),
            0xdb => Some(r.len32()?),
            _ => None,
        };
        match short.map(|n| r.take(n)).transpose()?.map(std::str::from_utf8) {
            Some(Ok(s)) => put(out, s),
            _ => {
                r.rest = before;
                key.clear();
                value(r, &mut key, depth)?;
                put(out, String::from_utf8_lossy(&key));
            }
        }
        out.push(b':');
        value(r, out, depth)?;
    }
    out.push(b'}');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: &[u8]) -> Result<String, PayloadError> {
        let mut out = Vec::new();
        write_json(bytes, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    /// The same JSON as `to_json` (compared as values: map order aside).
    fn same_as_tree(bytes: &[u8]) {
        let tree = super::super::to_json(bytes);
        let flat = text(bytes);
        match (tree, flat) {
            (Ok(t), Ok(f)) => assert_eq!(serde_json::from_str::<serde_json::Value>(&f).unwrap(), t, "{bytes:02x?}: {f}"),
            (Err(_), Err(_)) => {}
            (t, f) => panic!("{bytes:02x?}: tree {t:?}, text {f:?}"),
        }
    }

    #[test]
    fn writes_what_the_tree_writes() {
        let cases: Vec<serde_json::Value> = vec![
            serde_json::json!(null),
            serde_json::json!([1, -1, 200, -200, 70000, -70000, 5_000_000_000u64, -5_000_000_000i64, u64::MAX, i64::MIN]),
            serde_json::json!({"a": 1.5, "b": [true, false, null], "c": {"d": "é\"\\\n"}}),
            serde_json::json!({"$base64": "AAEC"}),
            serde_json::json!({"$date": "2024-02-29T12:00:00.250Z"}),
            serde_json::json!("x".repeat(70_000)),
            serde_json::json!((0..70_000).collect::<Vec<u32>>()),
        ];
        for j in cases {
            same_as_tree(&crate::payload::from_json(&j).unwrap());
        }
        for raw in [
            &b"\xca\x3f\xc0\x00\x00"[..],            // f32
            b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00", // NaN -> null
            b"\xd4\x05\x01",                         // another extension
            b"\xc7\x02\x07ab",                       // ext8
            b"\x81\x01\x02",                         // integer key
            b"\x81\xa2\xff\xfe\x01",                 // non-UTF-8 string key
            b"\x81\x91\xc0\x01",                     // array key
            b"\xa2\xff\xfe",                         // non-UTF-8 string
            b"\xd6\xff\x00\x00\x00\x01",             // timestamp 32
        ] {
            same_as_tree(raw);
        }
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic_nor_a_huge_allocation() {
        for raw in [
            &b""[..],
            b"\xc1",
            b"\xdd\xff\xff\xff\xff",     // 4 G elements claimed
            b"\xdf\xff\xff\xff\xff\x01", // 4 G pairs claimed
            b"\xdb\xff\xff\xff\xff",     // a 4 GB string claimed
            b"\x92\x01",                 // one element short
            b"\x01\x02",                 // bytes after the value
        ] {
            assert!(text(raw).is_err(), "{raw:02x?}");
        }
        let deep = [vec![0x91u8; MAX_DEPTH], vec![0xc0]].concat();
        assert_eq!(text(&deep).unwrap().len(), 2 * MAX_DEPTH + 4);
        let too_deep = [vec![0x91u8; 100_000], vec![0xc0]].concat();
        assert!(text(&too_deep).unwrap_err().to_string().contains("deeper"));
    }

    #[test]
    fn the_text_is_a_small_multiple_of_the_input() {
        // The case that once took 1.17 GB for 16 MB: an array of zeros.
        let n = 1 << 20;
        let mut raw = vec![0xdd];
        raw.extend_from_slice(&(n as u32).to_be_bytes());
        raw.resize(5 + n, 0);
        let mut out = Vec::new();
        write_json(&raw, &mut out).unwrap();
        assert_eq!(out.len(), 2 * n + 1);
    }
}
