//! Which devices a plan targets and which stage each one goes in (SPEC §8.1). Deterministic:
//! the same plan id, spec and population always give the same stages, and the order of the
//! population given does not matter.

use std::collections::{BTreeMap, BTreeSet};

use autonomy_api::{Approval, FailureThreshold, StageSize, Targets};

use super::spec::{EngineSpec, ALL_STAGE, REMAINDER_STAGE};

/// A device of the target population, with the labels stage selectors match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetDevice {
    pub id: String,
    pub labels: BTreeMap<String, String>,
}

/// One stage as assigned when the plan first becomes active (frozen from then on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagePlan {
    pub name: String,
    /// The stage's devices, in dispatch order.
    pub devices: Vec<String>,
    /// Verified devices the stage needs to pass: `ceil(pct × size / 100)`.
    pub required: u64,
    /// A gate sits before the stage: stage 0 always (the start gate), later stages with
    /// `approval: "manual"`.
    pub gate: bool,
    /// The effective success threshold (the stage's override, else the policy's).
    pub success_threshold_pct: u32,
    /// The effective failure threshold while this stage is current.
    pub failure_threshold: FailureThreshold,
}

/// Why stages cannot be assigned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignError {
    /// The targets match no device (409).
    #[error("the plan's targets match no device")]
    NoDevices,
}

/// True when `labels` has every label of `selector` (an empty selector matches nothing: a
/// plan names its devices explicitly or by at least one label).
pub fn matches_selector(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The target population of `targets` among the registry's devices: those matching the
/// selector plus the listed ids, sorted by id, each once. The second list holds the listed
/// ids the registry does not know (the caller decides whether that is an error).
pub fn resolve_targets<'a>(
    targets: &Targets,
    registry: impl IntoIterator<Item = &'a TargetDevice>,
) -> (Vec<TargetDevice>, Vec<String>) {
    let listed: BTreeSet<&str> = targets.devices.iter().map(String::as_str).collect();
    let mut found = BTreeMap::new();
    for d in registry {
        if listed.contains(d.id.as_str()) || matches_selector(&targets.selector, &d.labels) {
            found.entry(d.id.clone()).or_insert_with(|| d.clone());
        }
    }
    let unknown = listed
        .iter()
        .filter(|id| !found.contains_key(**id))
        .map(|id| id.to_string())
        .collect();
    (found.into_values().collect(), unknown)
}

/// The position key of `device_id` in plan `plan_id`: `blake3(plan_id ‖ device_id)`.
pub fn order_key(plan_id: &str, device_id: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(plan_id.as_bytes());
    h.update(device_id.as_bytes());
    *h.finalize().as_bytes()
}

/// `devices` in the plan's deterministic order: by [`order_key`], ties (never seen in
/// practice) by id.
pub fn order<'a>(plan_id: &str, devices: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut keyed: Vec<([u8; 32], &str)> = devices
        .into_iter()
        .map(|d| (order_key(plan_id, d), d))
        .collect();
    keyed.sort_unstable();
    keyed.dedup_by(|a, b| a.1 == b.1);
    keyed.into_iter().map(|(_, d)| d.to_string()).collect()
}

/// Verified devices a stage of `size` devices needs at `pct` %: `ceil(pct × size / 100)`.
pub fn required(pct: u32, size: u64) -> u64 {
    (u64::from(pct) * size).div_ceil(100)
}

/// Assigns the target population to the plan's stages (SPEC §8.1): in plan order
/// ([`order`]), each stage takes `{"count":N}` or `{"percent":P}` (of the population, or of the
/// devices matching its own selector) rounded up and capped at the devices not yet assigned
/// (that match its selector); a stage without size takes every device left (that matches).
/// Devices left after the last stage form a visible `remainder` stage; a plan without stages
/// has one stage, `all`. A stage may end up empty (its selector matched only devices earlier
/// stages took); it then needs 0 verified devices.
pub fn assign_stages(
    plan_id: &str,
    spec: &EngineSpec,
    devices: &[TargetDevice],
) -> Result<Vec<StagePlan>, AssignError> {
    if devices.is_empty() {
        return Err(AssignError::NoDevices);
    }
    let labels: BTreeMap<&str, &BTreeMap<String, String>> =
        devices.iter().map(|d| (d.id.as_str(), &d.labels)).collect();
    let ordered = order(plan_id, labels.keys().copied());
    let total = ordered.len() as u64;
    let policy = &spec.policy;
    let mut taken: BTreeSet<&str> = BTreeSet::new();
    let mut plans = Vec::with_capacity(spec.stages.len() + 1);
    for (i, stage) in spec.stages.iter().enumerate() {
        let fits = |id: &str| {
            stage
                .selector
                .as_ref()
                .is_none_or(|sel| matches_selector(sel, labels[id]))
        };
        let base = match &stage.selector {
            Some(_) => ordered.iter().filter(|id| fits(id)).count() as u64,
            None => total,
        };
        let candidates: Vec<&str> = ordered
            .iter()
            .map(String::as_str)
            .filter(|id| !taken.contains(id) && fits(id))
            .collect();
        let want = match stage.size {
            Some(StageSize::Count(n)) => u64::from(n),
            Some(StageSize::Percent(p)) => (u64::from(p) * base).div_ceil(100),
            None => candidates.len() as u64,
        };
        let n = want.min(candidates.len() as u64) as usize;
        let chosen: Vec<String> = candidates[..n].iter().map(|d| d.to_string()).collect();
        taken.extend(candidates[..n].iter().copied());
        let pct = stage
            .success_threshold_pct
            .unwrap_or(policy.success_threshold_pct);
        plans.push(StagePlan {
            name: stage.name.clone(),
            required: required(pct, chosen.len() as u64),
            devices: chosen,
            gate: i == 0 || stage.approval == Some(Approval::Manual),
            success_threshold_pct: pct,
            failure_threshold: stage.failure_threshold.unwrap_or(policy.failure_threshold),
        });
    }
    let left: Vec<String> = ordered
        .iter()
        .filter(|id| !taken.contains(id.as_str()))
        .cloned()
        .collect();
    if !left.is_empty() {
        plans.push(StagePlan {
            name: if plans.is_empty() {
                ALL_STAGE
            } else {
                REMAINDER_STAGE
            }
            .to_string(),
            required: required(policy.success_threshold_pct, left.len() as u64),
            devices: left,
            gate: plans.is_empty(),
            success_threshold_pct: policy.success_threshold_pct,
            failure_threshold: policy.failure_threshold,
        });
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use autonomy_api::{Policy, Stage};

    fn dev(id: &str, labels: &[(&str, &str)]) -> TargetDevice {
        TargetDevice {
            id: id.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn fleet(n: usize) -> Vec<TargetDevice> {
        (0..n)
            .map(|i| {
                dev(
                    &format!("d{i:03}"),
                    &[("site", if i % 2 == 0 { "a" } else { "b" })],
                )
            })
            .collect()
    }

    fn stage(name: &str, size: Option<StageSize>) -> Stage {
        Stage {
            name: name.to_string(),
            size,
            approval: None,
            selector: None,
            success_threshold_pct: None,
            failure_threshold: None,
        }
    }

    fn spec(stages: Vec<Stage>) -> EngineSpec {
        EngineSpec {
            targets: Targets::default(),
            stages,
            policy: Policy::default(),
            target_digest: "sha256:x".into(),
        }
    }

    /// A stage's name, size, required and gate.
    type Shape = (String, usize, u64, bool);

    fn shape(plans: &[StagePlan]) -> Vec<Shape> {
        plans
            .iter()
            .map(|p| (p.name.clone(), p.devices.len(), p.required, p.gate))
            .collect()
    }

    fn s(name: &str, size: usize, required: u64, gate: bool) -> Shape {
        (name.to_string(), size, required, gate)
    }

    #[test]
    fn sizes_round_up_cap_and_leave_a_visible_remainder() {
        use StageSize::*;
        let cases: Vec<(usize, Vec<Stage>, Vec<Shape>)> = vec![
            // The spec's example over 10 devices: 2, then 50 % of 10 = 5, then the rest.
            (
                10,
                vec![
                    stage("canary", Some(Count(2))),
                    stage("wave", Some(Percent(50))),
                    stage("rest", None),
                ],
                vec![
                    s("canary", 2, 2, true),
                    s("wave", 5, 5, false),
                    s("rest", 3, 3, false),
                ],
            ),
            // 33 % of 10 rounds up to 4.
            (
                10,
                vec![stage("a", Some(Percent(33)))],
                vec![s("a", 4, 4, true), s("remainder", 6, 6, false)],
            ),
            // 1 % of 3 is still one device.
            (
                3,
                vec![stage("a", Some(Percent(1)))],
                vec![s("a", 1, 1, true), s("remainder", 2, 2, false)],
            ),
            // Capped at the devices left; later stages end up empty.
            (
                3,
                vec![stage("a", Some(Count(5))), stage("b", Some(Count(1)))],
                vec![s("a", 3, 3, true), s("b", 0, 0, false)],
            ),
            (
                4,
                vec![stage("a", Some(Percent(75))), stage("b", Some(Percent(75)))],
                vec![s("a", 3, 3, true), s("b", 1, 1, false)],
            ),
            // No stages: one stage of everything, behind the start gate.
            (5, vec![], vec![s("all", 5, 5, true)]),
            // A stage without size takes the rest: no remainder.
            (
                5,
                vec![stage("a", Some(Count(1))), stage("b", None)],
                vec![s("a", 1, 1, true), s("b", 4, 4, false)],
            ),
        ];
        for (n, stages, want) in cases {
            let got = assign_stages("plan-1", &spec(stages.clone()), &fleet(n)).unwrap();
            assert_eq!(shape(&got), want, "{n} devices, {stages:?}");
            let all: BTreeSet<&String> = got.iter().flat_map(|p| &p.devices).collect();
            assert_eq!(all.len(), n, "every device exactly once");
        }
    }

    #[test]
    fn thresholds_and_gates_follow_stage_overrides() {
        let mut st = vec![
            stage("a", Some(StageSize::Count(3))),
            stage("b", Some(StageSize::Count(3))),
        ];
        st[0].success_threshold_pct = Some(50);
        st[1].approval = Some(Approval::Manual);
        st[1].failure_threshold = Some(FailureThreshold::Count(3));
        let mut sp = spec(st);
        sp.policy.success_threshold_pct = 90;
        let got = assign_stages("p", &sp, &fleet(10)).unwrap();
        assert_eq!(
            shape(&got),
            [
                s("a", 3, 2, true),
                s("b", 3, 3, true),
                s("remainder", 4, 4, false)
            ]
        );
        assert_eq!(got[0].failure_threshold, FailureThreshold::Count(1));
        assert_eq!(got[1].failure_threshold, FailureThreshold::Count(3));
        assert_eq!(got[2].success_threshold_pct, 90);
        assert_eq!(required(90, 4), 4);
        assert_eq!(required(0, 4), 0);
        assert_eq!(required(100, 0), 0);
    }

    #[test]
    fn a_stage_selector_picks_and_sizes_from_its_own_population() {
        let mut site_b = stage("b-half", Some(StageSize::Percent(50)));
        site_b.selector = Some(BTreeMap::from([("site".into(), "b".into())]));
        let got = assign_stages("p", &spec(vec![site_b]), &fleet(10)).unwrap();
        // 5 devices of site b: 50 % rounds up to 3.
        assert_eq!(
            shape(&got),
            [s("b-half", 3, 3, true), s("remainder", 7, 7, false)]
        );
        assert!(got[0].devices.iter().all(|d| {
            let i: usize = d[1..].parse().unwrap();
            i % 2 == 1
        }));
        // Its percent is of all site-b devices even when earlier stages took some of them.
        let mut first = stage("first", Some(StageSize::Count(8)));
        first.selector = None;
        let mut b = stage("b", Some(StageSize::Percent(100)));
        b.selector = Some(BTreeMap::from([("site".into(), "b".into())]));
        let got = assign_stages("p", &spec(vec![first, b]), &fleet(10)).unwrap();
        let b_left = 5 - got[0]
            .devices
            .iter()
            .filter(|d| d[1..].parse::<usize>().unwrap() % 2 == 1)
            .count();
        assert_eq!(got[1].devices.len(), b_left);
    }

    #[test]
    fn order_is_deterministic_stable_and_plan_specific() {
        let ids: Vec<String> = (0..50).map(|i| format!("d{i}")).collect();
        let a = order("plan-a", ids.iter().map(String::as_str));
        let reversed = order("plan-a", ids.iter().rev().map(String::as_str));
        assert_eq!(a, reversed, "the input order does not matter");
        assert_ne!(a, ids, "not the id order");
        assert_ne!(
            a,
            order("plan-b", ids.iter().map(String::as_str)),
            "each plan its own order"
        );
        // Adding a device does not move the others relative to each other.
        let mut more = ids.clone();
        more.push("d-new".into());
        let b: Vec<String> = order("plan-a", more.iter().map(String::as_str))
            .into_iter()
            .filter(|d| d != "d-new")
            .collect();
        assert_eq!(a, b);
        // The key is blake3 of the plan id followed by the device id.
        let key = order_key("plan-a", "d7");
        assert_eq!(&key, blake3::hash(b"plan-ad7").as_bytes());
        // assign_stages follows the same order.
        let devices: Vec<TargetDevice> = ids.iter().map(|i| dev(i, &[])).collect();
        let got = assign_stages(
            "plan-a",
            &spec(vec![stage("c", Some(StageSize::Count(3)))]),
            &devices,
        )
        .unwrap();
        assert_eq!(got[0].devices, a[..3]);
        let mut shuffled = devices.clone();
        shuffled.reverse();
        assert_eq!(
            assign_stages(
                "plan-a",
                &spec(vec![stage("c", Some(StageSize::Count(3)))]),
                &shuffled
            )
            .unwrap(),
            got
        );
    }

    #[test]
    fn no_devices_is_an_error() {
        assert_eq!(
            assign_stages("p", &spec(vec![]), &[]),
            Err(AssignError::NoDevices)
        );
    }

    #[test]
    fn targets_resolve_to_selector_matches_plus_listed_ids() {
        let registry = vec![
            dev("a1", &[("site", "berlin"), ("kind", "amr")]),
            dev("a2", &[("site", "berlin")]),
            dev("a3", &[("site", "paris"), ("kind", "amr")]),
        ];
        let t = Targets {
            selector: BTreeMap::from([
                ("site".into(), "berlin".into()),
                ("kind".into(), "amr".into()),
            ]),
            devices: vec!["a3".into(), "ghost".into()],
        };
        let (found, unknown) = resolve_targets(&t, &registry);
        let ids: Vec<&str> = found.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["a1", "a3"]);
        assert_eq!(unknown, ["ghost"]);
        let only_listed = Targets {
            selector: BTreeMap::new(),
            devices: vec!["a2".into()],
        };
        let (found, _) = resolve_targets(&only_listed, &registry);
        assert_eq!(found.len(), 1, "an empty selector matches nothing");
    }
}
