//! Assessment: a folded client and a compiled model in, a segment and the reasons for it out.
//! Pure: no I/O, no clock, no network; the population thresholds a `top_percent` criterion needs
//! are computed once per run in [`thresholds`] and passed in, so one client's result never
//! depends on the order clients come in.
//!
//! - [`eval`]: features → criteria → question tree → segment, overlays, explanations.
//! - [`thresholds`]: where a run's population thresholds come from, and the top-share rule.
//! - [`cases`]: hand-written clients kept beside a model, with the results they must get.

pub mod cases;
pub mod eval;
pub mod thresholds;
