//! The integration tests, one binary with a module per theme.

mod bench;
mod bills;
mod bulk;
mod conformance;
mod external;
mod faults;
mod harness;
mod k8s;
mod mappings;
mod multi;
mod offline;
mod profiles;
mod refusals;
mod report;
mod roundtrip;
mod serve;
mod server_client;
mod shards;
mod smart;
mod support;
mod synthetic;
mod terminology;
mod throughput;
mod tls;
