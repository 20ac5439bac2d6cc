//! The handlers, one module per resource.

pub mod audit;
pub mod devices;
pub mod plans;
pub mod recovery;
pub mod system;
pub mod tokens;

use axum::extract::rejection::PathRejection;
use axum::extract::Path;

use crate::ApiError;

/// The `{id}` of a plan route, validated.
pub(crate) fn plan_id(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::invalid(format!("invalid id in path: {e}")))?;
    autonomy_core::validate_id(&id).map_err(|m| ApiError::invalid(format!("invalid id: {m}")))?;
    Ok(id)
}
