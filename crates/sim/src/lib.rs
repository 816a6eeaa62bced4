//! tessera-sim (placeholder until its issue lands).
