//! tessera-server (placeholder until its issue lands).
