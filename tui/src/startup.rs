//! Checks before the dashboard takes the terminal: a URL it can use, and a key the gateway
//! takes. What cannot work exits with the reason; a gateway that is merely not up yet does not
//! stop the start (the dashboard shows it as disconnected and keeps trying).

use std::time::Duration;

use pile_api::{Client, ClientError};

/// `127.0.0.1:7055` → `http://127.0.0.1:7055`; a scheme other than http(s), a URL without a
/// host, or one with a query or fragment is refused with the reason. A trailing `/` goes.
pub fn normalize_url(flag: &str, input: &str) -> Result<String, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err(format!(
            "{flag}: empty; give the address, like http://127.0.0.1:7055"
        ));
    }
    let with_scheme = if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    };
    let url =
        reqwest::Url::parse(&with_scheme).map_err(|e| format!("{flag} {s:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "{flag} {s:?}: scheme {:?} is not supported; use http:// or https://",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{flag} {s:?} has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{flag} {s:?}: leave out the query and fragment"));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// One call to `/api/v1/admin/stats` before start. `Err` is a reason to exit: the key is
/// refused (401/403), or the address answers but is no pilekit gateway (404). `Ok(Some(..))`
/// says why the gateway is not reachable yet, which is no reason to stop.
pub async fn check_gateway(client: &Client, timeout: Duration) -> Result<Option<String>, String> {
    let base = client.base_url().to_string();
    match tokio::time::timeout(timeout, client.stats()).await {
        Err(_) => Ok(Some(format!("{base} did not answer within {timeout:?}"))),
        Ok(Ok(_)) => Ok(None),
        Ok(Err(e)) => match e.status() {
            Some(s @ (401 | 403)) => Err(format!(
                "the gateway at {base} refused the API key (HTTP {s}: {}); check --api-key or PILE_API_KEY",
                e.message()
            )),
            Some(404) => Err(format!(
                "{base} answered 404 for /api/v1/admin/stats: is it a pilekit gateway (and the right port)?"
            )),
            Some(s) => Ok(Some(format!("{base} answered HTTP {s}: {}", e.message()))),
            None => Ok(Some(match &e {
                ClientError::Transport(_) => crate::net::describe(&e),
                other => other.to_string(),
            })),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_without_a_scheme_gets_http_and_bad_ones_are_refused() {
        let n = |s: &str| normalize_url("--server", s);
        assert_eq!(n("127.0.0.1:7055").as_deref(), Ok("http://127.0.0.1:7055"));
        assert_eq!(n("localhost:7055/").as_deref(), Ok("http://localhost:7055"));
        assert_eq!(n("https://gw.example").as_deref(), Ok("https://gw.example"));
        assert_eq!(
            n("http://gw.example:8080/pile/").as_deref(),
            Ok("http://gw.example:8080/pile")
        );
        assert!(n("ftp://gw.example").unwrap_err().contains("scheme"));
        assert!(n("").unwrap_err().contains("empty"));
        assert!(n("http://").is_err());
        assert!(n("http://gw/?x=1").unwrap_err().contains("query"));
    }
}
