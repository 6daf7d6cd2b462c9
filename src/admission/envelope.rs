//! A lenient scan of an AdmissionReview envelope for the two fields every reply needs:
//! the top-level `apiVersion` and `request.uid`.
//!
//! Used only when the strict parse failed (NaN or Infinity somewhere in the object, a
//! byte-order mark, bad UTF-8 further on, a body cut short by a limit or a deadline): the
//! API server matches a reply to its request by `response.uid`, so a refusal must carry
//! the uid whenever the body shows one. Only the structure around the two keys must be
//! well-formed; everything else is skipped token by token.

/// The longest uid echoed back from a scan (Kubernetes uids are 36-byte UUIDs).
pub(crate) const MAX_SCANNED_UID: usize = 256;

/// What [`scan`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Envelope {
    pub(crate) api_version: Option<String>,
    pub(crate) uid: Option<String>,
}

/// Scans `body` (possibly invalid or truncated JSON) for `apiVersion` and `request.uid`.
pub(crate) fn scan(body: &[u8]) -> Envelope {
    let mut out = Envelope::default();
    let mut s = Scanner { b: body, i: 0 };
    if s.b.starts_with(b"\xEF\xBB\xBF") {
        s.i = 3;
    }
    s.ws();
    if !s.eat(b'{') {
        return out;
    }
    let _ = s.object(|s, key| match key.as_str() {
        "apiVersion" if s.peek() == Some(b'"') => {
            out.api_version = s.string();
            Some(())
        }
        "request" if s.peek() == Some(b'{') => {
            s.i += 1;
            s.object(|s, key| {
                if key == "uid" && s.peek() == Some(b'"') {
                    out.uid = s
                        .string()
                        .filter(|u| !u.is_empty() && u.len() <= MAX_SCANNED_UID);
                    Some(())
                } else {
                    s.skip_value()
                }
            })
        }
        _ => s.skip_value(),
    });
    out
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    /// The raw extent of a string starting at `"`; `None` if it does not end.
    fn string_raw(&mut self) -> Option<&[u8]> {
        let start = self.i;
        if !self.eat(b'"') {
            return None;
        }
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'\\' => self.i += 1,
                b'"' => return self.b.get(start..self.i),
                _ => {}
            }
        }
        None
    }
    fn string(&mut self) -> Option<String> {
        let raw = self.string_raw()?;
        serde_json::from_slice(raw).ok()
    }
    /// Skips one value of any shape (bare tokens such as `NaN` included).
    fn skip_value(&mut self) -> Option<()> {
        self.ws();
        match self.peek()? {
            b'"' => self.string_raw().map(|_| ()),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string_raw()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                while let Some(c) = self.peek() {
                    if c == b',' || c == b'}' || c == b']' || c.is_ascii_whitespace() {
                        break;
                    }
                    self.i += 1;
                }
                Some(())
            }
        }
    }
    /// Walks the members of an object whose `{` was consumed; `member` reads or skips the
    /// value of each key. Stops at the closing `}` or at the first structural error.
    fn object(&mut self, mut member: impl FnMut(&mut Self, String) -> Option<()>) -> Option<()> {
        loop {
            self.ws();
            if self.eat(b'}') {
                return Some(());
            }
            let key = self.string()?;
            self.ws();
            if !self.eat(b':') {
                return None;
            }
            self.ws();
            member(self, key)?;
            self.ws();
            if !self.eat(b',') {
                return self.eat(b'}').then_some(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(body: &str) -> Option<String> {
        scan(body.as_bytes()).uid
    }

    #[test]
    fn finds_the_uid_in_broken_or_cut_bodies() {
        let ok = Some("u-1".to_string());
        assert_eq!(uid(r#"{"request":{"uid":"u-1"}}"#), ok);
        assert_eq!(
            uid(r#"{"kind":"AdmissionReview","request":{"object":{"x":NaN},"uid":"u-1"}}"#),
            ok
        );
        assert_eq!(uid("\u{feff}{\"request\":{\"uid\":\"u-1\"}}"), ok);
        assert_eq!(uid(r#"{"request":{"uid":"u-1","object":{"spec":{"#), ok);
        assert_eq!(
            uid(r#"{"a":[1,{"request":{"uid":"no"}}],"b":"}\"{","request":{"uid":"u\u002d1"}}"#),
            ok
        );
        assert_eq!(
            scan(br#"{"apiVersion":"admission.k8s.io/v1beta1","request":{"uid":"u-1"}}"#)
                .api_version
                .as_deref(),
            Some("admission.k8s.io/v1beta1")
        );
    }

    #[test]
    fn finds_nothing_where_there_is_nothing() {
        for body in [
            "",
            "[1,2]",
            r#"{"uid":"top-level"}"#,
            r#"{"request":{"object":{"uid":"nested"}}}"#,
            r#"{"request":{"uid":""}}"#,
            r#"{"request":{"uid":1}}"#,
            r#"{"request":{"ui"#,
        ] {
            assert_eq!(uid(body), None, "{body}");
        }
        let long = format!(r#"{{"request":{{"uid":"{}"}}}}"#, "x".repeat(300));
        assert_eq!(uid(&long), None);
    }
}
