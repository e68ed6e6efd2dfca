//! xapid's RPC front.
