//! Bearer-key authentication, compared in constant time. A key never
//! appears in a log, an error or a budget: callers are known by a label
//! (`key-1`, `key-2`, ...) in the order the keys were configured.

use std::sync::Arc;

use axum::http::{HeaderMap, header};
use subtle::ConstantTimeEq;

use crate::api_error::ApiError;

/// Anthropic's key header, `x-api-key`.
pub const X_API_KEY: header::HeaderName = header::HeaderName::from_static("x-api-key");

/// The keys callers must present; none means open access.
pub struct ApiKeys {
    keys: Vec<(Box<[u8]>, Arc<str>)>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("count", &self.keys.len())
            .finish()
    }
}

impl ApiKeys {
    /// Open access.
    pub fn none() -> Self {
        Self { keys: Vec::new() }
    }

    /// Keys from a comma-separated list (blank entries ignored).
    pub fn from_list(list: &str) -> Self {
        let keys = list
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .enumerate()
            .map(|(i, k)| {
                (
                    k.as_bytes().to_vec().into_boxed_slice(),
                    Arc::from(format!("key-{}", i + 1)),
                )
            })
            .collect();
        Self { keys }
    }

    /// Whether callers must present a key.
    pub fn required(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks the `Authorization: Bearer` header, or Anthropic's
    /// `x-api-key` when there is no bearer key (the same keys either way).
    /// Returns the caller's label, or `None` when access is open.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Arc<str>>, ApiError> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        let presented = bearer
            .or_else(|| headers.get(X_API_KEY).and_then(|v| v.to_str().ok()))
            .map(str::trim)
            .ok_or_else(ApiError::unauthorized)?;
        // Compare against every key so timing does not tell which matched.
        let mut found = None;
        for (key, label) in &self.keys {
            if bool::from(key.as_ref().ct_eq(presented.as_bytes())) {
                found = Some(label.clone());
            }
        }
        found.map(Some).ok_or_else(ApiError::unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_auth(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn known_keys_get_labels_and_others_are_refused() {
        let keys = ApiKeys::from_list(" sk-one, ,sk-two ");
        assert_eq!(keys.len(), 2);
        assert_eq!(
            keys.authenticate(&with_auth("Bearer sk-two"))
                .unwrap()
                .as_deref(),
            Some("key-2")
        );
        assert!(keys.authenticate(&with_auth("Bearer sk-three")).is_err());
        assert!(keys.authenticate(&with_auth("sk-one")).is_err());
        assert!(keys.authenticate(&HeaderMap::new()).is_err());
    }

    #[test]
    fn an_anthropic_style_key_header_is_checked_like_a_bearer_key() {
        let keys = ApiKeys::from_list("sk-one,sk-two");
        let mut h = HeaderMap::new();
        h.insert(X_API_KEY, HeaderValue::from_static("sk-two"));
        assert_eq!(keys.authenticate(&h).unwrap().as_deref(), Some("key-2"));
        h.insert(X_API_KEY, HeaderValue::from_static("sk-three"));
        assert!(keys.authenticate(&h).is_err());
    }

    #[test]
    fn no_keys_means_open_access() {
        assert_eq!(
            ApiKeys::none().authenticate(&HeaderMap::new()).unwrap(),
            None
        );
    }

    #[test]
    fn the_refusal_never_echoes_the_key() {
        let keys = ApiKeys::from_list("sk-secret");
        let e = keys
            .authenticate(&with_auth("Bearer sk-guess"))
            .unwrap_err();
        let body = String::from_utf8(e.to_json()).unwrap();
        assert!(!body.contains("sk-guess") && !body.contains("sk-secret"));
    }
}
