//! xapid's object model.
