//! Wire types of devices and the device protocol (SPEC §9.1–§9.2, §8.2): the registry, bulk
//! enrollment, the long poll, progress reports and the per-plan assignment listing.
//!
//! As everywhere in this crate, request types reject unknown fields. The rules that decide what
//! a report or a poll does live in `autonomy_core::device`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::string_enum;
pub use crate::DeviceState;

/// The longest wait of a long poll, in seconds (SPEC §9.2).
pub const MAX_POLL_WAIT_SECONDS: u32 = 60;
/// The most characters of a report's `message` that are kept (longer ones are cut with
/// [`crate::CUT_MARKER`]).
pub const MAX_REPORT_MESSAGE_CHARS: usize = 1024;

string_enum! {
    /// What a device may report in `POST /v1/device/reports` (SPEC §9.2, §9.4): the step it
    /// reached, or how the step ended. `succeeded` is a claim the control plane verifies
    /// (§9.3); `rolled_back` means the device fell back by itself; `reverted` and
    /// `revert_failed` end a revert.
    pub enum ReportState("report state") {
        Downloading = "downloading",
        Installing = "installing",
        Rebooting = "rebooting",
        Verifying = "verifying",
        Succeeded = "succeeded",
        Failed = "failed",
        RolledBack = "rolled_back",
        Reverted = "reverted",
        RevertFailed = "revert_failed",
    }
}

string_enum! {
    /// What a poll tells the device to do with its assignment.
    pub enum AssignmentAction("assignment action") {
        Install = "install",
        Revert = "revert",
        Cancel = "cancel",
    }
}

string_enum! {
    /// How a report was taken: `applied` (recorded, possibly changing the state) or `duplicate`
    /// (its `seq` was already seen; nothing changed).
    pub enum ReportResult("report result") {
        Applied = "applied",
        Duplicate = "duplicate",
    }
}

// ---------------------------------------------------------------------------------------------
// Identity and registry (§9.1)
// ---------------------------------------------------------------------------------------------

/// The assignment a device currently holds, as shown on the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AssignmentSummary {
    pub plan_id: String,
    pub attempt: u32,
    pub state: DeviceState,
}

/// `GET /v1/devices/{id}` and the items of `GET /v1/devices`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Device {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    /// The digest the device last said it runs; `null` before its first poll.
    pub installed_digest: Option<String>,
    pub last_seen_at: Option<String>,
    pub created_at: String,
    pub revoked_at: Option<String>,
    /// The device's assignment in its unsettled engine-driven plan, if any.
    pub assignment: Option<AssignmentSummary>,
    /// The conditions of its last poll (SPEC §8.7); empty when it sent none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub conditions: BTreeMap<String, serde_json::Value>,
}

/// `GET /v1/devices?selector=&limit=&cursor=`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceList {
    pub items: Vec<Device>,
    pub next_cursor: Option<String>,
}

/// `POST /v1/devices` (operator).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterDeviceRequest {
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$"))]
    pub id: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Answer of `POST /v1/devices`: the only time the device token is shown (it is stored hashed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceRegistered {
    pub device: Device,
    pub token: String,
}

/// `POST /v1/devices/{id}/labels`: the device's new labels (they replace the old ones).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeviceLabelsRequest {
    pub labels: BTreeMap<String, String>,
}

/// `POST /v1/enroll-keys` (admin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EnrollKeyRequest {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub max_uses: u32,
    pub ttl_seconds: u64,
}

/// Answer of `POST /v1/enroll-keys`: the only time the key is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollKeyCreated {
    pub id: String,
    pub key: String,
    pub labels: BTreeMap<String, String>,
    pub max_uses: u32,
    pub created_at: String,
    pub expires_at: String,
}

/// `POST /v1/device/enroll`, with the enroll key as bearer. The key's labels win over these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$"))]
    pub id: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Answer of `POST /v1/device/enroll`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Enrolled {
    pub id: String,
    pub token: String,
}

// ---------------------------------------------------------------------------------------------
// Protocol (§9.2)
// ---------------------------------------------------------------------------------------------

/// `POST /v1/device/poll`: the heartbeat and long poll.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    /// What the device runs now (empty when it does not know).
    #[serde(default)]
    pub installed_digest: String,
    #[serde(default)]
    pub boot_id: String,
    /// The last revision the device saw; the poll answers as soon as its revision passes it.
    #[serde(default)]
    pub known_revision: u64,
    /// At most [`MAX_POLL_WAIT_SECONDS`].
    #[serde(default)]
    pub wait_seconds: u32,
    /// The device's current conditions (SPEC §8.7), e.g. `{"docked": true, "battery_pct": 73}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub conditions: BTreeMap<String, serde_json::Value>,
}

/// What the device is asked to do in one plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AssignmentView {
    pub plan_id: String,
    pub attempt: u32,
    pub action: AssignmentAction,
    pub artifact_ref: String,
    /// For `revert`, the digest to go back to.
    pub target_digest: String,
    /// The digest the device had before this plan (recorded at dispatch); `null` when unknown.
    pub previous_digest: Option<String>,
    pub reboot_required: bool,
    pub deadline_at: Option<String>,
}

/// Answer of `POST /v1/device/poll`. `assignment` is `null` when there is nothing to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PollResponse {
    pub revision: u64,
    pub poll_after_seconds: u32,
    pub assignment: Option<AssignmentView>,
}

/// `POST /v1/device/reports`: one step of one attempt. `seq` rises per (device, plan, attempt).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    pub plan_id: String,
    pub attempt: u32,
    pub seq: u64,
    pub state: ReportState,
    #[serde(default)]
    pub installed_digest: String,
    #[serde(default)]
    pub boot_id: String,
    #[serde(default)]
    pub message: String,
}

/// Answer of `POST /v1/device/reports`, given once the report is durable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReportResponse {
    pub result: ReportResult,
    pub assignment_state: DeviceState,
}

// ---------------------------------------------------------------------------------------------
// Per-plan listing (§8.2)
// ---------------------------------------------------------------------------------------------

/// One item of `GET /v1/rollouts/{id}/devices`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceAssignment {
    pub device_id: String,
    /// The name of the stage the device belongs to.
    pub stage: String,
    pub state: DeviceState,
    pub attempt: u32,
    pub installed_digest: Option<String>,
    pub last_seen_at: Option<String>,
    pub updated_at: String,
    pub message: String,
}

/// `GET /v1/rollouts/{id}/devices?state=&stage=&limit=&cursor=`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceAssignmentList {
    pub items: Vec<DeviceAssignment>,
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// §8.2 names 16 states and §8.7 adds `waiting_ready`; the mirror must keep them all, in
    /// their wire spelling.
    #[test]
    fn assignment_states_are_those_of_the_spec() {
        let names: Vec<&str> = DeviceState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "pending",
                "waiting_ready",
                "dispatched",
                "downloading",
                "installing",
                "rebooting",
                "verifying",
                "verified",
                "failed",
                "timed_out",
                "rolled_back",
                "drifted",
                "cancelled",
                "reverting",
                "reverted",
                "revert_failed",
                "revert_unavailable",
            ]
        );
    }

    #[test]
    fn requests_refuse_unknown_fields_and_unknown_states() {
        let ok = r#"{"plan_id":"p1","attempt":1,"seq":3,"state":"installing","boot_id":"b"}"#;
        let r: ReportRequest = serde_json::from_str(ok).unwrap();
        assert_eq!(
            (r.state, r.seq, r.message.as_str()),
            (ReportState::Installing, 3, "")
        );
        let extra = r#"{"plan_id":"p1","attempt":1,"seq":3,"state":"installing","x":1}"#;
        let err = serde_json::from_str::<ReportRequest>(extra).unwrap_err();
        assert!(err.to_string().contains("unknown field `x`"), "{err}");
        let bad = r#"{"plan_id":"p1","attempt":1,"seq":3,"state":"verified"}"#;
        let err = serde_json::from_str::<ReportRequest>(bad).unwrap_err();
        assert!(
            err.to_string().contains("unknown report state 'verified'"),
            "{err}"
        );
        for body in [
            r#"{"wait_seconds":5,"typo":1}"#,
            r#"{"id":"d1","labels":{},"token":"t"}"#,
        ] {
            assert!(serde_json::from_str::<PollRequest>(body).is_err(), "{body}");
            assert!(
                serde_json::from_str::<EnrollRequest>(body).is_err(),
                "{body}"
            );
            assert!(
                serde_json::from_str::<RegisterDeviceRequest>(body).is_err(),
                "{body}"
            );
        }
        let poll: PollRequest = serde_json::from_str(
            r#"{"installed_digest":"sha256:aa","wait_seconds":30,"conditions":{"docked":true}}"#,
        )
        .unwrap();
        assert_eq!(poll.conditions["docked"], serde_json::json!(true));
        assert!(serde_json::from_str::<EnrollKeyRequest>(r#"{"labels":{}}"#).is_err());
    }

    #[test]
    fn a_poll_without_work_says_null() {
        let none = PollResponse {
            revision: 7,
            poll_after_seconds: 5,
            assignment: None,
        };
        assert_eq!(
            serde_json::to_value(&none).unwrap(),
            serde_json::json!({"revision": 7, "poll_after_seconds": 5, "assignment": null})
        );
        let some = PollResponse {
            assignment: Some(AssignmentView {
                plan_id: "p1".into(),
                attempt: 2,
                action: AssignmentAction::Revert,
                artifact_ref: "oci://r/a@sha256:bb".into(),
                target_digest: "sha256:aa".into(),
                previous_digest: None,
                reboot_required: true,
                deadline_at: None,
            }),
            ..none
        };
        let v = serde_json::to_value(&some).unwrap();
        assert_eq!(v["assignment"]["action"], "revert");
        assert_eq!(v["assignment"]["previous_digest"], serde_json::Value::Null);
        let back: PollResponse = serde_json::from_value(v).unwrap();
        assert_eq!(back, some);
    }
}
