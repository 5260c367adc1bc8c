//! Shoal's integration tests: one test binary, one module per scenario.
//! Real Wasmtime running real modules built from the C sources in
//! `tests/fixtures/` and `examples/`.
mod dashboards;
mod deploy;
mod executor;
mod fleet;
mod ipfs;
mod ipfs_car;
mod origin;
mod s3;
mod staging;
mod support;
