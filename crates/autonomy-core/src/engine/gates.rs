//! Robot-aware gates (SPEC §8.7): the disruption budget, device readiness (`policy.require`
//! against the conditions of a device's last poll) and maintenance windows — their validation
//! at create, and the pure rules [`super::decide`] and the stuck scan ask. No clock: every
//! function that needs the time takes `now_us` (µs since the Unix epoch, UTC).
//!
//! Time zones come from jiff's bundled copy of the IANA database (`tzdb-bundle-always`), so a
//! window means the same on every machine and no file is read.

use std::collections::{BTreeMap, BTreeSet};

use autonomy_api::{DeviceState, DisruptionBudget, FieldError, Policy, Require, Window};
use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};
use serde_json::Value;

/// The condition names a device may report with a meaning the engine knows, and their types.
/// Other names are accepted (bounded like labels, scalar values) and shown, but `require`
/// cannot name them.
pub const KNOWN_CONDITIONS: &[(&str, &str)] = &[
    ("docked", "a boolean"),
    ("idle", "a boolean"),
    ("battery_pct", "an integer from 0 to 100"),
];
/// The most label names `disruption_budget.group_by` may list.
pub const MAX_GROUP_BY: usize = 8;
/// The most entries of `policy.windows`.
pub const MAX_WINDOWS: usize = 32;
/// The day names of `windows[].days`, Monday first.
pub const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// The conditions of a poll: the known ones must have their type (`conditions.battery_pct`
/// named in the error); the shape of every other one is checked by `device::validate_poll`.
pub fn check_conditions(conditions: &BTreeMap<String, Value>) -> Result<(), FieldError> {
    for (name, what) in KNOWN_CONDITIONS {
        let Some(v) = conditions.get(*name) else {
            continue;
        };
        let ok = match *name {
            "battery_pct" => v.as_u64().is_some_and(|n| n <= 100),
            _ => v.is_boolean(),
        };
        if !ok {
            return Err(FieldError::new(
                format!("conditions.{name}"),
                format!("must be {what}, got {v}"),
            ));
        }
    }
    Ok(())
}

/// The gate fields of a policy: `disruption_budget`, `require` (unknown names are refused
/// when parsing, see [`Require`]) and `windows`. Errors name the field below `spec.policy`.
pub fn check_gates(p: &Policy) -> Result<(), FieldError> {
    if let Some(b) = &p.disruption_budget {
        check_budget(b)?;
    }
    if let Some(r) = &p.require {
        check_require(r)?;
    }
    check_windows(&p.windows)
}

fn check_budget(b: &DisruptionBudget) -> Result<(), FieldError> {
    let at = "spec.policy.disruption_budget";
    match (b.max_unavailable, b.min_available_pct) {
        (Some(_), Some(_)) => {
            return Err(FieldError::new(
                at,
                "give either max_unavailable or min_available_pct, not both",
            ))
        }
        (None, None) => {
            return Err(FieldError::new(
                at,
                "give max_unavailable or min_available_pct",
            ))
        }
        (Some(0), None) => {
            return Err(FieldError::new(
                format!("{at}.max_unavailable"),
                "must be at least 1 (a budget of 0 would never dispatch a device)",
            ))
        }
        (None, Some(p)) if p >= 100 => {
            return Err(FieldError::new(
                format!("{at}.min_available_pct"),
                format!("must be from 0 to 99 (100 would never dispatch a device), got {p}"),
            ))
        }
        _ => {}
    }
    if b.group_by.len() > MAX_GROUP_BY {
        return Err(FieldError::new(
            format!("{at}.group_by"),
            format!("at most {MAX_GROUP_BY} label names"),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, k) in b.group_by.iter().enumerate() {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c));
        if !key_ok {
            return Err(FieldError::new(
                format!("{at}.group_by[{i}]"),
                "label names are 1 to 63 characters of A-Z, a-z, 0-9, '.', '_', '/', '-'",
            ));
        }
        if !seen.insert(k) {
            return Err(FieldError::new(
                format!("{at}.group_by[{i}]"),
                format!("'{k}' is listed twice"),
            ));
        }
    }
    Ok(())
}

fn check_require(r: &Require) -> Result<(), FieldError> {
    if let Some(p) = r.battery_pct_min {
        if p > 100 {
            return Err(FieldError::new(
                "spec.policy.require.battery_pct_min",
                format!("must be a percentage from 0 to 100, got {p}"),
            ));
        }
    }
    if r.docked.is_none() && r.idle.is_none() && r.battery_pct_min.is_none() {
        return Err(FieldError::new(
            "spec.policy.require",
            "name at least one condition (docked, idle, battery_pct_min), or leave require out",
        ));
    }
    Ok(())
}

/// `HH:MM`, 00:00 to 23:59.
fn parse_hhmm(s: &str) -> Option<Time> {
    let b = s.as_bytes();
    if b.len() != 5 || b[2] != b':' || !s.is_char_boundary(2) {
        return None;
    }
    let (h, m) = (s.get(..2)?, s.get(3..)?);
    if !h.bytes().chain(m.bytes()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (h, m): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
    Time::new(h, m, 0, 0).ok()
}

fn weekday(name: &str) -> Option<Weekday> {
    let i = DAYS.iter().position(|d| *d == name)?;
    Weekday::from_monday_zero_offset(i as i8).ok()
}

fn check_windows(windows: &[Window]) -> Result<(), FieldError> {
    if windows.len() > MAX_WINDOWS {
        return Err(FieldError::new(
            "spec.policy.windows",
            format!("at most {MAX_WINDOWS} windows"),
        ));
    }
    for (i, w) in windows.iter().enumerate() {
        let at = format!("spec.policy.windows[{i}]");
        if w.days.is_empty() {
            return Err(FieldError::new(
                format!("{at}.days"),
                "name at least one day (mon, tue, wed, thu, fri, sat, sun)",
            ));
        }
        let mut seen = BTreeSet::new();
        for (j, d) in w.days.iter().enumerate() {
            if weekday(d).is_none() {
                return Err(FieldError::new(
                    format!("{at}.days[{j}]"),
                    format!(
                        "'{}' is not a day: mon, tue, wed, thu, fri, sat or sun",
                        d.chars()
                            .take(16)
                            .flat_map(char::escape_debug)
                            .collect::<String>()
                    ),
                ));
            }
            if !seen.insert(d) {
                return Err(FieldError::new(
                    format!("{at}.days[{j}]"),
                    format!("'{d}' is listed twice"),
                ));
            }
        }
        let hhmm = |field: &str, v: &str| {
            parse_hhmm(v).ok_or_else(|| {
                FieldError::new(
                    format!("{at}.{field}"),
                    format!(
                        "'{}' is not a time of day: HH:MM from 00:00 to 23:59",
                        v.chars()
                            .take(16)
                            .flat_map(char::escape_debug)
                            .collect::<String>()
                    ),
                )
            })
        };
        let start = hhmm("start", &w.start)?;
        let end = hhmm("end", &w.end)?;
        if start == end {
            return Err(FieldError::new(
                format!("{at}.end"),
                "must differ from start (an end before the start wraps past midnight)",
            ));
        }
        if w.tz.len() > 64 || TimeZone::get(&w.tz).is_err() {
            return Err(FieldError::new(
                format!("{at}.tz"),
                format!(
                    "'{}' is not a known IANA time zone (e.g. Europe/Berlin, UTC)",
                    w.tz.chars()
                        .take(64)
                        .flat_map(char::escape_debug)
                        .collect::<String>()
                ),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Readiness
// ---------------------------------------------------------------------------------------------

/// The first condition of `require` a device's conditions do not meet, as
/// `(condition name, what is wrong)`; `None`: the device is ready.
pub fn unmet(
    require: &Require,
    conditions: &BTreeMap<String, Value>,
) -> Option<(&'static str, String)> {
    let flag = |name: &'static str, want: Option<bool>| {
        let want = want?;
        match conditions.get(name).and_then(Value::as_bool) {
            Some(v) if v == want => None,
            Some(v) => Some((name, format!("{name} is {v} (needs {want})"))),
            None => Some((name, format!("{name} not reported (needs {want})"))),
        }
    };
    flag("docked", require.docked)
        .or_else(|| flag("idle", require.idle))
        .or_else(|| {
            let min = require.battery_pct_min?;
            match conditions.get("battery_pct").and_then(Value::as_u64) {
                Some(v) if v >= u64::from(min) => None,
                Some(v) => Some((
                    "battery_pct",
                    format!("battery_pct is {v} (needs at least {min})"),
                )),
                None => Some((
                    "battery_pct",
                    format!("battery_pct not reported (needs at least {min})"),
                )),
            }
        })
}

// ---------------------------------------------------------------------------------------------
// The disruption budget
// ---------------------------------------------------------------------------------------------

/// One assignment of a plan as the gates see it: its stage, state, the device's labels and
/// the conditions of its last poll. The store passes every assignment of a plan whose policy
/// has a budget or requirements ([`needs_devices`]), in the plan's dispatch order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateDevice {
    pub device_id: String,
    pub stage: usize,
    pub state: DeviceState,
    pub labels: BTreeMap<String, String>,
    pub conditions: BTreeMap<String, Value>,
}

/// Whether `decide` and the stuck scan need the plan's [`GateDevice`]s.
pub fn needs_devices(policy: &Policy) -> bool {
    policy.disruption_budget.is_some() || policy.require.is_some()
}

/// The group of a device: the values of the `group_by` labels, in order (a label the device
/// does not have counts as the empty value).
pub fn group_key(group_by: &[String], labels: &BTreeMap<String, String>) -> Vec<String> {
    group_by
        .iter()
        .map(|k| labels.get(k).cloned().unwrap_or_default())
        .collect()
}

/// How many devices of a group of `size` may be in flight at once: `max_unavailable`, or
/// `size − ceil(min_available_pct × size / 100)` — but never less than 1, else a small group
/// could never be rolled out.
pub fn allowed_in_flight(budget: &DisruptionBudget, size: u64) -> u64 {
    let n = match (budget.max_unavailable, budget.min_available_pct) {
        (Some(n), _) => u64::from(n),
        (None, Some(p)) => size.saturating_sub((u64::from(p) * size).div_ceil(100)),
        (None, None) => u64::MAX,
    };
    n.max(1)
}

/// The load of one budget group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupLoad {
    /// The plan's targets in the group.
    pub size: u64,
    /// Of them in flight now.
    pub in_flight: u64,
    /// [`allowed_in_flight`].
    pub allowed: u64,
}

/// Every group of a plan's devices with its load.
pub fn group_loads(
    budget: &DisruptionBudget,
    devices: &[GateDevice],
) -> BTreeMap<Vec<String>, GroupLoad> {
    let mut loads: BTreeMap<Vec<String>, GroupLoad> = BTreeMap::new();
    for d in devices {
        let g = loads
            .entry(group_key(&budget.group_by, &d.labels))
            .or_default();
        g.size += 1;
        if d.state.is_in_flight() {
            g.in_flight += 1;
        }
    }
    for g in loads.values_mut() {
        g.allowed = allowed_in_flight(budget, g.size);
    }
    loads
}

/// The gate facts of the stuck scan (SPEC §8.7) from a plan's [`GateDevice`]s:
/// - the `waiting_ready` devices (a sample of up to 10, the first unmet condition of each
///   shown, devices per condition) — by the conditions they report now;
/// - the in-flight devices of every full budget group that still has devices to dispatch,
///   when each of them is in `stuck_in_flight` (silent or not converging).
pub fn gate_stuck(
    policy: &Policy,
    devices: &[GateDevice],
    stuck_in_flight: &BTreeSet<String>,
) -> (super::stuck::NotReady, super::stuck::DeviceSample) {
    use super::stuck::{DeviceSample, NotReady, MAX_REASON_DEVICES};
    let mut not_ready = NotReady::default();
    if let Some(require) = &policy.require {
        for d in devices
            .iter()
            .filter(|d| d.state == DeviceState::WaitingReady)
        {
            let (name, why) = unmet(require, &d.conditions)
                .unwrap_or(("none", "meets policy.require now (dispatch pending)".into()));
            not_ready.sample.count += 1;
            *not_ready.by_condition.entry(name.to_string()).or_default() += 1;
            if not_ready.sample.devices.len() < MAX_REASON_DEVICES {
                not_ready.sample.devices.push(d.device_id.clone());
                not_ready.unmet.insert(d.device_id.clone(), why);
            }
        }
    }
    let mut budget_stuck = DeviceSample::default();
    if let Some(b) = &policy.disruption_budget {
        let loads = group_loads(b, devices);
        let mut members: BTreeMap<Vec<String>, (bool, Vec<&str>)> = BTreeMap::new();
        for d in devices {
            let m = members
                .entry(group_key(&b.group_by, &d.labels))
                .or_default();
            if d.state.is_undispatched() {
                m.0 = true;
            } else if d.state.is_in_flight() {
                m.1.push(&d.device_id);
            }
        }
        for (key, (waiting, in_flight)) in members {
            let full = loads.get(&key).is_some_and(|g| g.in_flight >= g.allowed);
            if waiting
                && full
                && !in_flight.is_empty()
                && in_flight.iter().all(|d| stuck_in_flight.contains(*d))
            {
                budget_stuck.count += in_flight.len() as u64;
                for d in in_flight {
                    if budget_stuck.devices.len() < MAX_REASON_DEVICES {
                        budget_stuck.devices.push(d.to_string());
                    }
                }
            }
        }
    }
    (not_ready, budget_stuck)
}

// ---------------------------------------------------------------------------------------------
// Windows
// ---------------------------------------------------------------------------------------------

/// The instants `[open, close)` (µs) of `w`'s occurrence that opens on local `date`, if `w`
/// opens on that weekday. A local time that does not exist (a DST gap) is taken as the first
/// instant after the gap; a repeated one as its first occurrence (jiff's `compatible`).
fn occurrence(w: &Window, tz: &TimeZone, date: Date) -> Option<(i64, i64)> {
    let start = parse_hhmm(&w.start)?;
    let end = parse_hhmm(&w.end)?;
    if !w.days.iter().any(|d| weekday(d) == Some(date.weekday())) {
        return None;
    }
    let end_date = if end <= start {
        date.tomorrow().ok()?
    } else {
        date
    };
    let open = tz.to_zoned(date.to_datetime(start)).ok()?;
    let close = tz.to_zoned(end_date.to_datetime(end)).ok()?;
    Some((
        open.timestamp().as_microsecond(),
        close.timestamp().as_microsecond(),
    ))
}

/// The occurrences of `w` that open from `from` days before to `to` days after `now_us`'s
/// local date.
fn occurrences(w: &Window, now_us: i64, from: i64, to: i64) -> Vec<(i64, i64)> {
    let Ok(tz) = TimeZone::get(&w.tz) else {
        return Vec::new();
    };
    let Ok(now) = Timestamp::from_microsecond(now_us) else {
        return Vec::new();
    };
    let today = now.to_zoned(tz.clone()).date();
    (from..=to)
        .filter_map(|i| today.checked_add(Span::new().days(i)).ok())
        .filter_map(|date| occurrence(w, &tz, date))
        .collect()
}

/// Whether a new dispatch may start at `now_us`: no windows, or `now_us` is inside one.
pub fn in_window(windows: &[Window], now_us: i64) -> bool {
    windows.is_empty()
        || windows.iter().any(|w| {
            occurrences(w, now_us, -1, 0)
                .iter()
                .any(|&(open, close)| open <= now_us && now_us < close)
        })
}

/// When the next window opens after `now_us` (µs); `None` without windows.
pub fn next_window_start(windows: &[Window], now_us: i64) -> Option<i64> {
    windows
        .iter()
        .flat_map(|w| occurrences(w, now_us, -1, 8))
        .map(|(open, _)| open)
        .filter(|&open| open > now_us)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use autonomy_api::timefmt;
    use serde_json::json;

    fn conds(v: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(v).unwrap()
    }

    fn win(days: &[&str], start: &str, end: &str, tz: &str) -> Window {
        Window {
            days: days.iter().map(|d| d.to_string()).collect(),
            start: start.into(),
            end: end.into(),
            tz: tz.into(),
        }
    }

    fn at(s: &str) -> i64 {
        timefmt::parse_rfc3339_us(s).unwrap()
    }

    #[test]
    fn require_matching_table() {
        let all = Require {
            docked: Some(true),
            idle: Some(true),
            battery_pct_min: Some(40),
        };
        let cases = [
            (
                json!({"docked": true, "idle": true, "battery_pct": 40}),
                None,
            ),
            (
                json!({"docked": true, "idle": true, "battery_pct": 100, "x": "y"}),
                None,
            ),
            (
                json!({"docked": false, "idle": true, "battery_pct": 90}),
                Some("docked"),
            ),
            (json!({"idle": true, "battery_pct": 90}), Some("docked")),
            (
                json!({"docked": true, "idle": false, "battery_pct": 90}),
                Some("idle"),
            ),
            (
                json!({"docked": true, "idle": true, "battery_pct": 39}),
                Some("battery_pct"),
            ),
            (json!({"docked": true, "idle": true}), Some("battery_pct")),
            (
                json!({"docked": "yes", "idle": true, "battery_pct": 90}),
                Some("docked"),
            ),
            (json!({}), Some("docked")),
        ];
        for (c, want) in cases {
            assert_eq!(unmet(&all, &conds(c.clone())).map(|u| u.0), want, "{c}");
        }
        let (_, why) = unmet(&all, &conds(json!({"docked": false}))).unwrap();
        assert_eq!(why, "docked is false (needs true)");
        let only_busy = Require {
            idle: Some(false),
            ..Require::default()
        };
        assert_eq!(unmet(&only_busy, &conds(json!({"idle": false}))), None);
        assert!(unmet(&only_busy, &conds(json!({"idle": true}))).is_some());
    }

    #[test]
    fn known_conditions_are_typed() {
        assert!(check_conditions(&conds(
            json!({"docked": true, "idle": false, "battery_pct": 0, "temp_c": 71.5})
        ))
        .is_ok());
        for (c, field) in [
            (json!({"docked": "true"}), "conditions.docked"),
            (json!({"idle": 1}), "conditions.idle"),
            (json!({"battery_pct": 101}), "conditions.battery_pct"),
            (json!({"battery_pct": -1}), "conditions.battery_pct"),
            (json!({"battery_pct": 50.5}), "conditions.battery_pct"),
        ] {
            assert_eq!(
                check_conditions(&conds(c.clone())).unwrap_err().field,
                field,
                "{c}"
            );
        }
    }

    #[test]
    fn budget_math_table() {
        let max = |n| DisruptionBudget {
            group_by: vec!["site".into()],
            max_unavailable: Some(n),
            min_available_pct: None,
        };
        let pct = |p| DisruptionBudget {
            group_by: vec!["site".into()],
            max_unavailable: None,
            min_available_pct: Some(p),
        };
        for (budget, size, want) in [
            (max(1), 10, 1),
            (max(3), 2, 3),
            (pct(90), 10, 1),
            (pct(80), 10, 2),
            (pct(75), 10, 2),
            (pct(50), 11, 5),
            (pct(0), 10, 10),
            (pct(99), 10, 1),
            (pct(90), 1, 1),
            (pct(50), 0, 1),
        ] {
            assert_eq!(
                allowed_in_flight(&budget, size),
                want,
                "{budget:?} of {size}"
            );
        }
        let dev = |id: &str, site: Option<&str>, state| GateDevice {
            device_id: id.into(),
            stage: 0,
            state,
            labels: site
                .map(|s| BTreeMap::from([("site".to_string(), s.to_string())]))
                .unwrap_or_default(),
            conditions: BTreeMap::new(),
        };
        let devices = [
            dev("a", Some("b"), DeviceState::Installing),
            dev("b", Some("b"), DeviceState::Pending),
            dev("c", Some("m"), DeviceState::Verified),
            dev("d", None, DeviceState::Dispatched),
        ];
        let loads = group_loads(&max(2), &devices);
        assert_eq!(
            loads[&vec!["b".to_string()]],
            GroupLoad {
                size: 2,
                in_flight: 1,
                allowed: 2
            }
        );
        assert_eq!(loads[&vec!["m".to_string()]].in_flight, 0);
        assert_eq!(loads[&vec![String::new()]].in_flight, 1);
        let whole = DisruptionBudget {
            group_by: vec![],
            ..max(1)
        };
        assert_eq!(group_loads(&whole, &devices).len(), 1);
    }

    #[test]
    fn windows_inside_outside_and_next_start() {
        // Monday 2026-03-02 is a Monday; Berlin is UTC+1 in winter.
        let night = [win(&["mon", "tue"], "22:00", "05:00", "Europe/Berlin")];
        let cases = [
            ("2026-03-02T20:59:00Z", false), // Mon 21:59 local
            ("2026-03-02T21:00:00Z", true),  // Mon 22:00
            ("2026-03-03T03:59:00Z", true),  // Tue 04:59, the Monday window wrapped
            ("2026-03-03T04:00:00Z", false), // Tue 05:00: closed
            ("2026-03-03T22:30:00Z", true),  // Tue 23:30
            ("2026-03-04T03:00:00Z", true),  // Wed 04:00, Tuesday's window
            ("2026-03-04T21:30:00Z", false), // Wed 22:30: no Wednesday window
            ("2026-03-01T23:30:00Z", false), // Mon 00:30: Sunday has no window
        ];
        for (t, want) in cases {
            assert_eq!(in_window(&night, at(t)), want, "{t}");
        }
        assert!(in_window(&[], at("2026-03-04T21:30:00Z")));
        assert_eq!(next_window_start(&[], 0), None);
        // Wednesday evening: the next opening is Monday 22:00 Berlin.
        assert_eq!(
            next_window_start(&night, at("2026-03-04T21:30:00Z")),
            Some(at("2026-03-09T21:00:00Z"))
        );
        // Inside a window, the next start is the next occurrence.
        assert_eq!(
            next_window_start(&night, at("2026-03-02T21:30:00Z")),
            Some(at("2026-03-03T21:00:00Z"))
        );
        let utc = [win(&["sun"], "09:00", "10:00", "UTC")];
        assert!(in_window(&utc, at("2026-03-08T09:00:00Z")));
        assert!(!in_window(&utc, at("2026-03-08T10:00:00Z")));
    }

    #[test]
    fn windows_across_dst() {
        // Berlin springs forward on Sunday 2026-03-29 (02:00 → 03:00) and falls back on
        // Sunday 2026-10-25 (03:00 → 02:00).
        let nightly = [win(&DAYS, "22:00", "02:30", "Europe/Berlin")];
        // Before the change 22:00 local is 21:00Z; after it, 20:00Z.
        assert_eq!(
            next_window_start(&nightly, at("2026-03-28T12:00:00Z")),
            Some(at("2026-03-28T21:00:00Z"))
        );
        assert_eq!(
            next_window_start(&nightly, at("2026-03-29T12:00:00Z")),
            Some(at("2026-03-29T20:00:00Z"))
        );
        // The night of the change: 02:30 does not exist; as jiff's `compatible` rule says, it
        // is taken an hour later, 03:30 CEST (01:30Z) — the window lasts its usual 4.5 hours.
        assert!(in_window(&nightly, at("2026-03-29T01:29:00Z")));
        assert!(!in_window(&nightly, at("2026-03-29T01:30:00Z")));
        // Fall back: 02:30 is reached first at 00:30Z (CEST); the window closes then.
        assert!(in_window(&nightly, at("2026-10-25T00:29:00Z")));
        assert!(!in_window(&nightly, at("2026-10-25T00:30:00Z")));
        // A window inside the skipped hour opens at the first instant after the gap.
        let gap = [win(&["sun"], "02:15", "04:00", "Europe/Berlin")];
        assert_eq!(
            next_window_start(&gap, at("2026-03-28T12:00:00Z")),
            Some(at("2026-03-29T01:15:00Z"))
        );
    }

    #[test]
    fn gate_stuck_finds_not_ready_and_exhausted_groups() {
        let dev = |id: &str, site: &str, state, c: Value| GateDevice {
            device_id: id.into(),
            stage: 0,
            state,
            labels: BTreeMap::from([("site".to_string(), site.to_string())]),
            conditions: conds(c),
        };
        let p: Policy = serde_json::from_value(json!({
            "disruption_budget": {"group_by": ["site"], "max_unavailable": 1},
            "require": {"docked": true}}))
        .unwrap();
        let devices = [
            dev("a1", "a", DeviceState::Installing, json!({})),
            dev("a2", "a", DeviceState::Pending, json!({"docked": true})),
            dev("b1", "b", DeviceState::Installing, json!({})),
            dev(
                "b2",
                "b",
                DeviceState::WaitingReady,
                json!({"docked": false}),
            ),
            dev("c1", "c", DeviceState::Installing, json!({})),
            dev("c2", "c", DeviceState::Verified, json!({})),
        ];
        let stuck = BTreeSet::from(["a1".to_string(), "c1".to_string()]);
        let (nr, bs) = gate_stuck(&p, &devices, &stuck);
        assert_eq!(nr.sample.count, 1);
        assert_eq!(nr.unmet["b2"], "docked is false (needs true)");
        assert_eq!(nr.by_condition["docked"], 1);
        // a: full, waiting, all in flight stuck. b: b1 not stuck. c: nothing waits.
        assert_eq!(bs.devices, ["a1"]);
        assert_eq!(bs.count, 1);
    }

    fn policy(v: Value) -> Result<(), String> {
        let p: Policy = serde_json::from_value(v).map_err(|e| e.to_string())?;
        check_gates(&p).map_err(|e| e.field)
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(
            policy(
                json!({"disruption_budget": {"group_by": ["site"], "max_unavailable": 1},
                          "require": {"docked": true, "idle": true, "battery_pct_min": 40},
                          "windows": [{"days": ["mon","tue"], "start": "22:00", "end": "05:00",
                                       "tz": "Europe/Berlin"}]})
            ),
            Ok(())
        );
        let b = "spec.policy.disruption_budget";
        let w = "spec.policy.windows[0]";
        let win = |days: Value, start: &str, end: &str, tz: &str| json!({"windows": [{"days": days, "start": start, "end": end, "tz": tz}]});
        let cases = [
            (
                json!({"disruption_budget": {"max_unavailable": 0}}),
                format!("{b}.max_unavailable"),
            ),
            (
                json!({"disruption_budget": {"min_available_pct": 100}}),
                format!("{b}.min_available_pct"),
            ),
            (
                json!({"disruption_budget": {"group_by": ["site"]}}),
                b.to_string(),
            ),
            (
                json!({"disruption_budget": {"max_unavailable": 1, "min_available_pct": 5}}),
                b.to_string(),
            ),
            (
                json!({"disruption_budget": {"group_by": ["", "x"], "max_unavailable": 1}}),
                format!("{b}.group_by[0]"),
            ),
            (
                json!({"disruption_budget": {"group_by": ["x", "x"], "max_unavailable": 1}}),
                format!("{b}.group_by[1]"),
            ),
            (json!({"require": {}}), "spec.policy.require".to_string()),
            (
                json!({"require": {"battery_pct_min": 101}}),
                "spec.policy.require.battery_pct_min".to_string(),
            ),
            (win(json!([]), "22:00", "05:00", "UTC"), format!("{w}.days")),
            (
                win(json!(["mon", "funday"]), "22:00", "05:00", "UTC"),
                format!("{w}.days[1]"),
            ),
            (
                win(json!(["mon", "mon"]), "22:00", "05:00", "UTC"),
                format!("{w}.days[1]"),
            ),
            (
                win(json!(["mon"]), "24:00", "05:00", "UTC"),
                format!("{w}.start"),
            ),
            (
                win(json!(["mon"]), "7:00", "05:00", "UTC"),
                format!("{w}.start"),
            ),
            (
                win(json!(["mon"]), "07:00", "05:60", "UTC"),
                format!("{w}.end"),
            ),
            (
                win(json!(["mon"]), "07:00", "07:00", "UTC"),
                format!("{w}.end"),
            ),
            (
                win(json!(["mon"]), "07:00", "08:00", "Mars/Olympus"),
                format!("{w}.tz"),
            ),
            (win(json!(["mon"]), "07:00", "08:00", ""), format!("{w}.tz")),
        ];
        for (p, want) in cases {
            assert_eq!(policy(p.clone()), Err(want), "{p}");
        }
    }
}
