//! Percent-encoding (RFC 3986), as URLs' userinfo and the OpenTelemetry `key=value` lists use it.

/// Percent-encodes everything but RFC 3986's unreserved characters (safe in a URL's userinfo).
pub(crate) fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Decodes `%XX` escapes; a malformed escape is kept as it is.
pub(crate) fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn what_is_encoded_decodes_back_and_malformed_escapes_stay() {
        let text = "p@ss:w/rd %zz ü";
        assert_eq!(super::decode(&super::encode(text)), text);
        assert_eq!(super::decode("a%2Cb%zz%4"), "a,b%zz%4");
    }
}
