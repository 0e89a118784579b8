//! The integration tests, one binary with a module per theme.

mod mappings;
mod offline;
mod support;
mod synthetic;
