//! `${VAR}` in config values, expanded from the environment at start.

use http::HeaderValue;

/// Expands `${VAR}` from the environment. An unset variable is an error; the expanded value
/// is a secret and never appears in an error message.
pub(super) fn expand_env(template: &str) -> Result<HeaderValue, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or("unterminated ${...}")?;
        let var = &after[..end];
        if var.is_empty() || !var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("${{{var}}} is not a valid variable name"));
        }
        let value = std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    HeaderValue::from_str(&out)
        .map_err(|_| "the value (after expansion) is not a valid header value".to_string())
}
