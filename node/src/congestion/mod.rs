//! Congestion control of the mesh's connections: the controller chosen per
//! node ([`Congestion`]: our BBR, quinn's Cubic or NewReno), wrapped so that
//! a loss of packets sent before the peer had acknowledged anything on the
//! connection is not taken as congestion (`punch`).

mod bbr;
mod punch;

use std::sync::Arc;
use std::time::Instant;

use quinn::congestion::{Controller, ControllerFactory, CubicConfig, NewRenoConfig};

use punch::PunchTolerantController;

/// A congestion controller (`Config::congestion`, `congestion = "..."` in the
/// config file, `--congestion`). See BENCHMARKS.md, "Issue 16", for how they
/// compare on long and lossy paths.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Congestion {
    /// Model-based (partybus's BBR, `bbr`): random loss is not read as
    /// congestion, and the queue it keeps at the bottleneck is small.
    #[default]
    Bbr,
    /// Loss-based (quinn's Cubic): every loss halves the rate's growth.
    Cubic,
    /// Loss-based (quinn's NewReno).
    NewReno,
}

impl Congestion {
    pub const NAMES: [&'static str; 3] = ["bbr", "cubic", "newreno"];

    pub fn name(self) -> &'static str {
        match self {
            Congestion::Bbr => "bbr",
            Congestion::Cubic => "cubic",
            Congestion::NewReno => "newreno",
        }
    }
}

impl std::fmt::Display for Congestion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown congestion controller name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a congestion controller: use \"bbr\", \"cubic\" or \"newreno\"")]
pub struct UnknownCongestion(pub String);

impl std::str::FromStr for Congestion {
    type Err = UnknownCongestion;

    fn from_str(s: &str) -> Result<Congestion, UnknownCongestion> {
        match s.to_ascii_lowercase().as_str() {
            "bbr" => Ok(Congestion::Bbr),
            "cubic" => Ok(Congestion::Cubic),
            "newreno" | "new_reno" | "reno" => Ok(Congestion::NewReno),
            _ => Err(UnknownCongestion(s.to_owned())),
        }
    }
}

/// The factory for [`quinn::TransportConfig::congestion_controller_factory`]:
/// the chosen controller behind the punch-loss rule.
#[derive(Debug, Default, Clone)]
pub(crate) struct PunchTolerant {
    kind: Congestion,
}

impl PunchTolerant {
    pub(crate) fn new(kind: Congestion) -> PunchTolerant {
        PunchTolerant { kind }
    }
}

impl ControllerFactory for PunchTolerant {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        let inner = match self.kind {
            Congestion::Bbr => Box::new(bbr::Bbr::new(now, current_mtu)),
            Congestion::Cubic => Arc::new(CubicConfig::default()).build(now, current_mtu),
            Congestion::NewReno => Arc::new(NewRenoConfig::default()).build(now, current_mtu),
        };
        Box::new(PunchTolerantController::new(inner))
    }
}
