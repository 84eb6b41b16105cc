//! The local job runner (placeholder until implemented).
