//! The abuse and fault suite: each finding of the hardening review, reproduced against the real
//! binary (or the library where the point is one function) and shown bounded, located, lossless
//! and free of personal data. One module per area.

mod bulk;
mod input;
mod personal_data;
mod refusals;
mod serve;
