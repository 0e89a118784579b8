//! segmentti reads clients' Patient, Encounter and Condition resources, places each client in
//! a segment of a segmentation model that a wellbeing county defines in a mapping file, and
//! writes the result back as FHIR resources: an Observation (the assessment and the criteria
//! behind it) and a Flag (the current segment, active until superseded).
//!
//! # Layout
//! The modules are layers, bottom to top, and a module imports only from its own layer or the
//! ones below (`ARCHITECTURE.md` has the table; a test holds the code to it):
//! - [`fhir`]: FHIR itself: day and value types, the HTTP client, retries, credentials.
//! - [`model`]: mapping files: load with positions, schema, includes, checks, the compiled plan.
//! - [`record`]: one client's resources: extraction, the fold, joining several systems.
//! - [`assess`]: a folded client through a model to a segment; thresholds; cases.
//! - [`writeback`]: pure builders of the Observation and Flags and a client's resources.
//! - [`source`] and [`sink`]: where resources come from (files, Bulk Data, search, the
//!   synthetic population) and where results go (files, a FHIR server).
//! - [`run`]: orchestration: the pipeline, server and joined runs, shards, the checkpoint.
//! - [`serve`], [`conformance`], [`report`], [`profiles`]: the service, the server check, the
//!   population report, the FHIR package of what is written.

pub mod assess;
pub mod conformance;
pub mod fhir;
pub mod model;
pub mod profiles;
pub mod record;
pub mod report;
pub mod run;
pub mod serve;
pub mod sink;
pub mod source;
pub mod writeback;
