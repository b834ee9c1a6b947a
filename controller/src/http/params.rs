//! Path and query extractors whose rejections are [`ApiError`]s (400).

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::IntoParams;

use super::error::ApiError;
use crate::error::MAX_LIMIT;

/// `limit` and `offset` of a list the controller reads whole (hosts, tokens) and
/// serves a page at a time. Without `limit`, the first 1000 (the most a page holds).
#[derive(Debug, Clone, Copy, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    /// Page size (default and at most 1000).
    pub limit: Option<u32>,
    /// Items skipped (default 0).
    pub offset: Option<u64>,
}

impl PageParams {
    /// The page of `items`, and how many there are in all.
    pub fn page<T>(&self, items: Vec<T>) -> Result<(Vec<T>, u64), ApiError> {
        let limit = match self.limit {
            Some(0) => return Err(ApiError::bad_request("limit: must be positive")),
            Some(n) => n.min(MAX_LIMIT),
            None => MAX_LIMIT,
        };
        let total = items.len() as u64;
        let skip = usize::try_from(self.offset.unwrap_or(0)).unwrap_or(usize::MAX);
        Ok((
            items.into_iter().skip(skip).take(limit as usize).collect(),
            total,
        ))
    }
}

/// Query parameters; a malformed query is a 400.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| Self(q))
            .map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))
    }
}

/// Path parameters; an undecodable path is a 400.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| Self(p))
            .map_err(|e| ApiError::bad_request(format!("invalid path: {}", e.body_text())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_sliced_and_counted_and_a_zero_limit_is_a_400() {
        let items: Vec<u32> = (0..5).collect();
        let page = |limit, offset| PageParams { limit, offset }.page(items.clone());
        assert_eq!(page(None, None).expect("all"), (items.clone(), 5));
        assert_eq!(page(Some(2), Some(1)).expect("page"), (vec![1, 2], 5));
        assert_eq!(
            page(Some(2), Some(u64::MAX)).expect("past the end"),
            (vec![], 5)
        );
        let big: Vec<u32> = (0..1500).collect();
        let (first, total) = PageParams::default().page(big).expect("capped");
        assert_eq!((first.len(), total), (MAX_LIMIT as usize, 1500));
        let e = page(Some(0), None).expect_err("limit 0");
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
    }
}
