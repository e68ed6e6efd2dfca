//! Benchmarks for xapid (see BENCHMARKS.md).
