//! A scripted device (SPEC §9.1–§9.3) speaking the device protocol over raw HTTP: registered
//! through the operator API (or made from an id and a token), it long-polls with the last
//! revision it saw, reports with a `seq` that rises per (plan, attempt), and remembers its boot
//! id and installed digest, so a test decides exactly what the control plane is told: a
//! success without a reboot, the previous digest, a repeated seq, a stale attempt.
//!
//! Every exchange is one bounded HTTP call on 127.0.0.1. With RBAC on, the device sends its
//! token as bearer; it always also names itself in `X-Autonomy-Device` (what the CP reads
//! when RBAC is off).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::http::{self, HttpError, Response};

/// How long an exchange may take beyond a long poll's own wait.
const SLACK: Duration = Duration::from_secs(10);

/// Why a device step got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{0}")]
    Http(#[from] HttpError),
    /// The CP answered, but not with the status the step needs.
    #[error("{what}: HTTP {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("{what}: the answer is not JSON: {body}")]
    NotJson { what: String, body: String },
}

impl DeviceError {
    /// No answer at all (the CP is down or the connection broke): worth retrying.
    pub fn is_transport(&self) -> bool {
        matches!(self, DeviceError::Http(_))
    }

    /// The HTTP status, if the CP answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            DeviceError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A parsed JSON body, or the error naming the step.
fn json_of(what: &str, r: &Response) -> Result<Value, DeviceError> {
    serde_json::from_slice(&r.body).map_err(|_| DeviceError::NotJson {
        what: what.to_string(),
        body: r.text().into_owned(),
    })
}

/// The body when the status is `want`, else a [`DeviceError::Status`].
fn expect(what: &str, r: Response, want: u16) -> Result<Value, DeviceError> {
    if r.status != want {
        return Err(DeviceError::Status {
            what: what.to_string(),
            status: r.status,
            body: r.text().into_owned(),
        });
    }
    json_of(what, &r)
}

/// The assignment of a poll answer, as the device reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub plan_id: String,
    pub attempt: u32,
    /// `install`, `revert` or `cancel`.
    pub action: String,
    pub target_digest: String,
    pub previous_digest: Option<String>,
    pub reboot_required: bool,
    /// The whole assignment object.
    pub raw: Value,
}

impl Assignment {
    fn from_json(v: &Value) -> Option<Assignment> {
        Some(Assignment {
            plan_id: v.get("plan_id")?.as_str()?.to_string(),
            attempt: u32::try_from(v.get("attempt")?.as_u64()?).ok()?,
            action: v.get("action")?.as_str()?.to_string(),
            target_digest: v.get("target_digest")?.as_str()?.to_string(),
            previous_digest: v
                .get("previous_digest")
                .and_then(Value::as_str)
                .map(str::to_string),
            reboot_required: v.get("reboot_required")?.as_bool()?,
            raw: v.clone(),
        })
    }
}

/// One device. Clone-free on purpose: each device is driven by one owner.
#[derive(Debug)]
pub struct Device {
    pub id: String,
    /// The device token from registration or enrollment.
    pub token: String,
    /// `http://127.0.0.1:PORT` of the CP (change it after a restart on another port).
    pub url: String,
    /// What the device says it runs.
    pub installed_digest: String,
    /// The current boot; [`Device::reboot`] makes a new one.
    pub boot_id: String,
    /// The last revision a poll answered.
    pub revision: u64,
    /// The conditions its polls carry (SPEC §8.7); `None`: none.
    pub conditions: Option<Value>,
    boots: u64,
    /// The last seq used per (plan, attempt).
    seqs: HashMap<(String, u32), u64>,
}

impl Device {
    /// A device known by id and token, running `installed_digest`, on its first boot.
    pub fn new(url: &str, id: &str, token: &str, installed_digest: &str) -> Device {
        Device {
            id: id.to_string(),
            token: token.to_string(),
            url: url.to_string(),
            installed_digest: installed_digest.to_string(),
            boot_id: format!("{id}-boot-0"),
            revision: 0,
            conditions: None,
            boots: 0,
            seqs: HashMap::new(),
        }
    }

    /// Registers `id` with `labels` through `POST /v1/devices` (operator `headers`, e.g. a
    /// bearer) and returns the device, running `installed_digest`.
    pub fn register(
        url: &str,
        operator_headers: &[(&str, &str)],
        id: &str,
        labels: &Value,
        installed_digest: &str,
    ) -> Result<Device, DeviceError> {
        let body = json!({"id": id, "labels": labels}).to_string();
        let mut headers = vec![("content-type", "application/json")];
        headers.extend_from_slice(operator_headers);
        let r = http::call(
            "POST",
            &format!("{url}/v1/devices"),
            &headers,
            Some(body.as_bytes()),
            SLACK,
        )?;
        let answer = expect(&format!("register {id}"), r, 201)?;
        let token = answer["token"].as_str().unwrap_or_default().to_string();
        Ok(Device::new(url, id, &token, installed_digest))
    }

    /// A new boot id (the device rebooted).
    pub fn reboot(&mut self) {
        self.boots += 1;
        self.boot_id = format!("{}-boot-{}", self.id, self.boots);
    }

    /// The seq the next report for (plan, attempt) will carry.
    pub fn next_seq(&self, plan_id: &str, attempt: u32) -> u64 {
        self.seqs
            .get(&(plan_id.to_string(), attempt))
            .copied()
            .unwrap_or(0)
            + 1
    }

    /// Records `seq` as used for (plan, attempt) (after a report sent by hand), so the next
    /// report carries a higher one.
    pub fn used_seq(&mut self, plan_id: &str, attempt: u32, seq: u64) {
        let last = self.seqs.entry((plan_id.to_string(), attempt)).or_insert(0);
        *last = (*last).max(seq);
    }

    fn headers(&self) -> Vec<(&str, String)> {
        vec![
            ("content-type", "application/json".to_string()),
            ("authorization", format!("Bearer {}", self.token)),
            ("x-autonomy-device", self.id.clone()),
        ]
    }

    /// `POST path` as this device with a raw body; the answer whatever its status.
    pub fn post_raw(
        &self,
        path: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        let owned = self.headers();
        let headers: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
        http::call(
            "POST",
            &format!("{}{path}", self.url),
            &headers,
            Some(body),
            timeout,
        )
    }

    /// The poll body this device sends (its digest, boot, last revision and conditions).
    pub fn poll_body(&self, wait_seconds: u32) -> Value {
        let mut body = json!({
            "installed_digest": self.installed_digest,
            "boot_id": self.boot_id,
            "known_revision": self.revision,
            "wait_seconds": wait_seconds,
        });
        if let Some(c) = &self.conditions {
            body["conditions"] = c.clone();
        }
        body
    }

    /// `POST /v1/device/poll` with this device's state; the raw answer.
    pub fn poll_raw(&self, wait_seconds: u32) -> Result<Response, HttpError> {
        let body = self.poll_body(wait_seconds).to_string();
        self.post_raw(
            "/v1/device/poll",
            body.as_bytes(),
            SLACK + Duration::from_secs(u64::from(wait_seconds)),
        )
    }

    /// A poll that must answer 200: remembers the revision, returns the whole answer.
    pub fn poll(&mut self, wait_seconds: u32) -> Result<Value, DeviceError> {
        let r = self.poll_raw(wait_seconds)?;
        let answer = expect(&format!("poll {}", self.id), r, 200)?;
        if let Some(rev) = answer["revision"].as_u64() {
            self.revision = rev;
        }
        Ok(answer)
    }

    /// A poll that must answer 200; its assignment, if any.
    pub fn poll_assignment(
        &mut self,
        wait_seconds: u32,
    ) -> Result<Option<Assignment>, DeviceError> {
        let answer = self.poll(wait_seconds)?;
        Ok(Assignment::from_json(&answer["assignment"]))
    }

    /// The report body for `state` in (plan, attempt) with an explicit `seq`.
    pub fn report_body(&self, plan_id: &str, attempt: u32, seq: u64, state: &str) -> Value {
        json!({
            "plan_id": plan_id,
            "attempt": attempt,
            "seq": seq,
            "state": state,
            "installed_digest": self.installed_digest,
            "boot_id": self.boot_id,
            "message": "",
        })
    }

    /// Reports `state` with an explicit `seq` (the counter is raised to it); the raw answer.
    pub fn report_seq(
        &mut self,
        plan_id: &str,
        attempt: u32,
        seq: u64,
        state: &str,
    ) -> Result<Response, HttpError> {
        self.used_seq(plan_id, attempt, seq);
        let body = self.report_body(plan_id, attempt, seq, state).to_string();
        self.post_raw("/v1/device/reports", body.as_bytes(), SLACK)
    }

    /// Reports `state` with the next seq of (plan, attempt); the raw answer.
    pub fn report_raw(
        &mut self,
        plan_id: &str,
        attempt: u32,
        state: &str,
    ) -> Result<Response, HttpError> {
        let seq = self.next_seq(plan_id, attempt);
        self.report_seq(plan_id, attempt, seq, state)
    }

    /// Reports `state` with the next seq; it must answer 200. Returns the answer
    /// (`{"result","assignment_state"}`).
    pub fn report(
        &mut self,
        plan_id: &str,
        attempt: u32,
        state: &str,
    ) -> Result<Value, DeviceError> {
        let r = self.report_raw(plan_id, attempt, state)?;
        expect(&format!("report {state} by {}", self.id), r, 200)
    }

    /// The whole happy path of an install assignment: downloading, installing, rebooting,
    /// then (new boot, target digest) succeeded. Returns the last answer's
    /// `assignment_state`.
    pub fn install(&mut self, a: &Assignment) -> Result<String, DeviceError> {
        for step in ["downloading", "installing", "rebooting"] {
            self.report(&a.plan_id, a.attempt, step)?;
        }
        self.reboot();
        self.installed_digest = a.target_digest.clone();
        let answer = self.report(&a.plan_id, a.attempt, "succeeded")?;
        Ok(answer["assignment_state"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }
}
