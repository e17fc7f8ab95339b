//! Event names and selectors, exactly as partybus 2.1 defines them, and the
//! matcher that decides whether a selector matches a name.
//!
//! - A **name** matches `^[0-9a-zA-Z$.:_-][0-9a-zA-Z.:_-]*$`: a `$` may only
//!   come first, which marks "system" events (like MQTT's `$SYS`).
//! - A **selector** matches `^[0-9a-zA-Z$.:_+#-][0-9a-zA-Z.:_+#-]*$`. In a
//!   selector `+` matches any run (possibly empty) of characters other than
//!   `.`, and `#` matches any run of characters other than `$`; so `#` never
//!   matches a `$`-name, and `foo+` matches `foobar`.
//!
//! Selectors travel between peers as selectors, never as regular
//! expressions, and are matched here by simulating the (tiny) automaton: time
//! is O(len(name) × len(selector)) in the worst case, with no backtracking, so
//! a hostile selector such as `+++++++++++++x` cannot stall an emitter.

use std::fmt;
use std::sync::Arc;

/// Longest name or selector accepted (bytes).
pub const MAX_NAME_LEN: usize = 1024;

const NAME_CHARS: &str = "0-9 a-z A-Z . : _ - (and $ as the first character)";
const SELECTOR_CHARS: &str = "0-9 a-z A-Z . : _ - + # (and $ as the first character)";

/// Why a name or selector was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    #[error("{kind} is empty; use at least one of the characters {allowed}")]
    Empty { kind: &'static str, allowed: &'static str },
    #[error("{kind} {text:?} is {len} bytes long; the limit is {max}")]
    TooLong { kind: &'static str, text: String, len: usize, max: usize },
    #[error("{kind} {text:?} has the character {ch:?} at position {pos}, which is not allowed; allowed are {allowed}")]
    BadChar { kind: &'static str, text: String, ch: char, pos: usize, allowed: &'static str },
}

fn is_base(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'_' | b'-')
}

/// Bytes allowed anywhere in a name (bit 0) and in a selector (bit 1).
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || matches!(c, b'.' | b':' | b'_' | b'-') {
            t[b] = 3;
        } else if c == b'+' || c == b'#' {
            t[b] = 2;
        }
        b += 1;
    }
    t
};

fn check(text: &str, kind: &'static str, wild: bool, allowed: &'static str) -> Result<(), NameError> {
    // Fast path (the emit hot path): a table lookup per byte; errors are
    // described by the slow path below.
    let bit = if wild { 2 } else { 1 };
    let b = text.as_bytes();
    if !b.is_empty() && b.len() <= MAX_NAME_LEN {
        let body = if b[0] == b'$' { &b[1..] } else { b };
        if body.iter().all(|&c| CLASS[c as usize] & bit != 0) {
            return Ok(());
        }
    }
    if text.is_empty() {
        return Err(NameError::Empty { kind, allowed });
    }
    if text.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            kind,
            text: text.chars().take(40).collect::<String>() + "...",
            len: text.len(),
            max: MAX_NAME_LEN,
        });
    }
    for (pos, ch) in text.char_indices() {
        let ok = ch.is_ascii() && {
            let b = ch as u8;
            is_base(b) || (wild && (b == b'+' || b == b'#')) || (b == b'$' && pos == 0)
        };
        if !ok {
            return Err(NameError::BadChar { kind, text: text.to_owned(), ch, pos, allowed });
        }
    }
    Ok(())
}

/// Checks an event name.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    check(name, "event name", false, NAME_CHARS)
}

/// Checks a selector.
pub fn validate_selector(sel: &str) -> Result<(), NameError> {
    check(sel, "selector", true, SELECTOR_CHARS)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    Lit(u8),
    /// `+`: any run of bytes except `.`
    Plus,
    /// `#`: any run of bytes except `$`
    Hash,
}

/// A validated, compiled selector. Cheap to clone.
#[derive(Clone)]
pub struct Selector {
    text: Arc<str>,
    toks: Arc<[Tok]>,
    wild: bool,
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Selector({:?})", &*self.text)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq for Selector {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}
impl Eq for Selector {}

impl std::str::FromStr for Selector {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::new(s)
    }
}

impl Selector {
    /// Validates and compiles `text`.
    pub fn new(text: &str) -> Result<Selector, NameError> {
        validate_selector(text)?;
        let mut toks: Vec<Tok> = Vec::with_capacity(text.len());
        for b in text.bytes() {
            let t = match b {
                b'+' => Tok::Plus,
                b'#' => Tok::Hash,
                b => Tok::Lit(b),
            };
            // `++` is the same as `+`, `##` as `#`: fold them to keep the automaton small.
            if matches!(t, Tok::Plus | Tok::Hash) && toks.last() == Some(&t) {
                continue;
            }
            toks.push(t);
        }
        let wild = toks.iter().any(|t| !matches!(t, Tok::Lit(_)));
        Ok(Selector { text: text.into(), toks: toks.into(), wild })
    }

    /// What matching this selector against one name can cost, in units of
    /// one automaton state stepped over one byte of the name: 0 for a
    /// literal (one comparison), else its token count plus 16 for the
    /// per-selector overhead. `SubTable` caps a neighbour's total.
    pub fn match_cost(&self) -> usize {
        if self.wild {
            self.toks.len() + 16
        } else {
            0
        }
    }

    /// The selector as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Does this selector match `name`? `name` is assumed valid.
    pub fn matches(&self, name: &str) -> bool {
        if !self.wild {
            return &*self.text == name;
        }
        match_toks(&self.toks, name.as_bytes())
    }
}

/// Simulates the selector's automaton over `name`: state i means "the first
/// i tokens have consumed the input so far". A wildcard state may stay (eat
/// one more byte) or be skipped (match the empty run); a literal must match.
fn match_toks(toks: &[Tok], name: &[u8]) -> bool {
    const INLINE: usize = 128;
    let n = toks.len();
    if n < INLINE {
        let mut a = [false; INLINE];
        let mut b = [false; INLINE];
        run(toks, name, &mut a[..=n], &mut b[..=n])
    } else {
        let mut a = vec![false; n + 1];
        let mut b = vec![false; n + 1];
        run(toks, name, &mut a, &mut b)
    }
}

fn run<'a>(toks: &[Tok], name: &[u8], mut cur: &'a mut [bool], mut next: &'a mut [bool]) -> bool {
    let n = toks.len();
    cur[0] = true;
    // The live states lie in lo..=hi: states only move forward, so a
    // selector whose literal prefix failed costs nothing more, and one that
    // is alive costs what it keeps alive, not its whole length. Entries
    // outside the range may be stale and are never read: lo only grows,
    // and every entry up to hi + 1 is cleared before a step writes it.
    let mut lo = 0;
    let mut hi = close(toks, cur, 0, 0);
    for &c in name {
        let top = (hi + 1).min(n);
        next[lo..=top].fill(false);
        let (mut nlo, mut nhi) = (usize::MAX, 0);
        for i in lo..=hi.min(n.saturating_sub(1)) {
            if !cur[i] {
                continue;
            }
            let to = match toks[i] {
                Tok::Lit(l) if l == c => i + 1,
                Tok::Plus if c != b'.' => i,
                Tok::Hash if c != b'$' => i,
                _ => continue,
            };
            next[to] = true;
            nlo = nlo.min(to);
            nhi = nhi.max(to);
        }
        if nlo == usize::MAX {
            return false;
        }
        nhi = close(toks, next, nlo, nhi);
        std::mem::swap(&mut cur, &mut next);
        (lo, hi) = (nlo, nhi);
    }
    hi == n && cur[n]
}

/// Epsilon closure over the live states `lo..=hi` (a wildcard may match
/// the empty run); returns the new highest live state.
fn close(toks: &[Tok], states: &mut [bool], lo: usize, mut hi: usize) -> usize {
    let mut i = lo;
    while i <= hi && i < toks.len() {
        if states[i] && matches!(toks[i], Tok::Plus | Tok::Hash) {
            states[i + 1] = true;
            hi = hi.max(i + 1);
        }
        i += 1;
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins partybus 2.1 semantics: (selector, name, matches).
    const TABLE: &[(&str, &str, bool)] = &[
        ("foo", "foo", true),
        ("foo", "foobar", false),
        ("foo", "fo", false),
        ("foo+", "foobar", true),
        ("foo+", "foo", true),
        ("foo+", "foo.bar", false),
        ("+", "anything", true),
        ("+", "", true),
        ("+", "a.b", false),
        ("+.+", "a.b", true),
        ("+.+", "a.b.c", false),
        ("a.+.c", "a.b.c", true),
        ("a.+.c", "a..c", true),
        ("a.+.c", "a.b.x.c", false),
        ("#", "a.b.c", true),
        ("#", "$SYS", false),
        ("#", "$", false),
        ("#", "", true),
        ("$SYS.#", "$SYS.cpu.load", true),
        ("$SYS.+", "$SYS.cpu", true),
        ("$SYS.+", "$SYS.cpu.load", false),
        ("a.#", "a.", true),
        ("a.#", "a.b.c.d", true),
        ("a.#", "b.a.c", false),
        ("#.end", "x.y.end", true),
        ("#.end", "x.y.ending", false),
        ("+a+", "bab", true),
        ("+a+", "bbb", false),
        ("+a+", "b.ab", false),
        ("chat.+", "chat.lobby", true),
        ("chat.+", "chat.", true),
        ("chat.+", "chatx.lobby", false),
        ("a#b", "a.x.y.b", true),
        ("a#b", "a$b", false),
        ("a+b#c", "axxb.y.zc", true),
        ("a+b#c", "ax.xbc", false),
        ("$x", "$x", true),
        ("+x", "$x", true), // `+` excludes only `.`, so it may match `$`
        ("-:_", "-:_", true),
        ("++++++++++++++++++++++++++++++x", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaay", false),
        ("+#+#+#+#+#+#+#+#+#+#+#+#+#+#+#+#x", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false),
    ];

    #[test]
    fn selector_table() {
        for &(sel, name, want) in TABLE {
            let s = Selector::new(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(s.matches(name), want, "selector {sel:?} vs name {name:?}");
        }
    }

    #[test]
    fn names() {
        for ok in ["a", "$SYS", "a.b:c_d-e", "0", "-", "$"] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "a$", "a b", "ä", "a+", "a#", "a/b", "$$"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        for ok in ["+", "#", "$SYS.#", "a.+.c", "+$"[..1].as_ref()] {
            validate_selector(ok).unwrap();
        }
        for bad in ["", "a$", "a b", "a/b", "x*"] {
            assert!(validate_selector(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn error_names_char_and_allowed() {
        let e = validate_name("chat room").unwrap_err().to_string();
        assert!(e.contains("' '") && e.contains("position 4") && e.contains("0-9 a-z A-Z"), "{e}");
        let e = validate_selector("a*").unwrap_err().to_string();
        assert!(e.contains("'*'") && e.contains("+ #"), "{e}");
        let e = validate_name(&"a".repeat(MAX_NAME_LEN + 1)).unwrap_err().to_string();
        assert!(e.contains("limit"), "{e}");
    }

    /// What a selector means, by dynamic programming over (token, byte):
    /// slow and obviously right.
    fn oracle(toks: &[Tok], name: &[u8]) -> bool {
        let (n, m) = (toks.len(), name.len());
        let mut dp = vec![vec![false; m + 1]; n + 1];
        dp[n][m] = true;
        for i in (0..n).rev() {
            for j in (0..=m).rev() {
                dp[i][j] = match toks[i] {
                    Tok::Lit(l) => j < m && name[j] == l && dp[i + 1][j + 1],
                    Tok::Plus => dp[i + 1][j] || (j < m && name[j] != b'.' && dp[i][j + 1]),
                    Tok::Hash => dp[i + 1][j] || (j < m && name[j] != b'$' && dp[i][j + 1]),
                };
            }
        }
        dp[0][0]
    }

    #[test]
    fn the_automaton_agrees_with_the_definition() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (sel_chars, name_chars) = (b"ab.$+#", b"ab.$");
        let mut matched = 0;
        for _ in 0..200_000 {
            let sl = rng.random_range(1..10);
            let sel: String = (0..sl).map(|_| sel_chars[rng.random_range(0..sel_chars.len())] as char).collect();
            let nl = rng.random_range(0..12);
            let name: String = (0..nl).map(|_| name_chars[rng.random_range(0..name_chars.len())] as char).collect();
            let Ok(s) = Selector::new(&sel) else { continue };
            let want = oracle(&s.toks, name.as_bytes());
            assert_eq!(s.matches(&name), want, "selector {sel:?} vs name {name:?}");
            matched += usize::from(want);
        }
        assert!(matched > 5_000, "the random cases must exercise matches too: {matched}");
    }

    #[test]
    fn long_hostile_selector_is_fast_enough_to_finish() {
        // Exponential backtracking would never finish this; the automaton does it in microseconds.
        let sel = Selector::new(&("+#".repeat(400) + "x")).unwrap();
        let name = "a".repeat(1000) + "y";
        assert!(!sel.matches(&name));
    }
}
