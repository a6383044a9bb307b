//! pvkit VMM
