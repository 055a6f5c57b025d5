//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`): the `k8s\0` magic, a
//! `runtime.Unknown` envelope naming the kind, and the object's protobuf encoding.

use serde_json::Value;

use super::status::{ApiError, ApiResult};

pub fn decode(body: &[u8]) -> ApiResult<Value> {
    if !body.starts_with(b"k8s\0") {
        return Err(ApiError::bad_request(
            "protobuf body does not start with the Kubernetes magic prefix",
        ));
    }
    Err(ApiError::new(
        415,
        "UnsupportedMediaType",
        "protobuf request bodies are not decoded yet; send application/json",
    ))
}
