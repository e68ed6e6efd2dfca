//! End-to-end tests against the real xapid binary live in tests/tests/.
