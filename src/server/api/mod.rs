//! Routes, handlers and the OpenAPI document.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Multipart, Path as UrlPath, Query, Request, State as Shared};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::{ApiError, State};
use crate::joint::space::{Side, TagClass, TagWord, Tags};
use crate::library::Library;
use crate::query::{self, Hit, SearchAnswer, Space};

mod extract;
mod files;
mod handlers;
mod routes;
mod schema;

use self::extract::*;
use self::files::*;
use self::handlers::*;
pub use self::routes::{app, ApiDoc};
use self::schema::*;

type AppState = Arc<State>;
type ApiResult<T> = Result<T, ApiError>;

/// The page at `/`.
const PAGE: &str = include_str!("../page.html");
/// Longest side of a thumbnail, pixels.
const THUMB_SIZE: u32 = 256;
/// Largest `k` a request may ask for.
const MAX_K: usize = 1000;
