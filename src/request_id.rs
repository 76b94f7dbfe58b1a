//! Request ids: the client's `X-Request-Id` when it is a sane token, otherwise a new UUID v4.
//! Sent upstream, echoed to the client, written in the access line.

/// Longest client-supplied `X-Request-Id` kept; anything longer is replaced.
const MAX_LEN: usize = 64;

/// A request id, kept as the header value it is sent as (cloning it is a reference count).
#[derive(Clone, Debug)]
pub(crate) struct RequestId(http::HeaderValue);

impl RequestId {
    /// The client's `X-Request-Id` when it is 1 to 64 of `A-Z a-z 0-9 - _ . :`, otherwise a
    /// new UUID v4.
    pub(crate) fn from_client(client: Option<&http::HeaderValue>) -> RequestId {
        match client {
            Some(v)
                if !v.is_empty()
                    && v.len() <= MAX_LEN
                    && v.as_bytes()
                        .iter()
                        .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c)) =>
            {
                RequestId(v.clone())
            }
            _ => {
                let mut buf = [0u8; 36];
                let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
                RequestId(http::HeaderValue::from_str(id).unwrap_or(http::HeaderValue::from_static("-")))
            }
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only the ASCII characters above are ever kept.
        self.0.to_str().unwrap_or_default()
    }

    pub(crate) fn header(&self) -> http::HeaderValue {
        self.0.clone()
    }
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId(http::HeaderValue::from_static(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_request_ids_are_kept_others_replaced() {
        let keep = http::HeaderValue::from_static("req-42_a.b:c");
        assert_eq!(RequestId::from_client(Some(&keep)).as_str(), "req-42_a.b:c");
        for bad in ["", "has space", "quote\"", &"x".repeat(65), "semi;colon"] {
            let v = http::HeaderValue::from_str(bad).unwrap();
            let id = RequestId::from_client(Some(&v));
            assert_ne!(id.as_str(), bad);
            assert!(uuid::Uuid::parse_str(id.as_str()).is_ok(), "{id:?}");
        }
        let fresh = RequestId::from_client(None);
        assert!(uuid::Uuid::parse_str(fresh.as_str()).is_ok());
        assert_eq!(fresh.header().to_str().unwrap(), fresh.as_str());
    }
}
