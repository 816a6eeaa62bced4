//! tessera-planner (placeholder until its issue lands).
