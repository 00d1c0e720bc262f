//! What rejoin's own outbound HTTP requests (webhook deliveries, JWKS
//! fetches) share: one line describing a transport error.

/// A transport error in a line, without the URL (it may carry credentials):
/// what failed and its root cause.
pub fn describe(e: reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let e = e.without_url();
    let mut root = None;
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        root = Some(s.to_string());
        source = s.source();
    }
    format!("{what}: {}", root.unwrap_or_else(|| e.to_string()))
}
