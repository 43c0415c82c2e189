//! ELBv2 self-registration.
