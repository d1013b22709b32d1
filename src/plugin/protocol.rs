//! Docker VolumeDriver (v1) wire types, exactly as dockerd sends and reads them. No logic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Content type of every reply.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateRequest {
    pub name: String,
    /// `null` when the user gave no options.
    #[serde(default)]
    pub opts: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NameRequest {
    pub name: String,
}

#[derive(Debug, Deserialize)]
pub struct MountRequest {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "ID", default)]
    pub id: String,
}

#[derive(Debug, Serialize)]
pub struct ErrResponse {
    #[serde(rename = "Err")]
    pub err: String,
}

#[derive(Debug, Serialize)]
pub struct ActivateResponse {
    #[serde(rename = "Implements")]
    pub implements: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct MountpointResponse {
    #[serde(rename = "Mountpoint")]
    pub mountpoint: String,
    #[serde(rename = "Err")]
    pub err: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Volume {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(
        rename = "Mountpoint",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub mountpoint: String,
    #[serde(rename = "CreatedAt", default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(rename = "Status", default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Serialize)]
pub struct GetResponse {
    #[serde(rename = "Volume")]
    pub volume: Volume,
    #[serde(rename = "Err")]
    pub err: String,
}

#[derive(Debug, Serialize)]
pub struct ListResponse {
    #[serde(rename = "Volumes")]
    pub volumes: Vec<Volume>,
    #[serde(rename = "Err")]
    pub err: String,
}

#[derive(Debug, Serialize)]
pub struct Capability {
    #[serde(rename = "Scope")]
    pub scope: &'static str,
}

#[derive(Debug, Serialize)]
pub struct CapabilitiesResponse {
    #[serde(rename = "Capabilities")]
    pub capabilities: Capability,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_accepts_null_and_missing_opts() {
        let r: CreateRequest = serde_json::from_str(r#"{"Name":"v","Opts":null}"#).unwrap();
        assert!(r.opts.is_none());
        let r: CreateRequest = serde_json::from_str(r#"{"Name":"v"}"#).unwrap();
        assert!(r.opts.is_none());
        let r: CreateRequest = serde_json::from_str(r#"{"Name":"v","Opts":{"o":"ro"}}"#).unwrap();
        assert_eq!(r.opts.unwrap()["o"], "ro");
    }

    #[test]
    fn volume_without_created_at_omits_the_field() {
        let v = Volume {
            name: "v".into(),
            mountpoint: String::new(),
            created_at: None,
            status: None,
        };
        assert_eq!(serde_json::to_string(&v).unwrap(), r#"{"Name":"v"}"#);
    }
}
