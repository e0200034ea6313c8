//! A key's health as a pure state machine: [`Health::on`] is the whole policy, fed by events
//! (what the key's answers and other replicas say) and an explicit `now`.
//!
//! healthy → cooling (429, until an instant) → healthy; healthy → disabled (401, quota) →
//! probing (one request at the probe instant) → healthy on success, disabled again otherwise;
//! healthy → ejected (too many transient failures, see `outlier`) → probing → healthy, or
//! ejected again for longer. A disablement outranks an ejection, which outranks a cooldown.

use tokio::time::Instant;

/// A key's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Takes traffic.
    Healthy,
    /// Rate limited by the provider until the instant.
    Cooling {
        /// When it takes traffic again.
        until: Instant,
    },
    /// Rejected (auth or quota); one probe is let through at `probe_at`.
    Disabled {
        /// When the next probe may go.
        probe_at: Instant,
    },
    /// Failing transiently (an outlier); one probe is let through at `probe_at`.
    Ejected {
        /// When the next probe may go.
        probe_at: Instant,
    },
    /// One probe request is in flight.
    Probing,
}

impl Health {
    /// Closed-set label.
    pub fn label(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Cooling { .. } => "cooling",
            Health::Disabled { .. } => "disabled",
            Health::Ejected { .. } => "ejected",
            Health::Probing => "probing",
        }
    }

    /// Every label, in gauge order.
    pub const LABELS: [&'static str; 5] = ["healthy", "cooling", "disabled", "ejected", "probing"];
}

/// What happens to a key; [`Health::on`] says what state it leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthEvent {
    /// Time passed: a cooldown that is over ends.
    Tick,
    /// A request takes the probe of a disabled or ejected key whose probe is due.
    ProbeStarted,
    /// The key answered.
    Succeeded,
    /// The provider rate limited the key until the instant.
    RateLimited {
        /// When it may take traffic again.
        until: Instant,
    },
    /// The provider rejected the key (auth, quota): no traffic until a probe at the instant.
    Rejected {
        /// When the next probe may go.
        probe_at: Instant,
    },
    /// A transient failure of a probe of a disabled key: disabled again until the instant.
    Failed {
        /// When the next probe may go if this was a probe.
        probe_at: Instant,
    },
    /// The key failed too often (or its probe failed): ejected until a probe at the instant.
    Ejected {
        /// When the next probe may go.
        probe_at: Instant,
    },
    /// A probe ended without a verdict (the client went away): the next request may probe.
    ProbeAbandoned,
    /// Another replica recorded a cooldown until the instant.
    SharedCooling {
        /// When it ends.
        until: Instant,
    },
    /// Another replica recorded a disablement until the instant.
    SharedDisabled {
        /// When the next probe may go.
        probe_at: Instant,
    },
    /// Another replica recorded an ejection until the instant.
    SharedEjected {
        /// When the next probe may go.
        probe_at: Instant,
    },
}

impl Health {
    /// The state after `event` at `now`. Pure: the whole key-health policy is this table.
    pub fn on(self, event: HealthEvent, now: Instant) -> Health {
        use Health::{Cooling, Disabled, Ejected, Healthy, Probing};
        use HealthEvent as E;
        match (self, event) {
            (Cooling { until }, E::Tick) if until <= now => Healthy,
            (Disabled { probe_at } | Ejected { probe_at }, E::ProbeStarted) if probe_at <= now => {
                Probing
            }
            (Probing, E::Succeeded) => Healthy,
            (Disabled { .. } | Ejected { .. }, E::RateLimited { .. }) => self,
            (Cooling { until }, E::RateLimited { until: next }) => Cooling {
                until: until.max(next),
            },
            (Healthy | Probing, E::RateLimited { until }) => Cooling { until },
            (_, E::Rejected { probe_at }) => Disabled { probe_at },
            (Probing, E::Failed { probe_at }) => Disabled { probe_at },
            (Disabled { .. }, E::Ejected { .. }) => self,
            (_, E::Ejected { probe_at }) => Ejected { probe_at },
            (Probing, E::ProbeAbandoned) => Disabled { probe_at: now },
            // A probe in flight decides for itself; disabled outranks ejected outranks cooling.
            (Probing, E::SharedCooling { .. } | E::SharedDisabled { .. }) => self,
            (Probing, E::SharedEjected { .. }) => self,
            (Disabled { .. } | Ejected { .. }, E::SharedCooling { .. }) => self,
            (Disabled { .. }, E::SharedEjected { .. }) => self,
            (Cooling { until }, E::SharedCooling { until: at }) if until >= at => self,
            (Disabled { probe_at }, E::SharedDisabled { probe_at: at }) if probe_at >= at => self,
            (Ejected { probe_at }, E::SharedEjected { probe_at: at }) if probe_at >= at => self,
            (_, E::SharedCooling { until }) => Cooling { until },
            (_, E::SharedDisabled { probe_at }) => Disabled { probe_at },
            (_, E::SharedEjected { probe_at }) => Ejected { probe_at },
            _ => self,
        }
    }
}
