//! Herald root package: integration tests, benchmarks and tools.
