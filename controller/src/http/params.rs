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
