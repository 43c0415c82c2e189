//! SCRAM exchange (being written).
