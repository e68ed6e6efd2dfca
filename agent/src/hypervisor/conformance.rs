//! Backend conformance suite.
