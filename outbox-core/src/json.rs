//! A JSON syntax check (RFC 8259) for payloads read back from a store.
//!
//! Stores keep JSON payloads as the bytes `serde_json` wrote at commit
//! time; reading them back only has to confirm they are still JSON (a
//! torn or tampered row is [`crate::Error::Corrupted`], not a payload a
//! consumer chokes on later). This checks the grammar and nothing else: it
//! builds no values, needs no recursion (nesting depth is bounded only by
//! memory, so any payload `serde_json` could write is accepted back), and
//! it is a fraction of the size of a `serde_json` deserializer, which
//! matters in a browser bundle.

/// Whether `bytes` are one JSON text: UTF-8, a single value with optional
/// whitespace around it.
pub(crate) fn is_json(bytes: &[u8]) -> bool {
    if std::str::from_utf8(bytes).is_err() {
        return false;
    }
    let mut p = Cursor { b: bytes, i: 0 };
    // The containers open around the current position: the byte that
    // closes each (`}` or `]`).
    let mut open: Vec<u8> = Vec::new();
    p.ws();
    loop {
        // A value is expected here.
        let ok = match p.peek() {
            Some(b'{') => {
                p.i += 1;
                p.ws();
                if !p.eat(b'}') {
                    open.push(b'}');
                    if !p.key() {
                        return false;
                    }
                    continue;
                }
                true
            }
            Some(b'[') => {
                p.i += 1;
                p.ws();
                if !p.eat(b']') {
                    open.push(b']');
                    continue;
                }
                true
            }
            Some(b'"') => p.string(),
            Some(b't') => p.word(b"true"),
            Some(b'f') => p.word(b"false"),
            Some(b'n') => p.word(b"null"),
            Some(b'-' | b'0'..=b'9') => p.number(),
            _ => false,
        };
        if !ok {
            return false;
        }
        // After a value: close containers, or move to the next element.
        loop {
            p.ws();
            let Some(&close) = open.last() else { return p.i == p.b.len() };
            if p.eat(b',') {
                p.ws();
                if close == b'}' && !p.key() {
                    return false;
                }
                break;
            }
            if !p.eat(close) {
                return false;
            }
            open.pop();
        }
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
        if hit {
            self.i += 1;
        }
        hit
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// A member's name and its colon, with whitespace after.
    fn key(&mut self) -> bool {
        if self.peek() != Some(b'"') || !self.string() {
            return false;
        }
        self.ws();
        let colon = self.eat(b':');
        self.ws();
        colon
    }

    fn word(&mut self, w: &[u8]) -> bool {
        let hit = self.b.get(self.i..self.i + w.len()) == Some(w);
        if hit {
            self.i += w.len();
        }
        hit
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - start
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> bool {
        self.eat(b'-');
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return false,
        }
        if self.eat(b'.') && self.digits() == 0 {
            return false;
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if self.digits() == 0 {
                return false;
            }
        }
        true
    }

    /// A string from its opening quote: no raw control characters, only
    /// the escapes JSON has.
    fn string(&mut self) -> bool {
        self.i += 1;
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => return true,
                b'\\' => match self.peek() {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                    Some(b'u') => {
                        self.i += 1;
                        for _ in 0..4 {
                            if !self.peek().is_some_and(|h| h.is_ascii_hexdigit()) {
                                return false;
                            }
                            self.i += 1;
                        }
                    }
                    _ => return false,
                },
                0..=0x1f => return false,
                _ => {}
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::is_json;
    use crate::SplitMix64;
    use serde::de::IgnoredAny;

    #[test]
    fn accepts_what_serde_json_writes() {
        let values = [
            serde_json::json!(null),
            serde_json::json!(true),
            serde_json::json!(-0.5e-7),
            serde_json::json!(u64::MAX),
            serde_json::json!(i64::MIN),
            serde_json::json!("quote \" backslash \\ control \u{1} tab \t emoji \u{1F600} nul \u{0}"),
            serde_json::json!({"a": [1, {"b": []}, {}], "": "", "c": {"d": null}}),
            serde_json::json!([[], [[]], {"x": [{"y": 1.25}]}]),
        ];
        for v in values {
            let compact = serde_json::to_vec(&v).unwrap();
            let pretty = serde_json::to_vec_pretty(&v).unwrap();
            assert!(is_json(&compact), "{}", String::from_utf8_lossy(&compact));
            assert!(is_json(&pretty), "{}", String::from_utf8_lossy(&pretty));
        }
    }

    #[test]
    fn refuses_what_is_not_json() {
        let bad: &[&[u8]] = &[
            b"",
            b" ",
            b"{",
            b"}",
            b"[1,]",
            b"{\"a\":1,}",
            b"{\"a\" 1}",
            b"{1:2}",
            b"[1 2]",
            b"01",
            b"1.",
            b".5",
            b"1e",
            b"-",
            b"+1",
            b"tru",
            b"nul",
            b"\"abc",
            b"\"\\x\"",
            b"\"\\u12g4\"",
            b"\"a\nb\"",
            b"1 2",
            b"[]]",
            b"{}{}",
            b"\"\xff\"",
            b"NaN",
        ];
        for b in bad {
            assert!(!is_json(b), "{}", String::from_utf8_lossy(b));
        }
    }

    #[test]
    fn nesting_deeper_than_serde_json_reads_is_accepted_without_recursion() {
        let depth = 100_000;
        let mut deep = "[".repeat(depth);
        deep.push_str(&"]".repeat(depth));
        assert!(is_json(deep.as_bytes()));
        deep.pop();
        assert!(!is_json(deep.as_bytes()));
    }

    /// Random texts over JSON's alphabet, judged by both checkers: they
    /// must agree on every one (nesting kept under serde_json's limit).
    #[test]
    fn agrees_with_serde_json_on_random_texts() {
        const PIECES: &[&str] = &[
            "{", "}", "[", "]", ",", ":", "\"", "\"k\"", "\"v\"", "0", "1", "9", "-", ".", "e", "E", "+",
            "true", "false", "null", "tru", " ", "\n", "\\", "\\n", "\\u0041", "\\u00", "x", "\t",
        ];
        let mut rng = SplitMix64::new(7);
        let (mut valid, mut invalid) = (0, 0);
        for _ in 0..200_000 {
            let n = 1 + (rng.next_u64() % 12) as usize;
            let text: String =
                (0..n).map(|_| PIECES[(rng.next_u64() % PIECES.len() as u64) as usize]).collect();
            let ours = is_json(text.as_bytes());
            let theirs = serde_json::from_slice::<IgnoredAny>(text.as_bytes()).is_ok();
            assert_eq!(ours, theirs, "{text:?}");
            if ours {
                valid += 1;
            } else {
                invalid += 1;
            }
        }
        // The generator reaches both sides of the line.
        assert!(valid > 1_000 && invalid > 1_000, "{valid} valid, {invalid} invalid");
    }
}
