//! What the sink sends: the JSON body of an event (or of a batch) and the
//! checks a header must pass. Written by hand (no serde derive, no base64
//! crate): the browser build stays small.

use outbox_core::{Envelope, PayloadKind};

/// Appends the JSON object of one event to `out`:
/// `{"id","origin","key","type","schema_version","created_at","headers","payload"}`.
/// A JSON payload is spliced in as it is stored (the core guarantees it is
/// valid JSON); a bytes payload is `{"base64": "..."}`.
pub(crate) fn write_event(out: &mut Vec<u8>, e: &Envelope) {
    out.extend_from_slice(b"{\"id\":");
    write_string(out, &e.id.to_string());
    out.extend_from_slice(b",\"origin\":");
    write_string(out, e.origin.as_str());
    out.extend_from_slice(b",\"key\":");
    write_string(out, e.key.as_str());
    out.extend_from_slice(b",\"type\":");
    write_string(out, &e.event_type);
    out.extend_from_slice(b",\"schema_version\":");
    out.extend_from_slice(e.schema_version.to_string().as_bytes());
    out.extend_from_slice(b",\"created_at\":");
    out.extend_from_slice(e.created_at.as_millis().to_string().as_bytes());
    out.extend_from_slice(b",\"headers\":{");
    for (i, (name, value)) in e.headers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(out, name);
        out.push(b':');
        write_string(out, value);
    }
    out.extend_from_slice(b"},\"payload\":");
    match e.payload.kind() {
        PayloadKind::Json => out.extend_from_slice(e.payload.as_bytes()),
        // Bytes, and any kind a later core adds: carried opaque.
        _ => {
            out.extend_from_slice(b"{\"base64\":\"");
            write_base64(out, e.payload.as_bytes());
            out.extend_from_slice(b"\"}");
        }
    }
    out.push(b'}');
}

/// The body of a per-event request.
pub(crate) fn event_body(e: &Envelope) -> Vec<u8> {
    let mut out = Vec::with_capacity(e.payload.len() + 256);
    write_event(&mut out, e);
    out
}

/// The body of a batch request: a JSON array of events, in order.
pub(crate) fn batch_body(events: &[Envelope]) -> Vec<u8> {
    let mut out = Vec::with_capacity(events.iter().map(|e| e.payload.len() + 256).sum::<usize>() + 2);
    out.push(b'[');
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_event(&mut out, e);
    }
    out.push(b']');
    out
}

/// A JSON string literal.
fn write_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            // UTF-8 bytes (a &str) pass through: JSON text is UTF-8.
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// Standard base64 (RFC 4648 §4) with padding.
pub(crate) fn write_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sym = |v: u32| ALPHABET[(v & 63) as usize];
    let mut chunks = bytes.chunks_exact(3);
    for c in &mut chunks {
        let v = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
        out.extend_from_slice(&[sym(v >> 18), sym(v >> 12), sym(v >> 6), sym(v)]);
    }
    match *chunks.remainder() {
        [a] => {
            let v = u32::from(a) << 16;
            out.extend_from_slice(&[sym(v >> 18), sym(v >> 12), b'=', b'=']);
        }
        [a, b] => {
            let v = (u32::from(a) << 16) | (u32::from(b) << 8);
            out.extend_from_slice(&[sym(v >> 18), sym(v >> 12), sym(v >> 6), b'=']);
        }
        _ => {}
    }
}

/// Why a header cannot be sent, if it cannot: its name must be an HTTP
/// token (RFC 9110 §5.6.2), its value visible ASCII, spaces and tabs (what
/// both `reqwest` and a browser's `Headers` accept).
pub(crate) fn check_header(name: &str, value: &str) -> Result<(), String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(tchar) {
        return Err(format!("header name {name:?} is not an HTTP token"));
    }
    if !value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) {
        return Err(format!("the value of header {name:?} holds a character HTTP headers cannot carry"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use outbox_core::{ActorId, NewEvent, OrderingKey, Payload, Timestamp};

    fn b64(bytes: &[u8]) -> String {
        let mut out = Vec::new();
        write_base64(&mut out, bytes);
        String::from_utf8(out).expect("ascii")
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(b64(input.as_bytes()), want, "{input:?}");
        }
        assert_eq!(b64(&[0xff, 0xfe, 0x00, 0x3e, 0x3f]), "//4APj8=");
    }

    #[test]
    fn event_json_has_every_field_and_escapes_strings() {
        let origin = ActorId::new("form \"1\"").expect("actor");
        let e = NewEvent::json(origin, "FORM_SAVED\n", &serde_json::json!({"a": [1, "é"]}))
            .expect("json")
            .with_key(OrderingKey::new("k\\1").expect("key"))
            .with_header("traceparent", "00-abc-def-01")
            .with_header("ctl", "\u{1}\u{7f}")
            .with_schema_version(3);
        let env = Envelope::committed(e, Timestamp::from_millis(1_700_000_000_123));
        let v: serde_json::Value = serde_json::from_slice(&event_body(&env)).expect("valid JSON");
        assert_eq!(v["id"], env.id.to_string());
        assert_eq!(v["origin"], "form \"1\"");
        assert_eq!(v["key"], "k\\1");
        assert_eq!(v["type"], "FORM_SAVED\n");
        assert_eq!(v["schema_version"], 3);
        assert_eq!(v["created_at"], 1_700_000_000_123_i64);
        assert_eq!(v["headers"]["traceparent"], "00-abc-def-01");
        assert_eq!(v["headers"]["ctl"], "\u{1}\u{7f}");
        assert_eq!(v["payload"], serde_json::json!({"a": [1, "é"]}));
        assert_eq!(v.as_object().map(|o| o.len()), Some(8));
    }

    #[test]
    fn bytes_payloads_are_base64_and_batches_are_arrays() {
        let a = ActorId::new("a").expect("actor");
        let bytes = Envelope::committed(
            NewEvent::new(a.clone(), "B", Payload::bytes(vec![0, 1, 2, 253, 254, 255])),
            Timestamp::from_millis(0),
        );
        let json = Envelope::committed(NewEvent::json(a, "J", &7).expect("json"), Timestamp::from_millis(0));
        let v: serde_json::Value =
            serde_json::from_slice(&batch_body(&[bytes.clone(), json.clone()])).expect("valid JSON");
        assert_eq!(v[0]["payload"], serde_json::json!({"base64": "AAEC/f7/"}));
        assert_eq!(v[0]["headers"], serde_json::json!({}));
        assert_eq!(v[1]["payload"], 7);
        assert_eq!(v[1]["id"], json.id.to_string());
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&batch_body(&[])).expect("json"),
            serde_json::json!([])
        );
    }

    #[test]
    fn headers_are_checked() {
        assert!(check_header("Authorization", "Bearer abc.def-_~+/=").is_ok());
        assert!(check_header("X-Tab", "a\tb c").is_ok());
        assert!(check_header("Empty-Value", "").is_ok());
        for (name, value) in [
            ("", "v"),
            ("Bad Name", "v"),
            ("Bad:Name", "v"),
            ("Ünï", "v"),
            ("X", "a\r\nb"),
            ("X", "\0"),
            ("X", "é"),
            ("X", "\u{7f}"),
        ] {
            assert!(check_header(name, value).is_err(), "{name:?}: {value:?}");
        }
    }
}
