//! The token a server off the loopback interface requires: `Authorization: Bearer T`, or
//! the `msa_token` cookie, which a page opened once with `?token=T` receives.

use super::error::ApiError;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;

const COOKIE: &str = "msa_token";

pub async fn require_token(
    State(token): State<Arc<String>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if request.uri().path() == "/api/health" {
        return Ok(next.run(request).await);
    }
    let from_query = query_token(request.uri().query().unwrap_or(""));
    let presented = bearer(request.headers())
        .or_else(|| cookie(request.headers()))
        .or(from_query.clone());
    if !presented.is_some_and(|t| same(&t, &token)) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this server needs its token: open the page with ?token=T, or send \
             `Authorization: Bearer T`",
        ));
    }
    let mut response = next.run(request).await;
    if from_query.is_some() {
        let value = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    Ok(response)
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ").map(|t| t.trim().to_string())
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            kv.trim()
                .strip_prefix(&format!("{COOKIE}="))
                .map(str::to_string)
        })
}

fn query_token(query: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(str::to_string)
}

/// Compares in time independent of where the strings differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_read_from_header_cookie_and_query() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("x=1; msa_token=def"),
        );
        assert_eq!(bearer(&h).as_deref(), Some("abc"));
        assert_eq!(cookie(&h).as_deref(), Some("def"));
        assert_eq!(query_token("a=1&token=ghi").as_deref(), Some("ghi"));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
