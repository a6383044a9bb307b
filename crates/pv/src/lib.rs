//! PV backends.
