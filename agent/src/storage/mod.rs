//! Storage: SRs of type `file` and `iso`, their VDIs and PBDs, and the io_uring engine that
//! moves disk bytes for imports, exports and copies.

pub mod io;
