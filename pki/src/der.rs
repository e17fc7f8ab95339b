//! Just enough DER to split a certificate into the parts a signature check
//! needs, byte-exact (x509-parser gives parsed values; signature checks need
//! the raw `AlgorithmIdentifier` bytes that webpki's algorithms compare).

/// One DER element.
pub(crate) struct Tlv<'a> {
    pub tag: u8,
    /// The contents (without tag and length).
    pub value: &'a [u8],
    /// The whole element (tag, length and contents).
    pub whole: &'a [u8],
}

/// Reads one element from the front of `input`; returns it and the rest.
pub(crate) fn read(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let tag = *input.first()?;
    if tag & 0x1f == 0x1f {
        return None; // multi-byte tags never occur in the parts we read
    }
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *input.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    if end > input.len() {
        return None;
    }
    Some((Tlv { tag, value: &input[header..end], whole: &input[..end] }, &input[end..]))
}

const SEQUENCE: u8 = 0x30;
const BIT_STRING: u8 = 0x03;

fn expect(input: &[u8], tag: u8) -> Option<(Tlv<'_>, &[u8])> {
    let (tlv, rest) = read(input)?;
    (tlv.tag == tag).then_some((tlv, rest))
}

/// A BIT STRING's bytes; only whole-byte bit strings are accepted.
fn bits<'a>(tlv: &Tlv<'a>) -> Option<&'a [u8]> {
    let (&unused, bytes) = tlv.value.split_first()?;
    (unused == 0).then_some(bytes)
}

/// The parts of `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }`.
pub(crate) struct SignedParts<'a> {
    /// The whole TBSCertificate element: the signed message.
    pub tbs: &'a [u8],
    /// Contents of the signatureAlgorithm `AlgorithmIdentifier`.
    pub signature_alg: &'a [u8],
    /// The signature bytes.
    pub signature: &'a [u8],
}

pub(crate) fn signed_parts(cert_der: &[u8]) -> Option<SignedParts<'_>> {
    let (cert, rest) = expect(cert_der, SEQUENCE)?;
    if !rest.is_empty() {
        return None;
    }
    let (tbs, rest) = expect(cert.value, SEQUENCE)?;
    let (alg, rest) = expect(rest, SEQUENCE)?;
    let (sig, rest) = expect(rest, BIT_STRING)?;
    if !rest.is_empty() {
        return None;
    }
    Some(SignedParts { tbs: tbs.whole, signature_alg: alg.value, signature: bits(&sig)? })
}

/// The parts of `SubjectPublicKeyInfo ::= SEQUENCE { algorithm, subjectPublicKey }`.
pub(crate) struct SpkiParts<'a> {
    /// Contents of the algorithm `AlgorithmIdentifier`.
    pub alg: &'a [u8],
    /// The subjectPublicKey bytes.
    pub key: &'a [u8],
}

pub(crate) fn spki_parts(spki_der: &[u8]) -> Option<SpkiParts<'_>> {
    let (spki, rest) = expect(spki_der, SEQUENCE)?;
    if !rest.is_empty() {
        return None;
    }
    let (alg, rest) = expect(spki.value, SEQUENCE)?;
    let (key, rest) = expect(rest, BIT_STRING)?;
    if !rest.is_empty() {
        return None;
    }
    Some(SpkiParts { alg: alg.value, key: bits(&key)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_lengths() {
        let (t, rest) = read(&[0x04, 0x02, 1, 2, 9]).unwrap();
        assert_eq!((t.tag, t.value, rest), (4, &[1u8, 2][..], &[9u8][..]));
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend(std::iter::repeat_n(7u8, 0x80));
        let (t, rest) = read(&long).unwrap();
        assert_eq!(t.value.len(), 0x80);
        assert!(rest.is_empty());
    }

    #[test]
    fn truncated_and_garbage_are_none() {
        assert!(read(&[]).is_none());
        assert!(read(&[0x30]).is_none());
        assert!(read(&[0x30, 0x05, 1]).is_none());
        assert!(read(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
        assert!(signed_parts(b"hello world").is_none());
        assert!(spki_parts(&[0x30, 0x00]).is_none());
    }
}
