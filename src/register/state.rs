//! The target's state as pgcell knows it: what DescribeTargetHealth said
//! last, or what pgcell is doing about the registration right now.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::metrics::TARGET_STATE;

/// This replica's NLB target state (`pgcell_target_state`, `/readyz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TargetState {
    /// Not in the target group (before the first RegisterTargets, or found
    /// missing).
    Unregistered,
    /// RegisterTargets is being called.
    Registering,
    /// ELBv2: registered, first health checks running.
    Initial,
    /// ELBv2: receiving traffic.
    Healthy,
    /// ELBv2: failing health checks.
    Unhealthy,
    /// ELBv2: unhealthy and deregistering.
    UnhealthyDraining,
    /// ELBv2: deregistering; existing connections drain.
    Draining,
    /// ELBv2: health checks disabled or the state cannot be told.
    Unavailable,
    /// ELBv2: registered but not in use (no load balancer, or not
    /// eligible).
    Unused,
    /// DeregisterTargets is being (or has been) called; not yet seen gone.
    Deregistering,
    /// Seen gone from the target group after a deregistration.
    Deregistered,
    /// The last ELBv2 call failed in a way retrying does not fix.
    Error,
}

impl TargetState {
    /// Every state, in gauge order.
    pub(crate) const ALL: [TargetState; 12] = [
        TargetState::Unregistered,
        TargetState::Registering,
        TargetState::Initial,
        TargetState::Healthy,
        TargetState::Unhealthy,
        TargetState::UnhealthyDraining,
        TargetState::Draining,
        TargetState::Unavailable,
        TargetState::Unused,
        TargetState::Deregistering,
        TargetState::Deregistered,
        TargetState::Error,
    ];

    /// The label value (ELBv2's own word for ELBv2 states).
    pub(crate) fn name(self) -> &'static str {
        match self {
            TargetState::Unregistered => "unregistered",
            TargetState::Registering => "registering",
            TargetState::Initial => "initial",
            TargetState::Healthy => "healthy",
            TargetState::Unhealthy => "unhealthy",
            TargetState::UnhealthyDraining => "unhealthy.draining",
            TargetState::Draining => "draining",
            TargetState::Unavailable => "unavailable",
            TargetState::Unused => "unused",
            TargetState::Deregistering => "deregistering",
            TargetState::Deregistered => "deregistered",
            TargetState::Error => "error",
        }
    }

    /// An ELBv2 `TargetHealthStateEnum` value; `None` for one this build
    /// does not know.
    pub(crate) fn from_elb(state: &str) -> Option<TargetState> {
        Some(match state {
            "initial" => TargetState::Initial,
            "healthy" => TargetState::Healthy,
            "unhealthy" => TargetState::Unhealthy,
            "unhealthy.draining" => TargetState::UnhealthyDraining,
            "draining" => TargetState::Draining,
            "unavailable" => TargetState::Unavailable,
            "unused" => TargetState::Unused,
            _ => return None,
        })
    }

    #[cfg_attr(not(feature = "aws"), allow(dead_code))]
    fn index(self) -> u8 {
        // ALL has 12 entries and lists every variant.
        TargetState::ALL
            .iter()
            .position(|s| *s == self)
            .unwrap_or(0) as u8
    }
}

/// What one DescribeTargetHealth entry says about this replica's target.
/// (Read by `register/aws.rs` only: unused in a build without the AWS SDK.)
#[cfg_attr(not(feature = "aws"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Not in the target group: not listed, or listed with reason
    /// `Target.NotRegistered` (AWS answers `unused`, moto `unused` after a
    /// deregistration and `unavailable` for a target it never saw).
    Missing,
    /// In the target group, in this state.
    Present(TargetState),
}

/// The reason ELBv2 gives for a target that is not in the group.
#[cfg_attr(not(feature = "aws"), allow(dead_code))]
pub(crate) const NOT_REGISTERED: &str = "Target.NotRegistered";

#[cfg_attr(not(feature = "aws"), allow(dead_code))]
impl Seen {
    /// Reads a `TargetHealth` (state and reason, as ELBv2 spells them);
    /// `None` when the target was not listed at all.
    pub(crate) fn of(health: Option<(Option<&str>, Option<&str>)>) -> Seen {
        let Some((state, reason)) = health else {
            return Seen::Missing;
        };
        if reason == Some(NOT_REGISTERED) {
            return Seen::Missing;
        }
        Seen::Present(
            state
                .and_then(TargetState::from_elb)
                .unwrap_or(TargetState::Unavailable),
        )
    }

    /// Whether the target no longer gets new flows and has no draining
    /// ones: not in the group, or `unused`.
    pub(crate) fn gone(self) -> bool {
        matches!(self, Seen::Missing | Seen::Present(TargetState::Unused))
    }
}

/// The current state, mirrored into the gauge; each change logged once.
/// (Used by the `aws` module only.)
#[cfg_attr(not(feature = "aws"), allow(dead_code))]
pub(crate) struct StateCell {
    current: AtomicU8,
}

#[cfg_attr(not(feature = "aws"), allow(dead_code))]
impl StateCell {
    /// Starts at `unregistered`.
    pub(crate) fn new() -> StateCell {
        let cell = StateCell {
            current: AtomicU8::new(TargetState::Unregistered.index()),
        };
        cell.publish(TargetState::Unregistered);
        cell
    }

    /// The current state.
    pub(crate) fn get(&self) -> TargetState {
        let i = usize::from(self.current.load(Ordering::Relaxed));
        TargetState::ALL
            .get(i)
            .copied()
            .unwrap_or(TargetState::Unregistered)
    }

    /// Moves to `state`; logs and updates the gauge only when it changed.
    pub(crate) fn set(&self, state: TargetState) {
        let previous = self.current.swap(state.index(), Ordering::Relaxed);
        if previous == state.index() {
            return;
        }
        let from = TargetState::ALL
            .get(usize::from(previous))
            .map_or("?", |s| s.name());
        match state {
            TargetState::Error | TargetState::Unhealthy | TargetState::UnhealthyDraining => {
                tracing::warn!(from, to = state.name(), "NLB target state changed")
            }
            _ => tracing::info!(from, to = state.name(), "NLB target state changed"),
        }
        self.publish(state);
    }

    fn publish(&self, state: TargetState) {
        for s in TargetState::ALL {
            let value = if s == state { 1.0 } else { 0.0 };
            metrics::gauge!(TARGET_STATE, "state" => s.name()).set(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_elb_state_maps_to_itself() {
        for s in TargetState::ALL {
            if let Some(mapped) = TargetState::from_elb(s.name()) {
                assert_eq!(mapped, s);
            }
        }
        assert_eq!(
            TargetState::from_elb("unhealthy.draining"),
            Some(TargetState::UnhealthyDraining)
        );
        assert_eq!(TargetState::from_elb("registering"), None);
    }

    #[test]
    fn indexes_round_trip() {
        let cell = StateCell::new();
        for s in TargetState::ALL {
            cell.set(s);
            assert_eq!(cell.get(), s);
        }
    }

    #[test]
    fn missing_targets() {
        // Not listed.
        assert_eq!(Seen::of(None), Seen::Missing);
        // AWS for an unknown target; moto after DeregisterTargets.
        assert_eq!(
            Seen::of(Some((Some("unused"), Some(NOT_REGISTERED)))),
            Seen::Missing
        );
        // moto for a target it never saw.
        assert_eq!(
            Seen::of(Some((Some("unavailable"), Some(NOT_REGISTERED)))),
            Seen::Missing
        );
        // Registered to a target group no load balancer uses: present.
        let not_in_use = Seen::of(Some((Some("unused"), Some("Target.NotInUse"))));
        assert_eq!(not_in_use, Seen::Present(TargetState::Unused));
        assert!(not_in_use.gone());
    }

    #[test]
    fn present_targets() {
        assert_eq!(
            Seen::of(Some((Some("healthy"), None))),
            Seen::Present(TargetState::Healthy)
        );
        let draining = Seen::of(Some((
            Some("draining"),
            Some("Target.DeregistrationInProgress"),
        )));
        assert_eq!(draining, Seen::Present(TargetState::Draining));
        assert!(!draining.gone());
        // A state from a newer API version.
        assert_eq!(
            Seen::of(Some((Some("warming"), None))),
            Seen::Present(TargetState::Unavailable)
        );
    }
}
