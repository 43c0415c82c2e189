//! SCRAM secrets (being written).
